"""mmFormer specifics: exact parameter counts, zero-masking before the inter-modal transformer,
positional embedding re-added at every depth step, L_sep over observed modalities only."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from baselines.mmformer import random_nonempty_subset
from bench.blocks import Attention
from bench.data.arrays import Modality
from bench.data.core import DataSpec
from bench.registry import create_model
from bench.training.complexity import count_params, forward_flops
from tests.conftest import batch_of, spec_of

SMALL = {"hidden": 16, "num_patches": 4, "num_heads": 2}


def test_exact_parameter_count():
    spec = spec_of({"A": 100, "B": 40}, num_classes=3)
    # H=D=16, P=4. Tokenisers: A 16·ceil(100/4)+16 = 416; B 16·10+16 = 176 → 592.
    # Block (2 heads, mlp 4·16): 2 LN 64 + attention (q 256, kv 512, proj 272) 1,040 +
    # MLP (Linear(16,64) 1,088, Linear(64,16) 1,040) 2,128 = 3,232.
    # Intra per modality: pos 4·16 = 64 + 3,232 → 2 × 3,296 = 6,592. Inter: 3,232 (its
    # positional embedding is the intra ones concatenated). Shared sep head Linear(16,3) 51;
    # head Linear(32,3) 99.   Total 592 + 6,592 + 3,232 + 51 + 99 = 10,566.
    assert count_params(create_model("mmformer", spec, **SMALL)) == 10_566
    # depth 2: intra 2 × (64 + 6,464) = 13,056, inter 6,464 → 592 + 13,056 + 6,464 + 150
    assert count_params(create_model("mmformer", spec, depth=2, **SMALL)) == 20_262


def test_attention_equals_the_fused_qkv_attention_of_the_repo():
    torch.manual_seed(0)
    attn = Attention(16, 2).eval()
    x = torch.randn(3, 5, 16)
    # the repo: qkv = Linear(D, 3D, no bias) → q, k, v; softmax(q kᵀ / √d_head) v; proj
    w = torch.cat([attn.q.weight, attn.kv.weight])
    q, k, v = (x @ w.T).view(3, 5, 3, 2, 8).permute(2, 0, 3, 1, 4)
    a = ((q @ k.transpose(-2, -1)) * 8 ** -0.5).softmax(-1) @ v
    expected = attn.proj(a.transpose(1, 2).reshape(3, 5, 16))
    torch.testing.assert_close(attn(x), expected)
    assert sum(p.numel() for p in attn.parameters()) == 3 * 16 * 16 + 16 * 16 + 16


def test_missing_modalities_are_zero_before_the_inter_modal_transformer():
    spec = spec_of({"A": 12, "B": 9, "C": 20})
    model = create_model("mmformer", spec, **SMALL).train()
    batch = batch_of(spec, [[True, False, True], [False, True, False], [True, True, True]])
    captured, seen = {}, {}
    model.inter[0].register_forward_pre_hook(lambda m, args: captured.__setitem__("x", args[0]))
    for c in "ABC":
        model.intra[c].register_forward_pre_hook(
            lambda m, args, c=c: seen.__setitem__(c, len(args[0])))
    model(batch)
    pos = torch.cat([model.intra[c].pos for c in "ABC"], dim=1)
    x = (captured["x"] - pos).view(3, 3, 4, 16)  # the first inter block reads intra + pos
    obs = batch.observed
    assert (x[~obs] == 0).all()
    assert (x[obs].abs().sum((1, 2)) > 0).all()
    assert seen == {"A": 2, "B": 2, "C": 2}  # intra transformers run on observed rows only


def test_positional_embedding_is_added_at_every_depth_step():
    spec = spec_of({"A": 12, "B": 9})
    model = create_model("mmformer", spec, depth=2, **SMALL).eval()
    with torch.no_grad():
        for c in "AB":
            model.intra[c].pos.normal_()
    batch = batch_of(spec, [[True, True], [True, False]])
    inputs: dict[str, list[torch.Tensor]] = {}
    outputs: dict[str, list[torch.Tensor]] = {}
    stacks = {"A": model.intra["A"].blocks, "inter": model.inter}
    for name, stack in stacks.items():
        for block in stack:
            block.register_forward_pre_hook(
                lambda m, args, k=name: inputs.setdefault(k, []).append(args[0]))
            block.register_forward_hook(
                lambda m, args, out, k=name: outputs.setdefault(k, []).append(out))
    with torch.no_grad():
        model(batch)
        tokens = model.tokenizer(batch)["A"]
    pos_a = model.intra["A"].pos
    torch.testing.assert_close(inputs["A"][0], tokens + pos_a)
    torch.testing.assert_close(inputs["A"][1], outputs["A"][0] + pos_a)
    pos = torch.cat([model.intra["A"].pos, model.intra["B"].pos], dim=1)
    intra = model.intra_features(batch).flatten(1, 2)
    torch.testing.assert_close(inputs["inter"][0], intra + pos)
    torch.testing.assert_close(inputs["inter"][1], outputs["inter"][0] + pos)


def test_sep_loss_sums_over_observed_modalities_only():
    spec = spec_of({"A": 12, "B": 9, "C": 20})
    model = create_model("mmformer", spec, **SMALL)
    intra = torch.randn(3, 3, 4, 16)
    obs = torch.tensor([[True, False, False], [True, True, False], [False, True, False]])
    y = torch.tensor([0, 2, 1])
    logits = model.sep_head(intra.mean(2))
    # A: samples 0, 1; B: samples 1, 2; C: nobody (contributes 0)
    expected = F.cross_entropy(logits[[0, 1], 0], y[[0, 1]]) + F.cross_entropy(
        logits[[1, 2], 1], y[[1, 2]])
    torch.testing.assert_close(model.sep_loss(intra, obs, y), expected)
    # the weight multiplies the term returned as aux
    batch = batch_of(spec, obs.tolist())
    model.eval()
    with torch.no_grad():
        base = model(batch)[1]
        model.sep_weight = 0.5
        assert base > 0
        torch.testing.assert_close(model(batch)[1], 0.5 * base)


def test_sep_loss_uses_the_task_class_weights():
    mods = tuple(Modality(f"m{c}", c, (10,)) for c in "LN")
    spec = DataSpec("w", "mimic", mods, mods, 2, class_weights=(0.25, 0.75))
    model = create_model("mmformer", spec, **SMALL)
    intra = torch.randn(4, 2, 4, 16)
    obs = torch.tensor([[True, True], [True, False], [True, True], [False, True]])
    y = torch.tensor([0, 1, 1, 0])
    logits = model.sep_head(intra.mean(2))
    w = torch.tensor([0.25, 0.75])
    expected = (F.cross_entropy(logits[[0, 1, 2], 0], y[[0, 1, 2]], weight=w)
                + F.cross_entropy(logits[[0, 2, 3], 1], y[[0, 2, 3]], weight=w))
    torch.testing.assert_close(model.sep_loss(intra, obs, y), expected)


def test_random_drop_draws_non_empty_subsets_of_the_observed_uniformly():
    torch.manual_seed(0)
    obs = torch.tensor([[True, False, True, True]] * 7000)
    keep = random_nonempty_subset(obs)
    assert not (keep & ~obs).any() and keep.any(1).all()
    code = (keep.long() * torch.tensor([1, 2, 4, 8])).sum(1)
    freq = torch.bincount(code, minlength=16).float() / len(obs)
    subsets = [1, 4, 5, 8, 9, 12, 13]  # non-empty subsets of {A, C, D}
    assert torch.allclose(freq[subsets], torch.full((7,), 1 / 7), atol=0.02)
    assert freq.sum() - freq[subsets].sum() == 0


def test_flop_counter_runs_on_the_model():
    # the positional embedding must not be passed into a module's forward: FlopCounterMode's
    # module tracker fails on a parameter argument under inference mode
    spec = spec_of({"A": 12, "B": 9})
    model = create_model("mmformer", spec, depth=2, **SMALL)
    assert forward_flops(model, batch_of(spec, [[True, True], [False, True]])) > 0
