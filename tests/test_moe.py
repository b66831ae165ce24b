"""Sparse MoE layer and Flex-MoE router loss against straightforward reference computations."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from flexmoe.moe import (
    Experts,
    GateOutput,
    NoisyTopKGate,
    SparseMoE,
    _grouped_supported,
    balance_loss,
    cv_squared,
    dispatch,
    prob_in_top_k,
)
from flexmoe.router import flexmoe_router_loss


def loop_reference(x, index, gates, experts, combine="sum"):
    """Per-expert Python loop: run each expert on its tokens, add gate-weighted outputs."""
    n, k = index.shape
    d_out = experts.w2.shape[2]
    act = F.gelu if experts.activation == "gelu" else F.relu
    acc = x.new_zeros(n, d_out)
    for e in range(experts.num_experts):
        tok, slot = (index == e).nonzero(as_tuple=True)
        if tok.numel() == 0:
            continue
        out = act(x[tok] @ experts.w1[e] + experts.b1[e]) @ experts.w2[e] + experts.b2[e]
        if combine == "logmix":
            out = out.log_softmax(-1).exp()
        acc = acc.index_add(0, tok, gates[tok, slot].unsqueeze(1) * out)
    if combine == "sum":
        return acc
    return torch.where(acc == 0, torch.finfo(torch.float64).eps, acc).log()


def routing(n, e, k, allowed, seed):
    """Random distinct top-k indices drawn from ``allowed`` experts, and softmax gates."""
    g = torch.Generator().manual_seed(seed)
    index = torch.stack([allowed[torch.randperm(len(allowed), generator=g)[:k]] for _ in range(n)])
    gates = torch.softmax(torch.randn(n, k, generator=g, dtype=torch.float64), 1)
    return index, gates


def grads(out, tensors):
    weight = torch.linspace(-1, 1, out.numel(), dtype=out.dtype).view_as(out)
    return torch.autograd.grad((out * weight).sum(), tensors, allow_unused=True,
                               materialize_grads=True)


CASES = [  # n, e, k, allowed experts (those outside receive no token)
    (1, 1, 1, [0]),
    (7, 4, 2, [0, 1, 3]),
    (16, 8, 3, [1, 2, 5, 6, 7]),
    (33, 16, 4, list(range(0, 16, 2))),
    (24, 6, 6, list(range(6))),
]


@pytest.mark.parametrize("scheme, dtype", [("padded", torch.float64), ("padded", torch.float32),
                                           ("grouped", torch.float32)])
@pytest.mark.parametrize("combine", ["sum", "logmix"])
@pytest.mark.parametrize("n, e, k, allowed", CASES)
def test_dispatch_matches_loop_reference_values_and_gradients(n, e, k, allowed, scheme, dtype,
                                                              combine):
    torch.manual_seed(n)
    experts = Experts(e, 8, 12, 4).to(dtype)
    with torch.no_grad():  # non-zero biases so their gradients are exercised
        experts.b1.normal_()
        experts.b2.normal_()
    index, gates = routing(n, e, k, torch.tensor(allowed), seed=n + e)
    gates = gates.to(dtype).requires_grad_()
    x = torch.randn(n, 8, dtype=dtype, requires_grad=True)
    assert torch.bincount(index.flatten(), minlength=e).min() == 0 or len(allowed) == e
    y = dispatch(x, index, gates, experts, combine=combine, scheme=scheme)
    ref = loop_reference(x, index, gates, experts, combine)
    tol = 1e-12 if dtype == torch.float64 else 2e-5
    torch.testing.assert_close(y, ref, rtol=tol, atol=tol)
    params = [x, gates, *experts.parameters()]
    for got, want in zip(grads(y, params), grads(ref, params), strict=True):
        torch.testing.assert_close(got, want, rtol=tol, atol=tol)


def test_grouped_and_padded_agree_under_skewed_routing():
    torch.manual_seed(0)
    experts = Experts(16, 16, 32, 16)
    x = torch.randn(64, 16)
    logits = torch.randn(64, 16)
    logits[:, 3] += 10  # every token picks expert 3: capacity = N
    index = logits.topk(4, 1).indices
    gates = torch.softmax(torch.randn(64, 4), 1)
    torch.testing.assert_close(dispatch(x, index, gates, experts, scheme="grouped"),
                               dispatch(x, index, gates, experts, scheme="padded"))


def test_auto_scheme_uses_grouped_only_where_it_can_run():
    x32 = torch.randn(3, 8)
    assert _grouped_supported(x32, Experts(4, 8, 12, 4)) == hasattr(F, "grouped_mm")
    assert not _grouped_supported(x32.double(), Experts(4, 8, 12, 4).double())
    assert not _grouped_supported(torch.randn(3, 5), Experts(4, 5, 12, 4))  # 20-byte rows
    experts = Experts(4, 5, 7, 3)
    index, gates = routing(9, 4, 2, torch.arange(4), seed=0)
    x = torch.randn(9, 5)
    torch.testing.assert_close(dispatch(x, index, gates.float(), experts),
                               loop_reference(x, index, gates.float(), experts))


def test_logmix_replaces_exact_zeros_by_eps():
    experts = Experts(2, 4, 4, 3)
    with torch.no_grad():
        experts.w2.zero_()
        experts.b2.copy_(torch.tensor([[1000.0, 0.0, 0.0], [1000.0, 0.0, 0.0]]))
    y = dispatch(torch.randn(5, 4), torch.zeros(5, 1, dtype=torch.long), torch.ones(5, 1),
                 experts, combine="logmix")
    assert torch.all(y[:, 0] == 0)
    assert torch.allclose(y[:, 1:], torch.full((5, 2), math.log(torch.finfo(torch.float64).eps)))


def test_logmix_sparse_moe_outputs_log_of_a_probability_mixture():
    torch.manual_seed(0)
    moe = SparseMoE(8, 5, 3, d_hidden=16, d_out=12, logits="laplace", gate_init="zeros",
                    combine="logmix").train()
    y, gate = moe(torch.randn(2, 7, 8))
    assert y.shape == (2, 7, 12) and gate.index.shape == (14, 3)
    torch.testing.assert_close(y.exp().sum(-1), torch.ones(2, 7))


@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("logits", ["dot", "laplace"])
def test_sparse_moe_matches_reference_including_gate_gradients(training, logits):
    torch.manual_seed(0)
    moe = SparseMoE(8, 6, 2, d_hidden=12, logits=logits).train(training)
    x = torch.randn(3, 5, 8, requires_grad=True)
    torch.manual_seed(1)
    y, gate = moe(x)
    torch.manual_seed(1)  # same noise draw
    ref_gate = moe.gate(x.reshape(-1, 8))
    ref = loop_reference(x.reshape(-1, 8), ref_gate.index, ref_gate.gates, moe.experts)
    assert y.shape == (3, 5, 8)
    assert torch.equal(gate.index, ref_gate.index)
    torch.testing.assert_close(y.reshape(-1, 8), ref)
    params = [x, *moe.parameters()]
    got, want = grads(y.reshape(-1, 8), params), grads(ref, params)
    for g_got, g_want in zip(got, want, strict=True):
        torch.testing.assert_close(g_got, g_want)
    assert (got[2].abs().sum() > 0) == training  # w_noise learns only through noisy routing


def test_gate_routes_to_top_k_of_noisy_logits_and_gates_sum_to_one():
    torch.manual_seed(0)
    gate = NoisyTopKGate(16, 8, 3).train()
    out = gate(torch.randn(50, 16))
    chosen = torch.zeros(50, 8, dtype=torch.bool).scatter(1, out.index, True)
    assert torch.all(out.noisy[chosen].view(50, 3).min(1).values
                     >= out.noisy.masked_fill(chosen, -math.inf).max(1).values)
    assert torch.all(out.gates > 0)
    torch.testing.assert_close(out.gates.sum(1), torch.ones(50))
    expected = torch.exp(out.noisy.gather(1, out.index))
    torch.testing.assert_close(out.gates, expected / expected.sum(1, keepdim=True))
    assert not torch.equal(out.noisy, out.clean)
    assert torch.all(out.sigma >= 0.01)
    torch.testing.assert_close(out.importance.sum(1), torch.ones(50))


def test_gate_in_eval_has_no_noise_and_hard_load():
    torch.manual_seed(0)
    gate = NoisyTopKGate(16, 8, 3).eval()
    out = gate(torch.randn(40, 16))
    assert out.sigma is None and torch.equal(out.noisy, out.clean)
    assert set(out.load.unique().tolist()) == {0.0, 1.0}
    assert torch.equal(out.load.sum(1), torch.full((40,), 3.0))
    counts = torch.bincount(out.index.flatten(), minlength=8).float()
    assert torch.equal(out.load.sum(0), counts)


def test_prob_in_top_k_matches_direct_computation():
    torch.manual_seed(0)
    gate = NoisyTopKGate(10, 7, 3).train()
    out = gate(torch.randn(12, 10))
    for n in range(12):
        ranked = sorted(out.noisy[n].tolist(), reverse=True)
        thr_in, thr_out = ranked[3], ranked[2]
        for e in range(7):
            c, s = out.clean[n, e].item(), out.sigma[n, e].item()
            thr = thr_in if out.noisy[n, e] > thr_in else thr_out
            want = 0.5 * (1 + math.erf((c - thr) / s / math.sqrt(2)))
            assert out.load[n, e].item() == pytest.approx(want, abs=1e-6)
    top = out.noisy.topk(4, 1).values
    torch.testing.assert_close(prob_in_top_k(out.clean, out.noisy, out.sigma, top, 3), out.load)
    out.load.sum().backward()
    assert gate.w_noise.grad.abs().sum() > 0 and gate.w_gate.grad.abs().sum() > 0


def test_gate_variants():
    torch.manual_seed(0)
    x = torch.randn(9, 6)
    full = NoisyTopKGate(6, 4, 4).train()(x)  # k = E: hard load even with noise
    assert torch.equal(full.load, torch.ones(9, 4))
    plain = NoisyTopKGate(6, 4, 2, noisy=False)
    assert plain.w_noise is None and sum(p.numel() for p in plain.parameters()) == 24
    out = plain.train()(x)
    assert out.sigma is None and torch.equal(out.noisy, out.clean)
    lap = NoisyTopKGate(6, 4, 2, logits="laplace", init="zeros")
    assert torch.all(lap.w_gate == 0) and torch.all(lap.w_noise == 0)
    torch.nn.init.normal_(lap.w_gate)
    dist = torch.stack([(x - lap.w_gate[:, e]).norm(dim=1) for e in range(4)], 1)
    torch.testing.assert_close(lap.eval()(x).clean, -dist)
    top1 = NoisyTopKGate(6, 4, 1, noisy=False, gate_softmax="all")(x)
    torch.testing.assert_close(top1.gates, torch.softmax(top1.clean, 1).max(1, keepdim=True).values)
    assert torch.all(top1.gates < 1)


def test_initialisation_bounds_and_fastmoe_layout():
    torch.manual_seed(0)
    experts = Experts(16, 128, 256, 128)
    bound = 1 / math.sqrt(128 * 256)
    for w in (experts.w1, experts.w2):
        assert w.abs().max() <= bound and w.abs().max() > 0.99 * bound
    assert torch.all(experts.b1 == 0) and torch.all(experts.b2 == 0)
    torch.manual_seed(0)  # FastMoE draws (E, out, in) tensors, first layer first
    fast1 = torch.nn.init.kaiming_uniform_(torch.empty(16, 256, 128), a=math.sqrt(5))
    fast2 = torch.nn.init.kaiming_uniform_(torch.empty(16, 128, 256), a=math.sqrt(5))
    assert torch.equal(experts.w1, fast1.transpose(1, 2))
    assert torch.equal(experts.w2, fast2.transpose(1, 2))
    gate = NoisyTopKGate(128, 16, 4)
    for w in (gate.w_gate, gate.w_noise):
        assert w.abs().max() <= 1 / math.sqrt(16) and w.abs().max() > 0.99 / math.sqrt(16)


def test_parameter_counts():
    moe = SparseMoE(128, 16, 4, d_hidden=256)
    assert sum(p.numel() for p in moe.experts.parameters()) == 16 * (128 * 256 + 256 + 256 * 128
                                                                      + 128) == 1_054_720
    assert sum(p.numel() for p in moe.gate.parameters()) == 2 * 128 * 16 == 4_096
    assert sum(p.numel() for p in SparseMoE(128, 16, 4).parameters()) == 1_058_816


def test_cv_squared():
    assert cv_squared(torch.tensor([3.0])).item() == 0
    assert cv_squared(torch.tensor([1.0, 2.0, 3.0, 4.0])).item() == pytest.approx((5 / 3) / 6.25)
    assert cv_squared(torch.tensor([2, 2, 2])).item() == 0
    assert cv_squared(torch.zeros(5)).item() == 0
    assert cv_squared(torch.tensor([0.0, 4.0])).item() == pytest.approx(8 / 4)


def manual_gate_output():
    """Six tokens, four experts, k = 2, with hand-picked noisy logits and loads."""
    noisy = torch.tensor([[2.0, 1.0, 0.0, -1.0], [0.5, 1.5, -0.5, 0.0], [0.0, 0.2, 3.0, 1.0],
                          [1.0, -1.0, 0.5, 2.5], [-2.0, 0.0, 1.0, 0.3], [0.7, 0.1, 0.2, 0.9]],
                         requires_grad=True)
    index = noisy.detach().topk(2, 1).indices
    gates = torch.softmax(noisy.gather(1, index), 1)
    load = torch.tensor([[0.9, 0.8, 0.2, 0.1], [0.6, 0.9, 0.1, 0.3], [0.2, 0.3, 1.0, 0.7],
                         [0.6, 0.1, 0.4, 0.9], [0.05, 0.5, 0.9, 0.6], [0.7, 0.2, 0.3, 0.8]])
    return GateOutput(noisy.detach(), noisy, None, index, gates, load)


def ref_cv2(values):
    mean = sum(values) / len(values)
    var = sum((v - mean) ** 2 for v in values) / (len(values) - 1)
    return var / (mean**2 + 1e-10)


def ref_balance(g, rows, cols, drop=None):
    """cv² of summed importance and load over rows and columns; ``drop[r]`` skips one cell."""
    dense = g.importance.tolist()
    imp = [sum(dense[r][c] for r in rows if drop is None or drop[r] != c) for c in cols]
    load = [sum(g.load[r, c].item() for r in rows if drop is None or drop[r] != c) for c in cols]
    return ref_cv2(imp) + ref_cv2(load)


def ref_ce(g, combo, rows):
    losses = []
    for r in rows:
        logits = g.noisy[r].tolist()
        lse = math.log(sum(math.exp(v) for v in logits))
        losses.append(lse - logits[combo[r]])
    return sum(losses) / len(losses)


def test_router_loss_all_full_batch_is_plain_balance():
    g = manual_gate_output()
    loss = flexmoe_router_loss(g, torch.zeros(6, dtype=torch.long))
    assert loss.item() == pytest.approx(ref_balance(g, range(6), range(4)), rel=1e-5)


def test_router_loss_mixed_batch():
    g = manual_gate_output()
    combo = [0, 0, 2, 3, 1, 0]
    want = (ref_ce(g, combo, [2, 3, 4]) + ref_balance(g, [0, 1, 5], range(4))
            + ref_balance(g, [2, 3, 4], [1, 2, 3]))
    loss = flexmoe_router_loss(g, torch.tensor(combo))
    assert loss.item() == pytest.approx(want, rel=1e-5)
    loss.backward()
    assert g.gates.grad_fn is not None


def test_router_loss_without_full_tokens():
    g = manual_gate_output()
    combo = [1, 1, 2, 2, 3, 3]
    want = ref_ce(g, combo, range(6)) + ref_balance(g, range(6), [1, 2, 3])
    assert flexmoe_router_loss(g, torch.tensor(combo)).item() == pytest.approx(want, rel=1e-5)


def test_router_loss_exclude_top1_drops_each_tokens_target():
    g = manual_gate_output()
    combo = [0, 0, 2, 3, 1, 0]
    want = (ref_ce(g, combo, [2, 3, 4]) + ref_balance(g, [0, 1, 5], range(4))
            + ref_balance(g, [2, 3, 4], range(4), drop=combo))
    loss = flexmoe_router_loss(g, torch.tensor(combo), exclude_top1=True)
    assert loss.item() == pytest.approx(want, rel=1e-5)


@pytest.mark.parametrize("generalize", [True, False])
def test_router_loss_without_specialisation_is_plain_balance(generalize):
    g = manual_gate_output()
    loss = flexmoe_router_loss(g, torch.tensor([0, 0, 2, 3, 1, 0]), specialize=False,
                               generalize=generalize)
    assert loss.item() == pytest.approx(ref_balance(g, range(6), range(4)), rel=1e-5)


@pytest.mark.parametrize("combo", [[0, 0, 4, 0, 0, 0], [0, -1, 0, 0, 0, 0], [0.0] * 6, [0] * 5])
def test_router_loss_rejects_bad_combination_indices(combo):
    with pytest.raises(ValueError):
        flexmoe_router_loss(manual_gate_output(), torch.tensor(combo))


def test_balance_loss_subsets():
    g = manual_gate_output()
    mask = torch.tensor([True, False, True, True, False, True])
    got = SparseMoE.balance_loss(g, mask=mask, experts=[0, 2, 3])
    assert got.item() == pytest.approx(ref_balance(g, [0, 2, 3, 5], [0, 2, 3]), rel=1e-5)
    assert balance_loss(g, mask=torch.zeros(6, dtype=torch.bool)).item() == 0


def test_router_loss_trains_gate_end_to_end():
    torch.manual_seed(0)
    moe = SparseMoE(16, 8, 2, d_hidden=32).train()
    y, gate = moe(torch.randn(4, 5, 16))
    combo = torch.tensor([0, 3, 0, 7]).repeat_interleave(5)
    (y.square().mean() + flexmoe_router_loss(gate, combo)).backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in moe.parameters())


def test_deterministic_under_manual_seed():
    def run(seed):
        torch.manual_seed(seed)
        moe = SparseMoE(16, 8, 3, d_hidden=32).train()
        y, gate = moe(torch.randn(6, 16))
        return y, gate
    (y1, g1), (y2, g2), (y3, _) = run(5), run(5), run(6)
    assert torch.equal(y1, y2) and torch.equal(g1.noisy, g2.noisy) and torch.equal(g1.load, g2.load)
    assert not torch.equal(y1, y3)
