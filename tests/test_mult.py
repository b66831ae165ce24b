"""MulT specifics: exact parameter count, cross-modal dependence, no causal mask by default,
attention dropout by source modality."""

from __future__ import annotations

import pytest
import torch

from bench.data.core import Batch
from bench.registry import create_model, resolve_hparams
from bench.training.complexity import count_params
from tests.conftest import batch_of, spec_of

SMALL = {"hidden": 8, "num_patches": 4, "num_heads": 2, "num_layers": 1}


def test_exact_parameter_count_three_modalities():
    model = create_model("mult", spec_of({"A": 10, "B": 7, "C": 5}), **SMALL)
    # Tokenisers, H=d=8, P=4: A 8·ceil(10/4)+8 = 32; B 8·2+8 = 24; C 8·2+8 = 24 → 80.
    # One encoder layer of width w: in-proj 3w²+3w, out-proj w²+w, fc1 4w²+4w, fc2 4w²+w,
    # two LayerNorms 4w → 12w² + 13w; an encoder adds its final LayerNorm 2w.
    # Cross-modal: M(M−1) = 6 encoders, 1 layer, w=8: 12·64+13·8 = 872, +16 → 888 → 5,328.
    # Memory: M = 3 encoders, width (M−1)·d = 16, depth max(1, 3) = 3:
    #   12·256+13·16 = 3,280 per layer → 9,840, +32 → 9,872 → 29,616.
    # Head: combined M(M−1)·d = 48: proj1, proj2 48·48+48 = 2,352 each → 4,704; out 48·3+3 = 147.
    # Total 80 + 5,328 + 29,616 + 4,704 + 147 = 39,875.
    assert count_params(model) == 39_875


def test_target_state_depends_on_other_modalities_through_cross_modal_blocks():
    spec = spec_of({"A": 10, "B": 7, "C": 5})
    model = create_model("mult", spec, **SMALL).eval()
    batch = batch_of(spec, [[True] * 3] * 3)
    width = model.num_sources * 8  # one target's slice of the concatenated states
    base = model.target_states(batch)
    for c in "BC":
        x = dict(batch.x)
        x[c] = x[c] + 1.0
        moved = model.target_states(Batch(x, batch.observed, batch.combo, batch.y))
        # target A's state changes although A's own features did not
        assert not torch.allclose(moved[:, :width], base[:, :width], atol=1e-5)


@pytest.mark.parametrize("attn_mask", [False, True])
def test_later_tokens_reach_earlier_ones_only_without_the_causal_mask(attn_mask):
    model = create_model("mult", spec_of({"A": 10, "B": 7}), attn_mask=attn_mask, **SMALL)
    model.eval()
    g = torch.Generator().manual_seed(1)
    x, kv = torch.randn(2, 2, 3, 4, 8, generator=g)  # [n pairs, B, T, d]
    later_x, later_kv = x.clone(), kv.clone()
    later_x[:, :, -1] += torch.randn(8, generator=g)  # not a constant: LayerNorm removes that
    later_kv[:, :, -1] += torch.randn(8, generator=g)
    with torch.no_grad():
        cross = model.cross(x, kv)[:, :, 0]
        cross_kv = model.cross(x, later_kv)[:, :, 0]
        mem = model.mem(x)[:, :, 0]
        mem_x = model.mem(later_x)[:, :, 0]
    # the first token's output moves with a later key/value or a later token iff no mask
    assert torch.allclose(cross, cross_kv) == attn_mask
    assert torch.allclose(mem, mem_x) == attn_mask


def test_default_has_no_causal_mask_and_plain_positions():
    model = create_model("mult", spec_of({"A": 10, "B": 7}))
    assert not model.cross.attn_mask and not model.mem.attn_mask
    zeros = torch.zeros(1, 1, 4, 128)
    assert model.cross.embed(zeros).abs().sum() > 0  # every token gets its position


def test_padding_position_quirk_leaves_zero_tokens_without_position():
    model = create_model("mult", spec_of({"A": 10, "B": 7}), padding_positions=True, **SMALL)
    x = torch.randn(1, 1, 4, 8)
    x[..., 1, :] = 0.0  # a zero-filled token, e.g. of a missing modality
    emb = model.cross.embed(x)
    assert not emb[..., 1, :].any()
    assert not torch.allclose(emb[..., 0, :], model.cross.scale * x[..., 0, :])


def test_include_self_widens_each_target():
    spec = spec_of({"A": 10, "B": 7, "C": 5})
    batch = batch_of(spec, [[True] * 3] * 3)
    for include_self, sources in ((False, 2), (True, 3)):
        model = create_model("mult", spec, include_self=include_self, **SMALL)
        assert model.target_states(batch).shape == (3, 3 * sources * 8)


