"""Flex-MoE (Yun et al., NeurIPS 2024): missing-modality bank and sparse MoE."""
