"""The official-design reference of the speed comparison computes what Flex-MoE computes."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from bench.complexity import count_params
from bench.registry import create_model
from bench.train import seed_everything
from flexmoe.reference import LoopMoE, official_design, per_sample_loader


def test_official_design_gives_the_same_outputs_and_gradients(adni):
    data = adni.restrict("IGCB")
    seed_everything(0)
    model = create_model("flexmoe", data.spec, num_layers=2).eval()
    ref = official_design(model).eval()
    assert isinstance(ref.layers[0].mlp, LoopMoE)
    assert count_params(ref) == count_params(model)
    batch = data.batch(data.splits["train"][:8])
    assert not batch.observed.all()
    grads = []
    for m in (model, ref):
        logits, aux = m(batch)
        (F.cross_entropy(logits, batch.y) + aux).backward()
        grads.append((logits.detach(), aux.detach(), m.layers[0].attn.q.weight.grad.clone(),
                      m.bank.grad.clone()))
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    # the per-expert weights of the loop are copies of the stacked ones
    first = ref.layers[0].mlp.experts.mlps[3][0]
    torch.testing.assert_close(first.weight, model.layers[0].mlp.experts.w1[3].t())


def test_per_sample_loader_serves_the_training_rows_once_per_epoch(adni):
    data = adni.restrict("IG")
    batches = list(per_sample_loader(data, 8, seed=1))
    assert all(len(b) == 8 for b in batches[:-1])
    labels = torch.cat([b.y for b in batches])
    assert labels.numel() == data.splits["train"].numel()
    assert torch.equal(labels.sort().values, data.labels[data.splits["train"]].sort().values)
    first = batches[0]
    assert set(first.x) == {"I", "G"} and first.observed.shape == (8, 2)


def test_perf_comparison_refuses_models_without_the_official_design():
    from bench.perf import benchmark

    with pytest.raises(ValueError, match="Flex-MoE models only"):
        benchmark("tf", steps=1, warmup=0, data_options={"scale": 0.2}, official=True)
