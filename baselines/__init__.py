"""The baselines of the Flex-MoE paper; importing this package registers them."""

from baselines import tf  # noqa: F401
