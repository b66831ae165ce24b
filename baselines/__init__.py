"""The baselines of the Flex-MoE paper; importing this package registers them."""

from baselines import (
    fusemoe,  # noqa: F401
    i2moe,  # noqa: F401
    lee2019,  # noqa: F401
    limoe,  # noqa: F401
    mag,  # noqa: F401
    mmformer,  # noqa: F401
    mult,  # noqa: F401
    shaspec,  # noqa: F401
    tf,  # noqa: F401
    venugopalan2021,  # noqa: F401
)
