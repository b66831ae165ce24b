"""Venugopalan 2021 specifics: parameter count, reconstruction on observed rows, masking noise."""

from __future__ import annotations

import torch

from baselines.venugopalan2021 import MaskingNoise, observed_mse
from bench.data.core import Batch
from bench.registry import create_model
from bench.training.complexity import count_params
from tests.conftest import batch_of, spec_of

SPEC = spec_of({"A": 12, "B": 7}, num_classes=3)
H = 8


def _model(seed: int = 0, **hparams) -> torch.nn.Module:
    torch.manual_seed(seed)
    return create_model("venugopalan2021", SPEC, hidden=H, sdae_dims=(32, 16), **hparams)


def test_exact_parameter_count_two_modalities():
    model = create_model("venugopalan2021", spec_of({"A": 100, "B": 40}, num_classes=3))
    # SDAE A (H=128, dims 512, 256): encoder 100·512+512 = 51,712; 512·256+256 = 131,328;
    # 256·128+128 = 32,896; decoder 128·256+256 = 33,024; 256·512+512 = 131,584;
    # 512·100+100 = 51,300 → 431,844.  SDAE B: 40·512+512 = 20,992 + 131,328 + 32,896
    # + 33,024 + 131,584 + 512·40+40 = 20,520 → 370,344.
    # Classifier: Linear(256,128) 32,896 + Linear(128,3) 387 = 33,283.
    # Total 431,844 + 370,344 + 33,283 = 835,471.
    assert count_params(model) == 835_471


def test_reconstruction_loss_is_mse_on_observed_rows_only():
    model = _model(lambda_rec=1.0).eval()
    batch = batch_of(SPEC, [[True, True], [True, False], [False, True], [True, False]])
    _, aux = model(batch)
    expected = torch.zeros(())
    for j, c in enumerate(SPEC.letters):
        rows = batch.observed[:, j]
        x = batch.x[c][rows]
        recon = model.encoders[c](x)[:, H:]
        expected = expected + (recon - x).pow(2).mean()
    torch.testing.assert_close(aux, expected)


def test_missing_rows_change_nothing_even_as_nan():
    model = _model().train()
    batch = batch_of(SPEC, [[True, True], [True, False], [False, True], [True, False]])
    garbage = {c: torch.where(batch.observed[:, [j]], x, torch.full_like(x, float("nan")))
               for j, (c, x) in enumerate(batch.x.items())}
    dirty = Batch(garbage, batch.observed, batch.combo, batch.y)
    outs = []
    for b in (batch, dirty):
        torch.manual_seed(5)
        logits, aux = model(b)
        outs.append((logits, aux))
    torch.testing.assert_close(outs[1], outs[0])
    logits, aux = outs[1]
    (logits.sum() + aux).backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def test_loss_is_zero_for_a_modality_missing_from_the_whole_batch():
    assert observed_mse(torch.randn(3, 5), torch.randn(3, 5), torch.zeros(3, dtype=torch.bool)) == 0
    model = _model(lambda_rec=1.0).eval()
    batch = batch_of(SPEC, [[True, False], [True, False], [True, False]])
    fused, rec = model.encode(batch)
    x = batch.x["A"]
    expected = (model.encoders["A"](x)[:, H:] - x).pow(2).mean()
    torch.testing.assert_close(rec, expected)
    assert torch.equal(fused[:, H:], torch.zeros(3, H))


def test_aux_is_weighted_by_lambda_rec():
    batch = batch_of(SPEC, [[True, True], [True, False], [False, True]])
    _, base = _model(lambda_rec=0.1).eval()(batch)
    _, triple = _model(lambda_rec=0.3).eval()(batch)
    _, off = _model(lambda_rec=0.0).eval()(batch)
    assert base > 0
    torch.testing.assert_close(triple, 3 * base)
    assert off == 0


def test_masking_noise_only_in_training():
    noise = MaskingNoise(0.2).train()
    x = torch.ones(400, 100)
    out = noise(x)
    assert abs((out == 0).float().mean().item() - 0.2) < 0.02
    assert set(out.unique().tolist()) == {0.0, 1.0}  # masking, not rescaled dropout
    assert noise.eval()(x) is x

    model = _model(dropout=0.0).eval()
    batch = batch_of(SPEC, [[True, True], [True, False], [False, True]])
    clean, clean_aux = model(batch)
    again, _ = model(batch)
    assert torch.equal(clean, again)
    model.train()
    noisy, _ = model(batch)
    assert not torch.allclose(noisy, clean)
    for m in model.modules():
        if isinstance(m, MaskingNoise):
            m.p = 0.0
    # with the noise off, training mode (dropout 0) gives exactly the eval output
    quiet, quiet_aux = model(batch)
    torch.testing.assert_close((quiet, quiet_aux), (clean, clean_aux))
