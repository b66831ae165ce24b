"""TF specifics: exact parameter counts, the fused-tensor size rule, SubNets that read every
feature of their modality."""

from __future__ import annotations

import math

import pytest
import torch

from bench.data.core import Batch
from bench.registry import create_model, resolve_hparams
from bench.training.complexity import count_params
from tests.conftest import batch_of, spec_of


def linear(d_in: int, d_out: int) -> int:
    return d_in * d_out + d_out


def subnet(d_in: int, d: int) -> int:
    """Dropout → Linear(d_in, d)–ReLU → Linear(d, d)–ReLU → Linear(d, d)–ReLU (no BatchNorm)."""
    return linear(d_in, d) + 2 * linear(d, d)


def post_fusion(fused: int, d_post: int, classes: int) -> int:
    return linear(fused, d_post) + linear(d_post, d_post) + linear(d_post, classes)


def test_exact_parameter_count_two_modalities_raw_features():
    spec = spec_of({"A": 100, "B": 40}, num_classes=3)
    model = create_model("tf", spec)
    assert model.subnet_input == "raw" and model.tokenizer is None
    # No tokeniser. Subnets (d=128 for M=2) on the raw features: A 12,928 + 33,024 = 45,952;
    # B 5,248 + 33,024 = 38,272. Post-fusion: (128+1)² = 16,641 → 128 → 128 → 3 = 2,147,075.
    # Total 2,231,299.
    expected = subnet(100, 128) + subnet(40, 128) + post_fusion(129 ** 2, 128, 3)
    assert expected == 2_231_299
    assert count_params(model) == expected


def test_exact_parameter_count_two_modalities_flattened_tokens():
    spec = spec_of({"A": 100, "B": 40}, num_classes=3)
    model = create_model("tf", spec, subnet_input="tokens")
    # Tokenisers, H=128, P=16: A 128·ceil(100/16)+128 = 1,024; B 128·3+128 = 512.
    # Subnets on the flattened 16×128 tokens: Linear(2,048, 128) 262,272 + 33,024 = 295,296
    # each. Post-fusion 2,147,075. Total 1,536 + 590,592 + 2,147,075 = 2,739,203.
    tokenisers = linear(math.ceil(100 / 16), 128) + linear(math.ceil(40 / 16), 128)
    expected = tokenisers + 2 * subnet(16 * 128, 128) + post_fusion(129 ** 2, 128, 3)
    assert expected == 2_739_203
    assert count_params(model) == expected


def test_exact_parameter_count_four_modalities_synthetic_adni(adni):
    # the README's IGCB number: I 256, G 500, C 40, B 12 features, d = 16, C = 3 classes
    spec = adni.restrict("IGCB").spec
    expected = (sum(subnet(m.num_features, 16) for m in spec.modalities)
                + post_fusion(17 ** 4, 128, spec.num_classes))
    assert expected == 10_722_883
    assert count_params(create_model("tf", spec)) == expected


def test_subnet_width_keeps_fused_tensor_small():
    for letters, width in (("AB", 128), ("ABC", 32), ("ABCD", 16)):
        spec = spec_of(dict.fromkeys(letters, 10))
        assert resolve_hparams("tf", spec)["subnet_dim"] == width
        assert (width + 1) ** len(letters) <= 100_000


def test_constant_one_keeps_unimodal_terms_when_a_modality_is_missing():
    spec = spec_of({"A": 10, "B": 10})
    model = create_model("tf", spec).eval()
    x = {"A": torch.randn(2, 10), "B": torch.randn(2, 10)}
    obs = torch.tensor([[True, False], [True, False]])
    batch = Batch(x, obs, torch.zeros(2, dtype=torch.long), torch.zeros(2, dtype=torch.long))
    logits, _ = model(batch)
    # the two samples differ only in A: the output must still depend on A alone
    assert not torch.allclose(logits[0], logits[1])


def reversed_patches(num_features: int, num_patches: int = 16) -> torch.Tensor:
    """A feature permutation that reverses the order of the full ``ceil(F/P)``-wide patches.

    The mean of the patch tokens is invariant to it for every modality (mean of a shared
    Linear over the patches), so a TF that pools the tokens cannot see it."""
    patch = math.ceil(num_features / num_patches)
    full = num_features // patch
    head = torch.arange(full * patch).view(full, patch).flip(0).flatten()
    return torch.cat([head, torch.arange(full * patch, num_features)])


@pytest.mark.parametrize("subnet_input", ["raw", "tokens"])
@pytest.mark.parametrize("family, combo", [("adni", "IGCB"), ("mimic", "LNC")])
def test_permuting_a_modalitys_features_moves_the_output(subnet_input, family, combo,
                                                         adni, mimic):
    # Old behaviour: the SubNet read the mean of the patch tokens, a Linear of the averaged
    # patch; reordering the patches (and, for ADNI's 12 biospecimen features, any permutation)
    # moved the logits by ~1e-8 relative, float noise.
    spec = (adni if family == "adni" else mimic).restrict(combo).spec
    torch.manual_seed(0)
    model = create_model("tf", spec, subnet_input=subnet_input).eval()
    batch = batch_of(spec, [[True] * len(combo)] * 8, seed=1)
    g = torch.Generator().manual_seed(2)
    with torch.no_grad():
        base, _ = model(batch)
        for m in spec.modalities:
            x = batch.x[m.letter]
            permuted, _ = model(Batch({**batch.x, m.letter: x[:, reversed_patches(x.shape[1])]},
                                      batch.observed, batch.combo, batch.y))
            fresh, _ = model(Batch({**batch.x, m.letter: torch.randn(x.shape, generator=g)},
                                   batch.observed, batch.combo, batch.y))
            moved = (permuted - base).norm()
            # reordering the features moves the output as much as new features would
            # (scale-free: at initialisation the logits are mostly the head's biases) ...
            assert moved > 0.1 * (fresh - base).norm(), m.letter
            # ... and far above float noise
            assert moved > 1e-4 * base.norm(), m.letter


@pytest.mark.parametrize("subnet_input", ["raw", "tokens"])
def test_a_missing_modality_never_reaches_its_subnet(subnet_input):
    spec = spec_of({"A": 10, "B": 7, "C": 20})
    model = create_model("tf", spec, subnet_input=subnet_input).train()
    rows: dict[str, int] = {}
    for c, enc in model.encoders.items():
        enc.register_forward_pre_hook(
            lambda mod, args, c=c: rows.__setitem__(c, rows.get(c, 0) + len(args[0])))
    observed = [[True, False, True], [True, True, False], [True, False, False]]
    batch = batch_of(spec, observed)
    x = {c: torch.where(batch.observed[:, [j]], v, float("nan"))
         for j, (c, v) in enumerate(batch.x.items())}
    logits, _ = model(Batch(x, batch.observed, batch.combo, batch.y))
    assert rows == {"A": 3, "B": 1, "C": 1}
    assert torch.isfinite(logits).all()


def test_subnet_input_is_a_typed_choice():
    spec = spec_of({"A": 10, "B": 7})
    with pytest.raises(ValueError, match="subnet_input"):
        create_model("tf", spec, subnet_input="pooled")
