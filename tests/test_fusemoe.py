"""FuseMoE specifics: exact parameter counts, trainable per-modality routers, the log-mixture
and its offset, per-modality routing through one dispatch, skipping missing modalities, no
balance loss by default, per-sample versus the released batch flattening."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

import baselines.fusemoe as fusemoe
from baselines.fusemoe import FuseMoELayer, PerModalityMoE
from bench.data.core import Batch
from bench.registry import create_model
from bench.training.complexity import count_params
from tests.conftest import spec_of

SMALL = {"hidden": 16, "num_patches": 4, "num_experts": 4, "top_k": 2, "expert_hidden": 8,
         "num_heads": 2}


def _batch(observed: list[list[bool]], widths: dict[str, int]) -> Batch:
    obs = torch.tensor(observed)
    x = {c: torch.randn(len(observed), w) for c, w in widths.items()}
    return Batch(x, obs, torch.zeros(len(observed), dtype=torch.long),
                 torch.zeros(len(observed), dtype=torch.long))


def test_exact_parameter_count_permod_and_joint():
    spec = spec_of({"A": 100, "B": 40}, num_classes=3)
    # H=16, P=4, M=2, E=4, k=2, expert hidden 8, 1 layer, C=3; d = P·H = 64.
    # Tokenisers: A 16·ceil(100/4)+16 = 416; B 16·10+16 = 176                      →    592
    # Type embedding M·H = 32; shared position embedding P·H = 64                  →     96
    # Per modality: 3 LN 96 + attention (16·16 + 16·32 + 16·16+16) 1,040
    #   + FFN Linear(16,64) 1,088 + Linear(64,16) 1,040 = 3,264; × 2                →  6,528
    # Permod routers: 2 × (w_gate + w_noise) = 2 × 2·64·4                           →  1,024
    # Experts 64 → 8 → 128: 4 × (64·8 + 8 + 8·128 + 128) = 4 × 1,672               →  6,688
    # Final LN 2 × 32 = 64; head Linear(32, 3) 99                                   →    163
    # Total 592 + 96 + 6,528 + 1,024 + 6,688 + 163 = 15,091.
    assert count_params(create_model("fusemoe", spec, **SMALL)) == 15_091
    # Joint: one router on 128 = M·d (2·128·4 = 1,024, unchanged) and experts
    # 128 → 8 → 128: 4 × (128·8 + 8 + 8·128 + 128) = 8,736 → 15,091 − 6,688 + 8,736 = 17,139.
    assert count_params(create_model("fusemoe", spec, router_type="joint", **SMALL)) == 17_139
    # The code's residual head adds Linear(32, 32) twice: 2 × 1,056 → 15,091 + 2,112 = 17,203.
    assert count_params(create_model("fusemoe", spec, head="residual", **SMALL)) == 17_203


def test_per_modality_routers_are_registered_zero_initialised_and_trained():
    torch.manual_seed(0)
    spec = spec_of({"A": 20, "B": 12})
    model = create_model("fusemoe", spec, **SMALL).train()
    gates = model.layers[0].moe.gates
    params = {id(p) for p in model.parameters()}
    assert len(gates) == 2 and all(g.logits == "laplace" and g.noisy for g in gates)
    for g in gates:
        assert id(g.w_gate) in params and id(g.w_noise) in params
        assert not g.w_gate.any()
    batch = _batch([[True, True], [True, False], [False, True], [True, True]],
                   {"A": 20, "B": 12})
    logits, aux = model(batch)
    (F.cross_entropy(logits, batch.y) + aux).backward()
    for g in gates:
        assert g.w_gate.grad is not None and g.w_gate.grad.abs().sum() > 0
        assert g.w_noise.grad is not None and g.w_noise.grad.abs().sum() > 0


def _expert(moe: PerModalityMoE, e: int, x: torch.Tensor) -> torch.Tensor:
    ex = moe.experts
    return F.gelu(x @ ex.w1[e] + ex.b1[e]) @ ex.w2[e] + ex.b2[e]


def _routed_moe(combine: str) -> tuple[PerModalityMoE, torch.Tensor]:
    torch.manual_seed(3)
    moe = PerModalityMoE(2, 8, num_experts=4, top_k=2, expert_hidden=6, noisy=True,
                         logits="laplace", combine=combine).eval()
    fusemoe.linear_init_(moe.experts)
    with torch.no_grad():
        for g in moe.gates:
            g.w_gate.normal_()
    return moe, torch.randn(2, 5, 8)


@pytest.mark.parametrize("combine", ["logmix", "sum"])
def test_combination_matches_the_formula(combine):
    moe, u = _routed_moe(combine)
    y, outputs = moe(u)
    expected = torch.zeros_like(y)
    for j, g in enumerate(outputs):
        for n in range(u.shape[1]):
            parts = [w * (torch.softmax(_expert(moe, int(e), u[j, n]), -1)
                          if combine == "logmix" else _expert(moe, int(e), u[j, n]))
                     for w, e in zip(g.gates[n], g.index[n])]
            mix = torch.stack(parts).sum(0)
            expected[n] += mix.log() if combine == "logmix" else mix
    torch.testing.assert_close(y, expected)


def test_each_modality_is_routed_by_its_own_gate_in_one_dispatch(monkeypatch):
    torch.manual_seed(4)
    moe = PerModalityMoE(2, 8, num_experts=4, top_k=1, expert_hidden=6, noisy=True,
                         logits="laplace", combine="logmix").eval()
    v = torch.randn(3, 8)
    with torch.no_grad():  # Laplace logits: expert e wins where w_e = v
        moe.gates[0].w_gate.copy_(torch.full((8, 4), 10.0))
        moe.gates[1].w_gate.copy_(torch.full((8, 4), 10.0))
        moe.gates[0].w_gate[:, 1] = v[0]
        moe.gates[1].w_gate[:, 3] = v[0]
    calls = []
    real = fusemoe.dispatch
    monkeypatch.setattr(fusemoe, "dispatch", lambda *a, **k: calls.append(1) or real(*a, **k))
    _, outputs = moe(torch.stack([v, v]))  # the same vectors for both modalities
    assert outputs[0].index[0, 0] == 1 and outputs[1].index[0, 0] == 3
    assert len(calls) == 1


def test_skip_missing_leaves_missing_rows_out_of_router_and_experts():
    moe, u = _routed_moe("logmix")
    keep = torch.tensor([[True, True], [True, False], [False, True], [True, True],
                         [False, True]])
    y, outputs = moe(u, keep)
    assert [len(g.index) for g in outputs] == [3, 4]
    changed = u.clone()
    changed[1][~keep[:, 1]] += 100.0
    changed[0][~keep[:, 0]] -= 100.0
    torch.testing.assert_close(moe(changed, keep)[0], y)
    # row 1 lacks modality B: its output is modality A's mixture alone
    only_a, _ = moe(u, torch.tensor([[True, False]]).expand(5, 2))
    torch.testing.assert_close(y[1], only_a[1])
    assert not torch.allclose(moe(u)[0][1], y[1])


def test_skip_missing_moe_needs_permod_and_is_reported():
    spec = spec_of({"A": 10, "B": 10})
    with pytest.raises(ValueError, match="permod"):
        create_model("fusemoe", spec, router_type="joint", skip_missing_moe=True, **SMALL)
    model = create_model("fusemoe", spec, skip_missing_moe=True, **SMALL)
    assert model.run_info() == {"missing_fill": "zero_embed", "router_type": "permod",
                                "skip_missing_moe": True}


def _cv2(v: torch.Tensor) -> torch.Tensor:
    return v.var() / (v.mean() ** 2 + 1e-10)


def test_balance_loss_is_off_by_default_and_is_the_weighted_cv2_sum_when_on(monkeypatch):
    spec = spec_of({"A": 20, "B": 12})
    batch = _batch([[True, True], [True, False], [False, True], [True, True]],
                   {"A": 20, "B": 12})
    torch.manual_seed(0)
    _, aux = create_model("fusemoe", spec, num_layers=2, **SMALL).train()(batch)
    assert torch.equal(aux, torch.zeros(()))  # the released training adds none
    states = []
    real = FuseMoELayer.route

    def spy(self, u, keep):
        y, gates = real(self, u, keep)
        states.extend(gates)
        return y, gates

    monkeypatch.setattr(FuseMoELayer, "route", spy)
    torch.manual_seed(0)
    model = create_model("fusemoe", spec, num_layers=2, balance_weight=0.05, **SMALL).train()
    _, aux = model(batch)
    assert len(states) == 4  # 2 layers × 2 per-modality routers
    assert all(g.sigma is not None for g in states)  # noisy: the smooth load in training
    expected = 0.05 * sum(_cv2(g.importance.sum(0)) + _cv2(g.load.sum(0)) for g in states)
    assert aux > 0
    torch.testing.assert_close(aux, expected)


@pytest.mark.parametrize("router_type", ["permod", "joint"])
def test_logmix_offset_is_minus_m_log_mph_for_permod(router_type):
    # M = 2, P = 4, H = 2: each expert maps to M·P·H = 16 features
    layer = FuseMoELayer(2, 4, 2, 1, num_experts=4, top_k=2, expert_hidden=6,
                         router_type=router_type, logits="laplace", noisy=True,
                         combine="logmix", dropout=0.0).eval()
    with torch.no_grad():  # constant expert outputs: a uniform distribution over 16 features
        layer.moe.experts.w2.zero_()
        layer.moe.experts.b2.zero_()
    u = torch.randn(2, 5, 8)
    y, _ = layer.route(u, None)
    routed = 2 if router_type == "permod" else 1
    torch.testing.assert_close(y, torch.full_like(y, -routed * math.log(16)))
    if router_type == "permod":  # skipping a missing modality drops its −log(M·P·H)
        keep = torch.tensor([[True, True], [True, False], [False, True], [True, True],
                             [False, True]])
        y, _ = layer.route(u, keep)
        expected = -keep.sum(1, keepdim=True).float() * math.log(16)
        torch.testing.assert_close(y, expected.expand_as(y))


def test_batch_flatten_is_the_released_time_first_reshape():
    layer = FuseMoELayer(2, 4, 3, 1, num_experts=4, top_k=2, expert_hidden=6,
                         router_type="permod", logits="laplace", noisy=True,
                         combine="logmix", dropout=0.0, flatten="batch")
    x = torch.randn(4, 4, 3)  # B = P = 4
    v = layer.to_vector(x)
    for b in range(4):  # row b holds position b of every sample
        assert torch.equal(v[b], x[:, b].flatten())
    assert torch.equal(layer.from_vector(v, 4, 3), x)


@pytest.mark.parametrize("flatten", ["sample", "batch"])
def test_only_batch_flattening_lets_batch_mates_change_a_sample(flatten):
    spec = spec_of({"A": 20, "B": 12})
    torch.manual_seed(5)
    model = create_model("fusemoe", spec, flatten=flatten, **SMALL).eval()
    batch = _batch([[True, True]] * 4, {"A": 20, "B": 12})
    changed = dict(batch.x)
    changed["A"] = changed["A"].clone()
    changed["A"][1] += 3.0
    before, _ = model(batch)
    after, _ = model(type(batch)(changed, batch.observed, batch.combo, batch.y))
    others = [0, 2, 3]
    if flatten == "sample":
        torch.testing.assert_close(after[others], before[others])
    else:
        assert not torch.allclose(after[0], before[0])
    assert not torch.allclose(after[1], before[1])


def test_flatten_is_checked():
    spec = spec_of({"A": 10, "B": 10})
    with pytest.raises(ValueError, match="flatten"):
        create_model("fusemoe", spec, flatten="time", **SMALL)
    with pytest.raises(ValueError, match="flatten='sample'"):
        create_model("fusemoe", spec, skip_missing_moe=True, flatten="batch", **SMALL)
