"""The official-design reference of the speed comparison computes what Flex-MoE computes."""

from __future__ import annotations

import math
import multiprocessing
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from bench.registry import create_model
from bench.training.complexity import count_params
from bench.training.released import released_fit
from bench.training.train import seed_everything
from flexmoe.moe import Experts, SparseMoE, dispatch
from flexmoe.reference import (
    FusedMoE,
    MoELinear,
    device_batch,
    official_design,
    per_sample_loader,
    released_batches,
    released_num_workers,
)


def test_official_design_gives_the_same_outputs_and_gradients(adni):
    data = adni.restrict("IGCB")
    seed_everything(0)
    model = create_model("flexmoe", data.spec, num_layers=2).eval()
    ref = official_design(model).eval()
    assert isinstance(ref.layers[0].mlp, FusedMoE)
    assert count_params(ref) == count_params(model)
    batch = data.batch(data.splits["train"][:8])
    assert not batch.observed.all()
    grads = []
    for m, experts in ((model, model.layers[0].mlp.experts),
                       (ref, ref.layers[0].mlp.experts)):
        logits, aux = m(batch)
        (F.cross_entropy(logits, batch.y) + aux).backward()
        if isinstance(experts, Experts):
            w1, b1, w2 = experts.w1.grad, experts.b1.grad, experts.w2.grad
        else:  # FastMoE's [E, out, in] layout
            w1, b1 = experts.htoh4.weight.grad.transpose(1, 2), experts.htoh4.bias.grad
            w2 = experts.h4toh.weight.grad.transpose(1, 2)
        grads.append((logits.detach(), aux.detach(), m.layers[0].attn.q.weight.grad.clone(),
                      m.bank.grad.clone(), m.layers[0].mlp.gate.w_gate.grad.clone(),
                      w1.clone(), b1.clone(), w2.clone()))
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    # the fused weights are copies of the stacked ones, in FastMoE's [E, out, in] layout
    fused = ref.layers[0].mlp.experts.htoh4.weight
    assert fused.shape == (16, 256, 128)
    torch.testing.assert_close(fused[3], model.layers[0].mlp.experts.w1[3].t())


class _FixedRouting(torch.nn.Module):
    def __init__(self, index, gates) -> None:
        super().__init__()
        self.routing = SimpleNamespace(index=index, gates=gates)

    def forward(self, x):
        return self.routing


def test_fused_expert_step_matches_dispatch_with_an_empty_expert():
    torch.manual_seed(0)
    sparse = SparseMoE(8, 5, 2, d_hidden=16).double()
    with torch.no_grad():
        sparse.experts.b1.normal_()
        sparse.experts.b2.normal_()
    moe = FusedMoE(sparse)
    fused = moe.experts
    x = torch.randn(12, 8, dtype=torch.float64, requires_grad=True)
    index = torch.randint(0, 4, (12, 2))  # expert 4 gets no row
    index[:, 1] = (index[:, 0] + 1) % 4
    gates = torch.softmax(torch.randn(12, 2, dtype=torch.float64), 1)
    moe.gate = _FixedRouting(index, gates)
    y, _ = moe(x)
    torch.testing.assert_close(y, dispatch(x, index, gates, sparse.experts, scheme="padded"))
    y.square().sum().backward()
    assert torch.equal(fused.htoh4.weight.grad[4], torch.zeros(16, 8, dtype=torch.float64))
    # the hand-written backward of FastMoE's per-expert GEMM loop
    counts = [3, 0, 5, 4]
    w, b = torch.randn(4, 6, 7, dtype=torch.float64), torch.randn(4, 6, dtype=torch.float64)
    rows = torch.randn(12, 7, dtype=torch.float64)
    assert torch.autograd.gradcheck(
        lambda r, w, b: MoELinear.apply(r, counts, w, b),
        (rows.requires_grad_(), w.requires_grad_(), b.requires_grad_()), fast_mode=True)


def _loader_children() -> set:
    return set(multiprocessing.active_children())