def test_needs_two_modalities():
    with pytest.raises(ValueError, match="at least two"):
        create_model("mult", spec_of({"A": 10}))


def test_text_modality_defaults_by_family(adni, mimic):
    assert resolve_hparams("mult", adni.restrict("IGCB").spec)["text_modality"] == "C"
    assert resolve_hparams("mult", mimic.restrict("LNC").spec)["text_modality"] == "N"
    # a run without the family's text modality, or another family: no text source
    assert resolve_hparams("mult", adni.restrict("IG").spec)["text_modality"] is None
    other = spec_of({"A": 10, "B": 7}, family="custom")
    assert resolve_hparams("mult", other)["text_modality"] is None
    with pytest.raises(ValueError, match="text_modality"):
        create_model("mult", spec_of({"A": 10, "B": 7}), text_modality="Z")


def attention_zero_fractions(model, batch):
    """Fraction of zeroed attention weights per stacked encoder in one training forward:
    ``(cross [M(M−1)], memory [M])`` of the first layer of each stack."""
    seen = {}
    hooks = [stack.layers[0].attn_drop.register_forward_hook(
        lambda mod, args, out, name=name: seen.__setitem__(name, out.detach()))
        for name, stack in (("cross", model.cross), ("mem", model.mem))]
    model.train()(batch)
    for h in hooks:
        h.remove()
    n_cross, n_mem = model.cross.layers[0].in_proj.weight.shape[0], model.spec.num_modalities
    return ((seen["cross"].reshape(n_cross, -1) == 0).float().mean(1),
            (seen["mem"].reshape(n_mem, -1) == 0).float().mean(1))


def test_attention_dropout_follows_the_source_modality():
    # Old behaviour: attn_dropout 0.1 on every cross-modal pair. The original drops 0.1 of
    # the attention weights only where the key/value (source) modality is text, 0.0 where
    # it is audio or vision, and 0.1 in every memory transformer.
    spec = spec_of({"A": 10, "B": 7, "C": 5})
    torch.manual_seed(0)
    model = create_model("mult", spec, hidden=8, num_patches=16, num_heads=2, num_layers=1,
                         text_modality="B", attn_dropout=0.25, attn_dropout_av=0.0)
    batch = batch_of(spec, [[True] * 3] * 32)
    torch.manual_seed(1)
    cross, mem = attention_zero_fractions(model, batch)
    sources = [spec.letters[j] for j in model.source_index.tolist()]
    assert sources == ["B", "C", "A", "C", "A", "B"]  # targets A, A, B, B, C, C
    for src, frac in zip(sources, cross.tolist()):
        if src == "B":  # text source: ~p of 32·2·16·16 = 16,384 weights (std 0.003)
            assert abs(frac - 0.25) < 0.02, (src, frac)
        else:  # audio / vision source: nothing dropped
            assert frac == 0.0, (src, frac)
    assert all(abs(f - 0.25) < 0.02 for f in mem.tolist())  # memory: attn_dropout


def test_attention_dropout_defaults_are_the_originals(mimic):
    spec = mimic.restrict("LNC").spec
    model = create_model("mult", spec)  # text_modality N, attn 0.1 (text, memory), av 0.0
    by_pair = {(spec.letters[i], spec.letters[j]): p for i, j, p in zip(
        model.target_index.tolist(), model.source_index.tolist(), model.pair_attn_dropout)}
    assert by_pair == {("L", "N"): 0.1, ("L", "C"): 0.0, ("N", "L"): 0.0, ("N", "C"): 0.0,
                       ("C", "L"): 0.0, ("C", "N"): 0.1}
    assert all(layer.attn_drop.p == 0.1 for layer in model.mem.layers)


def test_attention_dropout_settings_do_not_change_eval_logits():
    spec = spec_of({"A": 10, "B": 7, "C": 5})
    batch = batch_of(spec, [[True, True, True], [True, False, True], [False, True, True]])
    outs = []
    for kwargs in ({"text_modality": None, "attn_dropout": 0.0, "attn_dropout_av": 0.0},
                   {"text_modality": "A", "attn_dropout": 0.1, "attn_dropout_av": 0.0},
                   {"text_modality": "C", "attn_dropout": 0.5, "attn_dropout_av": 0.3}):
        torch.manual_seed(0)
        model = create_model("mult", spec, **SMALL, **kwargs).eval()
        with torch.no_grad():
            outs.append(model(batch)[0])
    torch.testing.assert_close(outs[1], outs[0], rtol=0, atol=0)
    torch.testing.assert_close(outs[2], outs[0], rtol=0, atol=0)
