"""Cost measurement: parameters and FLOPs that follow the real MoE routing."""

from __future__ import annotations

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

import bench.training.complexity  # noqa: F401  (registers the grouped-matmul FLOP formula)
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


def test_perf_benchmark_reports_consistent_figures():
    from bench.training.perf import benchmark

    r = benchmark("flexmoe", steps=3, warmup=1, data_options={"scale": 0.2}, official=True)
    assert r.steps == 3 and r.batch_size == 8 and r.params == 1_264_771
    assert r.samples_per_s == pytest.approx(8 / (r.ms_per_step_mean / 1e3))
    # forward + backward of the routed experts alone is 3 × 2 × 512 tokens × 4 × 65,536 MACs
    assert r.train_gflop_per_step > 3 * 2 * 512 * 4 * 65_536 / 1e9
    assert 0 < r.fraction_of_matmul_peak < 1.5
    assert r.speedup_vs_official == pytest.approx(r.official_ms_per_step_median
                                                  / r.ms_per_step_median)


def test_fvcore_counts_multiply_adds_along_the_routing(adni):
    from bench.registry import create_model
    from bench.training.complexity import forward_flops, fvcore_macs

    data = adni.restrict("IGCB")
    batch = data.batch(data.splits["val"][:8])
    tf = create_model("tf", data.spec)
    macs, skipped = fvcore_macs(tf, batch)
    # only Linear layers: fvcore's multiply-adds are exactly half of FlopCounterMode's FLOPs
    assert macs == forward_flops(tf, batch) // 2
    assert "aten::mul" in skipped  # element-wise operators are listed, not counted
    flexmoe = create_model("flexmoe", data.spec)
    macs, skipped = fvcore_macs(flexmoe, batch)
    # same routing, experts (grouped matmul) and attention included; fvcore adds LayerNorms
    layer_norms = 2 * 8 * 64 * 128 * 5
    assert macs == forward_flops(flexmoe, batch) // 2 + layer_norms
    assert "aten::_grouped_mm" not in skipped


def test_fvcore_reports_a_model_it_cannot_trace(adni):
    from bench.training.complexity import fvcore_macs

    class Untraceable(torch.nn.Module):
        def forward(self, batch):
            if torch.jit.is_tracing():
                raise RuntimeError("data-dependent Python control flow")
            return torch.zeros(len(batch), 3), None

    data = adni.restrict("IG")
    macs, skipped = fvcore_macs(Untraceable(), data.batch(data.splits["val"][:4]))
    assert macs is None and skipped[0].startswith("not traceable")
