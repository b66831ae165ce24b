"""Cost measurement: parameters and FLOPs that follow the real MoE routing."""

from __future__ import annotations

import torch
from torch.utils.flop_counter import FlopCounterMode

import bench.complexity  # noqa: F401  (registers the grouped-matmul FLOP formula)
from flexmoe.moe import SparseMoE


def test_flops_count_exactly_the_routed_experts():
    torch.manual_seed(0)
    moe = SparseMoE(128, num_experts=16, top_k=4)
    x = torch.randn(64, 128)
    with FlopCounterMode(display=False) as counter:
        moe(x)
    counts = {str(k): v for k, v in counter.get_flop_counts()["Global"].items()}
    # the gate: two [64,128]x[128,16] matmuls; the experts: 64 tokens x 4 experts x
    # (128→256 and 256→128) multiply-adds, times 2 FLOPs per multiply-add
    assert counts["aten.mm"] == 2 * 2 * 64 * 128 * 16
    expert = sum(v for k, v in counts.items() if k != "aten.mm")
    assert expert == 2 * 64 * 4 * (128 * 256 + 256 * 128)
