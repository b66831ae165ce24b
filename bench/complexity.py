"""Model cost: trainable parameters and forward FLOPs that follow the real routing."""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from bench.data.core import Batch


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
