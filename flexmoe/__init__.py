"""Flex-MoE (Yun et al., NeurIPS 2024): missing-modality bank and sparse MoE.

Importing the package registers ``flexmoe`` and its Table 3 ablation variants.
"""

from flexmoe import model, variants  # noqa: F401
