"""flexmoe-bench: Flex-MoE and multimodal baselines under arbitrary missing modalities."""

__version__ = "0.1.0"
