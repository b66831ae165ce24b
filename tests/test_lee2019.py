"""Lee 2019 specifics: parameter count, sequential GRU over patch tokens, missing features."""

from __future__ import annotations

import torch

from bench.data.core import Batch
from bench.registry import create_model
from bench.training.complexity import count_params
from tests.conftest import batch_of, spec_of

H, P = 16, 4
SPEC = spec_of({"A": 32, "B": 12}, num_classes=3)


def _model(**hparams) -> torch.nn.Module:
    torch.manual_seed(0)
    return create_model("lee2019", SPEC, hidden=H, num_patches=P, **hparams).eval()


def test_exact_parameter_count_two_modalities():
    model = create_model("lee2019", spec_of({"A": 100, "B": 40}, num_classes=3))
    # Tokenisers, H=128, P=16: A 128·ceil(100/16)+128 = 1,024; B 128·3+128 = 512.
    # GRU(128,128), 1 layer: 3·(128·128 + 128·128 + 2·128) = 99,072 per modality → 198,144.
    # Head Linear(2·128, 3) = 771.   Total 1,536 + 198,144 + 771 = 200,451.
    assert count_params(model) == 200_451


def test_feature_is_the_last_hidden_state():
    model = _model()
    batch = batch_of(SPEC, [[True, True], [True, True]])
    feats = model.features(batch)
    tokens = model.tokenizer(batch)
    for j, c in enumerate(SPEC.letters):
        outputs = model.grus[c].gru(tokens[c])[0]
        torch.testing.assert_close(feats[:, j * H:(j + 1) * H], outputs[:, -1])
        assert not torch.allclose(outputs[:, -1], outputs.mean(1))


def test_output_depends_on_patch_order():
    model = _model()
    batch = batch_of(SPEC, [[True, True], [True, True]])
    logits, _ = model(batch)
    # reversing A's patches reverses its token sequence (one Linear shared by all patches);
    # a pooled, order-free encoder would not notice, the GRU must
    flipped = dict(batch.x, A=batch.x["A"].view(2, P, -1).flip(1).reshape(2, -1))
    other = Batch(flipped, batch.observed, batch.combo, batch.y)
    torch.testing.assert_close(model.tokenizer(other)["A"], model.tokenizer(batch)["A"].flip(1))
    reordered, _ = model(other)
    assert not torch.allclose(reordered, logits, atol=1e-5)


def test_missing_modality_feature_is_zero_and_gru_skips_the_row():
    model = _model()
    batch = batch_of(SPEC, [[True, True], [True, False], [False, True]])
    seen: dict[str, int] = {}
    hooks = [model.grus[c].register_forward_pre_hook(
        lambda m, args, c=c: seen.__setitem__(c, seen.get(c, 0) + len(args[0])))
        for c in SPEC.letters]
    feats = model.features(batch)
    for h in hooks:
        h.remove()
    assert seen == {"A": 2, "B": 2}
    assert torch.equal(feats[1, H:], torch.zeros(H))
    assert torch.equal(feats[2, :H], torch.zeros(H))
    assert feats[0, :H].ne(0).any() and feats[0, H:].ne(0).any()


def test_zero_input_runs_the_gru_on_a_zero_token_sequence():
    model = _model(missing_fill="zero_input")
    batch = batch_of(SPEC, [[True, True], [True, False]])
    feats = model.features(batch)
    expected = model.grus["B"](torch.zeros(1, P, H))[0]
    torch.testing.assert_close(feats[1, H:], expected)
    assert expected.ne(0).any()
