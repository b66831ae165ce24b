"""FuseMoE specifics: exact parameter counts, trainable per-modality routers, the log-mixture
and its offset, per-modality routing through one dispatch, skipping missing modalities, no
balance loss by default, per-sample versus the released batch flattening, and the released
variants (noise at evaluation, untrained routers, expert dropout, biased attention, the
last-position head) beside unchanged defaults."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

import baselines.fusemoe as fusemoe
from baselines.fusemoe import BiasedAttention, DropoutExperts, FuseMoELayer, PerModalityMoE
from bench.blocks import Attention
from bench.data.core import Batch
from bench.hparams import SettingError
from bench.registry import create_model, resolve_hparams
from bench.training.complexity import count_params
from flexmoe.moe import Experts
from tests.conftest import batch_of, spec_of

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


# ---- the released variants; defaults unchanged ---------------------------------------------

RELEASED = {"eval_noise": True, "train_routers": False, "expert_dropout": 0.1,
            "attn_bias": True, "head": "released"}


def test_defaults_keep_the_previous_parameter_count_and_numbers():
    spec = spec_of({"A": 20, "B": 12})
    explicit = {"eval_noise": False, "train_routers": True, "expert_dropout": 0.0,
                "attn_bias": False, "head": "linear"}
    big = spec_of({"A": 100, "B": 40}, num_classes=3)
    assert count_params(create_model("fusemoe", big, **SMALL, **explicit)) == 15_091
    # Recorded from the code before these options existed: seed 0, float64, one training
    # step's loss and gradient mass (seed 1), then the evaluation logits.
    torch.manual_seed(0)
    model = create_model("fusemoe", spec, **SMALL).double()
    b = batch_of(spec, [[True, True], [True, False], [False, True], [True, True]], seed=2)
    b = Batch({k: v.double() for k, v in b.x.items()}, b.observed, b.combo, b.y)
    torch.manual_seed(1)
    logits, aux = model.train()(b)
    loss = F.cross_entropy(logits, b.y) + aux
    loss.backward()
    mass = sum(p.grad.abs().sum() for p in model.parameters() if p.grad is not None)
    torch.testing.assert_close(loss.item(), 0.9808278633638428, rtol=1e-9, atol=0)
    torch.testing.assert_close(mass.item(), 39.05059667761915, rtol=1e-9, atol=0)
    expected = torch.tensor([[-0.1062372051, 0.2850241141, -0.7867789404],
                             [0.3421717924, 0.0488386928, -0.6514677956],
                             [-1.0161568082, -0.0169775970, -0.8995052476],
                             [-0.0429875561, 0.4192016093, -0.5715873209]], dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(model.eval()(b)[0], expected, rtol=0, atol=1e-9)


def test_released_options_parameter_counts_and_settings():
    spec = spec_of({"A": 100, "B": 40}, num_classes=3)
    # Biased attention: qkv 16·48 + 48 and proj 16·16 + 16 = 1,088 instead of 1,040: +48 × 2.
    assert count_params(create_model("fusemoe", spec, attn_bias=True, **SMALL)) == 15_187
    assert count_params(create_model("fusemoe", spec, head="released", **SMALL)) == 17_203
    assert count_params(create_model("fusemoe", spec, expert_dropout=0.1, **SMALL)) == 15_091
    # Frozen routers are not optimised: 15,091 − 1,024.
    assert count_params(create_model("fusemoe", spec, train_routers=False, **SMALL)) == 14_067
    hp = resolve_hparams("fusemoe", spec, {"eval_noise": "true", "train_routers": "false",
                                           "head": "released", "expert_dropout": 0.1})
    assert (hp["eval_noise"], hp["train_routers"], hp["head"]) == (True, False, "released")
    with pytest.raises(SettingError):
        resolve_hparams("fusemoe", spec, {"head": "last"})
    with pytest.raises(SettingError):
        resolve_hparams("fusemoe", spec, {"expert_dropout": 1.5})
    with pytest.raises(ValueError, match="noisy=True"):
        create_model("fusemoe", spec, eval_noise=True, noisy=False, **SMALL)
    with pytest.raises(ValueError, match="permod"):
        create_model("fusemoe", spec, train_routers=False, router_type="joint", **SMALL)


@pytest.mark.parametrize("router_type", ["permod", "joint"])
def test_eval_noise_adds_router_noise_at_evaluation_only_when_asked(router_type):
    spec = spec_of({"A": 20, "B": 12})
    b = _batch([[True, True]] * 6, {"A": 20, "B": 12})
    outs = {}
    for eval_noise in (False, True):
        torch.manual_seed(0)
        model = create_model("fusemoe", spec, router_type=router_type, eval_noise=eval_noise,
                             **SMALL).eval()
        with torch.no_grad():
            outs[eval_noise] = [model(b)[0] for _ in range(2)]
        assert not any(g.training for layer in model.layers for g in layer.gates())
        torch.manual_seed(5)
        outs[eval_noise, "train"] = model.train()(b)[0]
    assert torch.equal(outs[False][0], outs[False][1])  # the suite's default: deterministic
    assert not torch.allclose(outs[True][0], outs[True][1])  # released: noisy at evaluation
    assert torch.equal(outs[False, "train"], outs[True, "train"])  # training is unchanged


def test_untrained_routers_stay_zero_and_route_at_random():
    spec = spec_of({"A": 20, "B": 12})
    torch.manual_seed(0)
    model = create_model("fusemoe", spec, train_routers=False, **SMALL).train()
    gates = model.layers[0].gates()
    assert len(gates) == 2 and all(not p.requires_grad for g in gates for p in g.parameters())
    b = _batch([[True, True], [True, False], [False, True], [True, True]], {"A": 20, "B": 12})
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    logits, aux = model(b)
    (F.cross_entropy(logits, b.y) + aux).backward()
    opt.step()
    for g in gates:
        assert g.w_gate.grad is None and not g.w_gate.any() and not g.w_noise.any()
    assert any(not torch.equal(p, before[n]) for n, p in model.named_parameters())
    chosen = set()
    for _ in range(10):  # zero logits tie; the noise alone picks the experts
        states = model.layers[0].route(torch.randn(2, 4, 64), None)[1]
        chosen |= {int(e) for s in states for e in s.index.flatten()}
    assert chosen == set(range(4))


def test_expert_dropout_sits_after_the_activation_and_only_trains():
    torch.manual_seed(0)
    base = Experts(4, 8, 16, 8)
    experts = DropoutExperts(base, 0.5)
    assert [p for p in experts.parameters()] == [base.w1, base.b1, base.w2, base.b2]
    h = torch.randn(4, 5, 16)
    dropped = experts.train()._act(h)
    kept = dropped != 0
    assert 0 < kept.float().mean() < 1
    torch.testing.assert_close(dropped[kept], 2 * F.gelu(h)[kept])
    assert torch.equal(experts.eval()._act(h), F.gelu(h))
    x = torch.randn(4, 3, 8)
    assert torch.equal(experts.eval()(x), base(x))
    spec = spec_of({"A": 20, "B": 12})
    b = _batch([[True, True], [True, False], [False, True], [True, True]], {"A": 20, "B": 12})
    for router_type in ("permod", "joint"):
        outs = []
        for p in (0.0, 0.5):
            torch.manual_seed(0)
            model = create_model("fusemoe", spec, router_type=router_type, expert_dropout=p,
                                 **SMALL)
            assert isinstance(model.layers[0].moe.experts, DropoutExperts) == (p > 0)
            with torch.no_grad():
                torch.manual_seed(1)
                outs.append((model.eval()(b)[0], model.train()(b)[0]))
        assert torch.equal(outs[0][0], outs[1][0])  # same draws; no dropout in evaluation
        assert not torch.allclose(outs[0][1], outs[1][1])


def test_biased_attention_is_pytorch_multihead_attention_with_xavier_init():
    torch.manual_seed(0)
    attn = BiasedAttention(16, 2, dropout=0.1).eval()
    assert not attn.qkv.bias.any() and not attn.proj.bias.any()
    assert attn.qkv.weight.abs().max() <= math.sqrt(6 / (16 + 48))
    assert attn.proj.weight.abs().max() <= math.sqrt(6 / 32)
    with torch.no_grad():
        attn.qkv.bias.normal_()
        attn.proj.bias.normal_()
    mha = torch.nn.MultiheadAttention(16, 2, batch_first=True).eval()
    with torch.no_grad():
        mha.in_proj_weight.copy_(attn.qkv.weight)
        mha.in_proj_bias.copy_(attn.qkv.bias)
        mha.out_proj.weight.copy_(attn.proj.weight)
        mha.out_proj.bias.copy_(attn.proj.bias)
    x = torch.randn(3, 5, 16)
    torch.testing.assert_close(attn(x), mha(x, x, x, need_weights=False)[0])
    model = create_model("fusemoe", spec_of({"A": 20, "B": 12}), attn_bias=True, **SMALL)
    assert all(isinstance(a, BiasedAttention) for a in model.layers[0].attns)
    default = create_model("fusemoe", spec_of({"A": 20, "B": 12}), **SMALL)
    assert all(type(a) is Attention for a in default.layers[0].attns)


@pytest.mark.parametrize("head", ["linear", "residual", "released"])
def test_released_head_takes_each_modality_last_position(head):
    spec = spec_of({"A": 20, "B": 12})
    torch.manual_seed(0)
    model = create_model("fusemoe", spec, head=head, **SMALL).eval()
    normed, pooled = [], []
    for norm in model.final_norms:
        norm.register_forward_hook(lambda m, args, out: normed.append(out))
    model.head.register_forward_pre_hook(lambda m, args: pooled.append(args[0]))
    b = _batch([[True, True], [True, False], [False, True]], {"A": 20, "B": 12})
    logits, _ = model(b)
    assert logits.shape == (3, 3)
    expected = torch.cat([x[:, -1] if head == "released" else x.mean(1) for x in normed], 1)
    torch.testing.assert_close(pooled[0], expected)


def test_released_options_keep_missing_inputs_out():
    spec = spec_of({"A": 20, "B": 12})
    torch.manual_seed(0)
    model = create_model("fusemoe", spec, **RELEASED, **SMALL).eval()
    b = _batch([[True, True], [True, False], [False, True], [True, True]], {"A": 20, "B": 12})
    nan = {c: torch.where(b.observed[:, j, None], x, torch.full_like(x, float("nan")))
           for j, (c, x) in enumerate(b.x.items())}
    outs = []
    for x in (b.x, nan):
        torch.manual_seed(3)  # the same evaluation noise for both
        outs.append(model(Batch(x, b.observed, b.combo, b.y))[0])
    torch.testing.assert_close(outs[1], outs[0])
