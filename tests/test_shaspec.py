"""ShaSpec specifics: exact parameter counts, per-sample shared-feature substitution, the
observed-only L_shared / L_spec and their weights, encoders that never see missing rows."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from baselines.shaspec import cycle_pairs, random_subset_of_size
from bench.registry import create_model
from bench.training.complexity import count_params, forward_flops
from tests.conftest import batch_of, spec_of
from tests.test_blocks import attention_zero_fraction

SMALL = {"hidden": 16, "num_patches": 4, "num_heads": 2}


def test_exact_parameter_count_transformer_encoders():
    model = create_model("shaspec", spec_of({"A": 100, "B": 40}, num_classes=3), **SMALL)
    # H=16, P=4. Tokenisers: A 16·ceil(100/4)+16 = 416; B 16·10+16 = 176 → 592.
    # TransformerBlock(16, 2 heads, mlp ratio 2): 2 LN 64 + attention (q 256, kv 512, proj 272)
    # 1,040 + MLP (Linear(16,32) 544, Linear(32,16) 528) 1,072 = 2,176; shared + 2 specific
    # = 6,528. Compositional Linear(32,16, no bias) 512; domain classifier Linear(16,2) 34;
    # head Linear(32,3) 99.   Total 592 + 6,528 + 512 + 34 + 99 = 7,765.
    assert count_params(model) == 7_765


def test_exact_parameter_count_mlp_encoders():
    model = create_model("shaspec", spec_of({"A": 100, "B": 40}, num_classes=3), encoder="mlp",
                         **SMALL)
    # as above with each encoder the token MLP only (1,072): 592 + 3·1,072 + 512 + 34 + 99
    assert count_params(model) == 4_453


def test_cycle_of_pairs():
    assert cycle_pairs(4) == [(0, 1), (1, 2), (2, 3), (3, 0)]
    assert cycle_pairs(3) == [(0, 1), (1, 2), (2, 0)]
    assert cycle_pairs(2) == [(0, 1)]
    assert cycle_pairs(1) == []


def test_missing_modality_takes_the_first_available_shared_feature_of_its_sample():
    spec = spec_of({"A": 12, "B": 9, "C": 20})
    model = create_model("shaspec", spec, **SMALL).eval()
    # first available: sample 0 → B, sample 1 → C, sample 2 → A, sample 3 has everything
    batch = batch_of(spec, [[False, True, True], [False, False, True], [True, False, False],
                          [True, True, True]])
    with torch.no_grad():
        s, t, fused = model.features(batch)
    torch.testing.assert_close(fused[0, 0], s[0, 1])
    torch.testing.assert_close(fused[1, 0], s[1, 2])
    torch.testing.assert_close(fused[1, 1], s[1, 2])
    torch.testing.assert_close(fused[2, 1], s[2, 0])
    torch.testing.assert_close(fused[2, 2], s[2, 0])
    assert not torch.allclose(s[0, 1], s[0, 2])  # the choice of modality matters
    # an observed modality gets the compositional residual on its own shared feature
    torch.testing.assert_close(fused[0, 1], s[0, 1] + model.compose(torch.cat([s[0, 1], t[0, 1]],
                                                                              -1)))
    # no substitution in a complete sample
    torch.testing.assert_close(fused[3], s[3] + model.compose(torch.cat([s[3], t[3]], -1)))


def test_mean_option_averages_the_available_shared_features():
    spec = spec_of({"A": 12, "B": 9, "C": 20})
    model = create_model("shaspec", spec, missing_source="mean", **SMALL).eval()
    batch = batch_of(spec, [[False, True, True], [True, False, False]])
    with torch.no_grad():
        s, _, fused = model.features(batch)
    torch.testing.assert_close(fused[0, 0], (s[0, 1] + s[0, 2]) / 2)
    torch.testing.assert_close(fused[1, 2], s[1, 0])


def test_shared_loss_counts_only_pairs_observed_for_the_sample():
    spec = spec_of({"A": 12, "B": 9, "C": 20})
    model = create_model("shaspec", spec, **SMALL)
    s = torch.randn(2, 3, 4, 16)
    obs = torch.tensor([[True, True, False], [True, True, True]])
    l1 = lambda i, j, rows: (s[rows, i] - s[rows, j]).abs().mean()  # noqa: E731
    # pair (A,B): both samples; (B,C) and (C,A): sample 1 only
    expected = l1(0, 1, [0, 1]) + l1(1, 2, [1]) + l1(2, 0, [1])
    torch.testing.assert_close(model.shared_loss(s, obs), expected)
    # what sits at the unobserved slot does not matter ...
    s2 = s.clone()
    s2[0, 2] += 5.0
    torch.testing.assert_close(model.shared_loss(s2, obs), expected)
    # ... unless the repo's all-pairs behaviour is asked for
    full = create_model("shaspec", spec, shared_pairs="all", **SMALL)
    every = l1(0, 1, [0, 1]) + l1(1, 2, [0, 1]) + l1(2, 0, [0, 1])
    torch.testing.assert_close(full.shared_loss(s, obs), every)
    assert full.shared_loss(s2, obs) > full.shared_loss(s, obs)


def test_specific_loss_counts_only_observed_modalities():
    spec = spec_of({"A": 12, "B": 9, "C": 20})
    model = create_model("shaspec", spec, **SMALL)
    t = torch.randn(2, 3, 4, 16)
    obs = torch.tensor([[True, False, True], [False, False, True]])
    logits = model.domain_classifier(t.mean(2))
    rows, mods = obs.nonzero(as_tuple=True)
    expected = F.cross_entropy(logits[rows, mods], mods)
    torch.testing.assert_close(model.specific_loss(t, obs), expected)
    every = create_model("shaspec", spec, spec_scope="all", **SMALL)
    every.load_state_dict(model.state_dict())
    torch.testing.assert_close(every.specific_loss(t, obs),
                               F.cross_entropy(logits.flatten(0, 1), torch.arange(3).repeat(2)))


def test_aux_is_alpha_shared_plus_beta_specific_and_both_terms_are_positive():
    spec = spec_of({"A": 12, "B": 9, "C": 20})
    batch = batch_of(spec, [[True, True, False], [True, True, True], [False, True, True]])
    model = create_model("shaspec", spec, **SMALL).eval()
    with torch.no_grad():
        s, t, _ = model.features(batch)
        shared, specific = model.shared_loss(s, batch.observed), model.specific_loss(
            t, batch.observed)
        _, aux = model(batch)
    assert shared > 0 and specific > 0
    assert (model.alpha, model.beta) == (0.1, 0.02)
    torch.testing.assert_close(aux, 0.1 * shared + 0.02 * specific)
    model.alpha, model.beta = 0.0, 0.0
    with torch.no_grad():
        assert model(batch)[1] == 0


def test_shared_and_specific_encoders_never_see_missing_rows():
    spec = spec_of({"A": 12, "B": 9, "C": 20})
    model = create_model("shaspec", spec, **SMALL).train()
    batch = batch_of(spec, [[True, False, False], [True, True, False], [False, True, True]])
    seen: dict[str, int] = {}
    modules = {"shared": model.shared, **{c: model.specific[c] for c in "ABC"}}
    for name, module in modules.items():
        module.register_forward_pre_hook(
            lambda m, args, k=name: seen.__setitem__(k, seen.get(k, 0) + len(args[0])))
    model(batch)
    assert seen == {"shared": 5, "A": 2, "B": 2, "C": 1}


def test_random_drop_keeps_a_non_empty_subset_of_the_observed():
    torch.manual_seed(0)
    obs = torch.tensor([[True, False, True, True]] * 4000)
    keep = random_subset_of_size(obs)
    assert not (keep & ~obs).any() and keep.any(1).all()
    sizes = torch.bincount(keep.sum(1), minlength=4)[1:].float() / len(obs)
    assert torch.allclose(sizes, torch.full((3,), 1 / 3), atol=0.03)  # r ~ U{1..3}


@pytest.mark.parametrize("bad", [{"missing_source": "last"}, {"shared_pairs": "some"},
                                 {"encoder": "cnn"}, {"random_drop": 1.5}])
def test_bad_options_are_rejected(bad):
    with pytest.raises(ValueError):
        create_model("shaspec", spec_of({"A": 12, "B": 9}), **bad)


def test_flop_counter_runs_on_the_model():
    spec = spec_of({"A": 12, "B": 9})
    model = create_model("shaspec", spec, **SMALL)
    assert forward_flops(model, batch_of(spec, [[True, True], [False, True]])) > 0


def _sources(model, batch) -> torch.Tensor:
    """Per (sample, modality): the modality whose shared feature the fused feature is (−1 if
    none, e.g. an observed modality's composed feature)."""
    with torch.no_grad():
        s, _, fused = model.features(batch)
    match = (fused.unsqueeze(2) == s.unsqueeze(1)).flatten(3).all(-1)  # [B, M(fused), M(s)]
    assert (match.sum(-1) <= 1).all()
    return torch.where(match.any(-1), match.int().argmax(-1), -1)


OBSERVED = [[False, True, True], [True, False, True], [True, True, False], [False, False, True],
            [True, True, True]]


def test_default_source_is_random_in_training_and_first_in_evaluation():
    """The repo's training draws the available modalities with random.sample and takes the
    first of them: every available modality serves as the source, uniformly."""
    spec = spec_of({"A": 12, "B": 9, "C": 20})
    batch = batch_of(spec, OBSERVED)
    model = create_model("shaspec", spec, dropout=0.0, **SMALL)  # no other randomness
    missing = [(0, 0), (1, 1), (2, 2), (3, 0), (3, 1)]  # (sample, missing modality)
    torch.manual_seed(0)
    counts = torch.zeros(len(missing), 3)
    model.train()
    for _ in range(300):
        src = _sources(model, batch)
        for k, (i, m) in enumerate(missing):
            counts[k, src[i, m]] += 1
        assert src[3, 0] == src[3, 1] == 2  # only C is available to sample 3
    freq = counts / 300
    # samples 0–2: the two available modalities each about half of the time (σ ≈ 0.03)
    expected = torch.tensor([[0, 0.5, 0.5], [0.5, 0, 0.5], [0.5, 0.5, 0]])
    torch.testing.assert_close(freq[:3], expected, atol=0.12, rtol=0)
    model.eval()
    for seed in range(5):
        torch.manual_seed(seed)
        src = _sources(model, batch)
        assert [int(src[i, m]) for i, m in missing] == [1, 0, 0, 2, 2]
    assert model.missing_source == "random"
    assert model.run_info()["missing_fill"] == "shared_random"


def test_random_source_is_deterministic_under_the_seed():
    spec = spec_of({"A": 12, "B": 9, "C": 20})
    batch = batch_of(spec, OBSERVED * 8)
    model = create_model("shaspec", spec, **SMALL).train()
    draws = []
    for seed in (3, 3, 4):
        torch.manual_seed(seed)
        draws.append(model.source_modality(batch.observed))
        with torch.no_grad():
            torch.manual_seed(seed)
            draws.append(model(batch)[0])
    assert torch.equal(draws[0], draws[2]) and torch.equal(draws[1], draws[3])
    assert not torch.equal(draws[0], draws[4])
    assert batch.observed.gather(1, draws[0].unsqueeze(1)).all()  # always an observed one


def test_source_modality_is_uniform_over_the_observed():
    spec = spec_of({"A": 4, "B": 4, "C": 4, "D": 4})
    model = create_model("shaspec", spec, **SMALL).train()
    obs = torch.tensor([[True, False, True, True]] * 6000)
    torch.manual_seed(0)
    freq = torch.bincount(model.source_modality(obs), minlength=4).float() / len(obs)
    torch.testing.assert_close(freq, torch.tensor([1 / 3, 0, 1 / 3, 1 / 3]), atol=0.03, rtol=0)
    assert (model.eval().source_modality(obs) == 0).all()


def test_first_option_takes_the_first_available_in_training_too():
    spec = spec_of({"A": 12, "B": 9, "C": 20})
    model = create_model("shaspec", spec, missing_source="first", dropout=0.0, **SMALL).train()
    batch = batch_of(spec, OBSERVED)
    for seed in range(10):
        torch.manual_seed(seed)
        src = _sources(model, batch)
        assert [int(src[i, m]) for i, m in [(0, 0), (1, 1), (2, 2), (3, 0)]] == [1, 0, 0, 2]


@pytest.mark.parametrize("kwargs, zeros", [({}, 0.5), ({"attn_dropouts": "twice"}, 0.75)])
def test_transformer_encoders_drop_the_attention_branch_once(kwargs, zeros):
    model = create_model("shaspec", spec_of({"A": 12, "B": 9}), **kwargs)
    blocks = [model.shared, *model.specific.values()]
    for i, block in enumerate(blocks):
        assert abs(attention_zero_fraction(block, seed=i) - zeros) < 0.01
