"""The model contract, generated over ``list_models()``: registering a model gets it tested."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from bench.registry import create_model, list_models
from bench.training.train import seed_everything

SETTINGS = [("adni", "IG"), ("adni", "IGC"), ("adni", "IGCB"), ("mimic", "LNC")]
MODELS = list_models()


@pytest.fixture(scope="module")
def views(adni, mimic):
    """One mixed batch per setting: the first training rows of each observed combination."""
    out = {}
    for family, combo in SETTINGS:
        data = (adni if family == "adni" else mimic).restrict(combo)
        train = data.splits["train"]
        combos = data.combo.index_select(0, train)
        picks = torch.cat([train[combos == k][:2] for k in combos.unique()])[:12]
        out[(family, combo)] = (data, data.batch(picks))
    return out


def _build(name, data, seed=0):
    seed_everything(seed)
    return create_model(name, data.spec)


@pytest.mark.parametrize("setting", SETTINGS, ids=lambda s: "-".join(s))
@pytest.mark.parametrize("name", MODELS)
def test_forward_contract(name, setting, views):
    data, batch = views[setting]
    model = _build(name, data).eval()
    logits, aux = model(batch)
    assert logits.shape == (len(batch), data.spec.num_classes)
    assert torch.isfinite(logits).all()
    assert aux.dim() == 0 and torch.isfinite(aux)


@pytest.mark.parametrize("name", MODELS)
def test_training_step_changes_parameters(name, views):
    data, batch = views[("adni", "IGCB")]
    model = _build(name, data).train()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    logits, aux = model(batch)
    (F.cross_entropy(logits, batch.y) + aux).backward()
    with_grad = {n for n, p in model.named_parameters()
                 if p.grad is not None and p.grad.abs().sum() > 0}
    opt.step()
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert with_grad, "no parameter received a gradient"
    assert with_grad <= changed


@pytest.mark.parametrize("setting", SETTINGS, ids=lambda s: "-".join(s))
@pytest.mark.parametrize("name", MODELS)
def test_output_ignores_features_at_missing_slots(name, setting, views):
    data, batch = views[setting]
    assert not batch.observed.all(), "the test batch must contain missing modalities"
    model = _build(name, data).eval()
    clean, _ = model(batch)
    garbage = {c: torch.where(batch.observed[:, j, None], x, torch.full_like(x, float("nan")))
               for j, (c, x) in enumerate(batch.x.items())}
    dirty, _ = model(type(batch)(garbage, batch.observed, batch.combo, batch.y))
    torch.testing.assert_close(dirty, clean)


@pytest.mark.parametrize("name", MODELS)
def test_missing_modality_never_reaches_its_encoder(name, views):
    data, batch = views[("adni", "IGCB")]
    model = _build(name, data).train()
    seen: dict[str, int] = {}
    hooks = []
    for qual, module in model.named_modules():
        parts = qual.split(".")
        if len(parts) >= 2 and parts[-2] == "encoders" and parts[-1] in data.spec.letters:
            hooks.append(module.register_forward_pre_hook(
                lambda m, args, c=parts[-1]: seen.__setitem__(c, seen.get(c, 0) + len(args[0]))))
    if not hooks:
        pytest.skip(f"{name} has no per-modality 'encoders' modules to watch")
    model(batch)
    for h in hooks:
        h.remove()
    observed = {c: int(batch.observed[:, j].sum()) for j, c in enumerate(data.spec.letters)}
    if getattr(model, "missing_fill", "zero_embed") == "zero_embed":
        assert {c: n for c, n in seen.items() if n} == {c: n for c, n in observed.items() if n}


@pytest.mark.parametrize("name", MODELS)
def test_deterministic_under_seed(name, views):
    data, batch = views[("adni", "IGC")]
    outs = []
    for _ in range(2):
        model = _build(name, data, seed=3).train()
        torch.manual_seed(11)
        logits, aux = model(batch)
        outs.append((logits.detach(), aux.detach()))
    torch.testing.assert_close(outs[0][0], outs[1][0], rtol=0, atol=0)
    torch.testing.assert_close(outs[0][1], outs[1][1], rtol=0, atol=0)


@pytest.mark.parametrize("name", MODELS)
def test_gradients_are_bit_identical_across_repeats_with_two_threads(name, adni):
    """A seeded run must give the same numbers every time at any thread count; an op whose
    multi-threaded CPU kernel adds with atomics (e.g. advanced indexing's backward with
    repeated indices) breaks that. 64 patients of the commonest partial combination, so
    indices repeat."""
    data = adni.restrict("IGCB")
    train = data.splits["train"]
    partial = train[~data.observed.index_select(0, train).all(1)]
    combos = data.combo.index_select(0, partial)
    batch = data.batch(partial[combos == combos.mode().values][:64])
    assert len(batch) == 64
    model = _build(name, data).train()
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        grads = []
        for _ in range(6):
            torch.manual_seed(11)
            model.zero_grad(set_to_none=True)
            logits, aux = model(batch)
            (F.cross_entropy(logits, batch.y) + aux).backward()
            grads.append({n: p.grad.clone() for n, p in model.named_parameters()
                          if p.grad is not None})
    finally:
        torch.set_num_threads(threads)
    for other in grads[1:]:
        assert other.keys() == grads[0].keys()
        differ = [n for n in other if not torch.equal(other[n], grads[0][n])]
        assert not differ, f"gradients differ between identical passes: {differ}"