def test_per_sample_loader_serves_the_training_rows_once_per_epoch(adni):
    data = adni.restrict("IG")
    before = _loader_children()
    loader = per_sample_loader(data, 8, seed=1)
    assert loader.num_workers == released_num_workers() >= 1
    assert not loader.pin_memory and not loader.persistent_workers  # CPU: nothing to pin
    assert per_sample_loader(data, 8, device="cuda").pin_memory
    stream = released_batches(loader, "cpu")
    epoch = len(loader)
    batches = [next(stream) for _ in range(epoch)]
    assert all(len(b) == 8 for b in batches[:-1])
    labels = torch.cat([b.y for b in batches])
    assert labels.numel() == data.splits["train"].numel()
    assert torch.equal(labels.sort().values, data.labels[data.splits["train"]].sort().values)
    first = batches[0]
    assert set(first.x) == {"I", "G"} and first.observed.shape == (8, 2)
    assert first.observed.dtype == torch.bool and first.x["I"].dtype == torch.float32
    # a second epoch starts new workers; closing the stream mid-epoch stops them
    next(stream)
    assert len(_loader_children() - before) == loader.num_workers
    stream.close()
    assert not _loader_children() - before


def test_perf_comparison_refuses_models_without_the_official_design():
    from bench.training.perf import benchmark

    with pytest.raises(ValueError, match="Flex-MoE models only"):
        benchmark("tf", steps=1, warmup=0, data_options={"scale": 0.2}, official=True)


def test_released_loaders_serve_the_rows_they_are_given_in_order(adni):
    data = adni.restrict("IGCB")
    rows = data.order("train", "descending")
    items = list(per_sample_loader(data, 8, rows=rows, shuffle=False, num_workers=0))
    assert torch.equal(torch.cat([i[1] for i in items]), data.labels[rows])
    assert torch.equal(torch.cat([i[3] for i in items]), data.observed[rows])
    val = per_sample_loader(data, 8, split="val", shuffle=False, num_workers=0)
    assert torch.equal(torch.cat([i[1] for i in val]), data.labels[data.splits["val"]])
    batch = device_batch(items[0], torch.device("cpu"))
    assert torch.equal(batch.x["I"], data.features["I"][rows[:8]])


def test_released_loop_trains_validates_every_epoch_and_tests_once(adni):
    data = adni.restrict("IGCB")
    seed_everything(0)
    ref = official_design(create_model("flexmoe", data.spec, num_layers=1, warmup_epochs=1))
    assert ref.epoch_order(0) == "descending" and ref.epoch_order(1) == "shuffle"
    before = [p.detach().clone() for p in ref.parameters()]
    run = released_fit(ref, data, lr=1e-3, batch_size=64, epochs=2, num_workers=0)
    assert len(run.epoch_s) == len(run.val_acc_curve) == 2 and min(run.epoch_s) > 0
    assert run.test_s > 0 and run.total_s == pytest.approx(sum(run.epoch_s) + run.test_s)
    assert run.best_epoch == max(range(2), key=lambda e: (run.val_acc_curve[e], -e))
    assert any(not torch.equal(a, b) for a, b in zip(before, ref.parameters()))
    assert len(run.task_loss) == len(run.gate_loss) == 2
    assert all(math.isfinite(x) and x > 0 for x in run.task_loss + run.gate_loss)


def test_perf_times_a_whole_run_of_both_loops_from_the_same_weights():
    from bench.training.perf import benchmark

    r = benchmark("flexmoe", steps=2, warmup=0, data_options={"scale": 0.2}, official=True,
                  whole_run=1)
    assert r.whole_run_epochs == len(r.whole_run_epoch_ms) == 1 and r.whole_run_epoch_ms[0] > 0
    assert r.whole_run_s_per_epoch > 0 and r.official_whole_run_s_per_epoch > 0
    assert r.whole_run_speedup == r.official_whole_run_s_per_epoch / r.whole_run_s_per_epoch



def test_perf_prints_a_whole_run_beside_the_step(capsys):
    from bench.cli.main import main

    assert main(["perf", "--models", "tf", "--steps", "1", "--warmup", "0", "--whole-run", "2",
                 "--data-option", "scale=0.2"]) == 0
    out = capsys.readouterr().out
    assert "whole runs of 2 epochs" in out
    header, _, row = out.strip().splitlines()[-3:]
    cells = dict(zip((c.strip() for c in header.split("|")), (c.strip() for c in row.split("|"))))
    assert float(cells["whole run s/epoch"]) > 0
    low, high = map(float, cells["whole run ms/step, epochs min–max"].split("–"))
    assert 0 < low <= high
    assert "official whole run s/epoch" not in cells  # the released loop: Flex-MoE only
