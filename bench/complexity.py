"""Model cost: trainable parameters and forward FLOPs that follow the real routing."""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode, register_flop_formula

from bench.data.core import Batch


def _grouped_mm_flops(a_shape, b_shape, *args, out_shape=None, **kwargs) -> int:
    """FLOPs of ``aten._grouped_mm`` (the MoE experts' matmuls), which torch does not count.

    Every layout multiplies each row block once: 2·M·K·N summed over the groups.
    """
    if len(a_shape) == 2 and len(b_shape) == 3:  # [M, K] x [G, K, N] -> [M, N]
        return 2 * a_shape[0] * a_shape[1] * b_shape[2]
    if len(a_shape) == 3 and len(b_shape) == 2:  # [G, M, K] x [K, N_total] -> [M, N_total]
        return 2 * a_shape[1] * a_shape[2] * b_shape[1]
    if len(a_shape) == 2 and len(b_shape) == 2:  # [M, K_total] x [K_total, N] -> [G, M, N]
        return 2 * a_shape[0] * a_shape[1] * b_shape[1]
    return 2 * a_shape[0] * a_shape[1] * a_shape[2] * b_shape[2]  # batched [G, M, K] x [G, K, N]


if hasattr(torch.ops.aten, "_grouped_mm"):
    register_flop_formula(torch.ops.aten._grouped_mm, get_raw=False)(_grouped_mm_flops)


def count_params(model: nn.Module) -> int:
    """Every parameter the run optimises (encoders, fusion, bank)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def forward_flops(model: nn.Module, batch: Batch) -> int:
    """FLOPs (2 × multiply-adds) of one forward pass in eval mode on ``batch``.

    ``FlopCounterMode`` counts the operators that actually run, so a sparse MoE is charged
    for the experts its router picked, not for all of them.
    """
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode(), FlopCounterMode(display=False) as counter:
            model(batch)
    finally:
        model.train(was_training)
    return int(counter.get_total_flops())
