"""Behaviour of the synthetic-adni and synthetic-mimic generators.

The expected ADNI numbers are written out here rather than read from the module, so a
change to the generator's tables fails loudly instead of passing by construction.
"""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import StandardScaler

from bench.data import synthetic_adni, synthetic_mimic
from bench.data.arrays import RawArrays

ADNI_COUNTS = {"IGCB": 1474, "C": 479, "IC": 157, "ICB": 127, "GCB": 122, "CB": 21}
ADNI_MARGINALS = {"I": 1758, "G": 1596, "C": 2380, "B": 1744}
GENERATORS = {"adni": synthetic_adni, "mimic": synthetic_mimic}


def combo_counts(raw: RawArrays) -> dict[str, int]:
    """Observed-combination letter strings (canonical order) and how often each occurs."""
    letters = np.array([m.letter for m in raw.modalities])
    return dict(Counter("".join(letters[row]) for row in raw.observed))


@pytest.fixture(scope="module")
def adni_raw() -> RawArrays:
    return synthetic_adni.generate(seed=0)


@pytest.fixture(scope="module")
def mimic_raw() -> RawArrays:
    return synthetic_mimic.generate(seed=0)


@pytest.fixture(params=sorted(GENERATORS))
def any_data(request: pytest.FixtureRequest, adni_raw: RawArrays,
             mimic_raw: RawArrays) -> RawArrays:
    return {"adni": adni_raw, "mimic": mimic_raw}[request.param]


def test_adni_combination_counts_and_marginals_are_exact(adni_raw: RawArrays) -> None:
    assert combo_counts(adni_raw) == ADNI_COUNTS
    assert len(adni_raw.labels) == 2380
    letters = [m.letter for m in adni_raw.modalities]
    assert dict(zip(letters, adni_raw.observed.sum(axis=0).tolist())) == ADNI_MARGINALS


def test_adni_scale_multiplies_every_combination() -> None:
    assert combo_counts(synthetic_adni.generate(seed=1, scale=2.0)) == {
        k: 2 * v for k, v in ADNI_COUNTS.items()}
    half = combo_counts(synthetic_adni.generate(seed=1, scale=0.5))
    assert half == {"IGCB": 737, "C": 240, "IC": 79, "ICB": 64, "GCB": 61, "CB": 11}
    assert combo_counts(synthetic_adni.generate(seed=1, scale=0.001)) == dict.fromkeys(
        ADNI_COUNTS, 1)
    with pytest.raises(ValueError):
        synthetic_adni.generate(scale=0.0)


def test_modalities_in_canonical_order() -> None:
    assert [(m.name, m.letter, m.shape) for m in synthetic_adni.MODALITIES] == [
        ("image", "I", (256,)), ("genetic", "G", (500,)),
        ("clinical", "C", (40,)), ("biospecimen", "B", (12,))]
    assert [(m.name, m.letter, m.shape) for m in synthetic_mimic.MODALITIES] == [
        ("labs_vitals", "L", (60,)), ("notes", "N", (768,)), ("codes", "C", (300,))]
    assert synthetic_adni.CLASS_NAMES == ("CN", "MCI", "Dementia")
    assert synthetic_mimic.CLASS_NAMES == ("survived", "deceased")


def test_shapes_dtypes_and_ids(any_data: RawArrays) -> None:
    n, n_mod = len(any_data.labels), len(any_data.modalities)
    assert any_data.observed.shape == (n, n_mod) and any_data.observed.dtype == np.bool_
    assert any_data.labels.dtype == np.int64
    assert set(np.unique(any_data.labels)) == set(range(len(any_data.class_names)))
    assert set(any_data.features) == {m.letter for m in any_data.modalities}
    for m in any_data.modalities:
        x = any_data.features[m.letter]
        assert x.shape == (n, *m.shape) and x.dtype == np.float32
    assert len(set(any_data.ids.tolist())) == n
    assert any_data.observed.any(axis=1).all()


def test_missing_slots_are_zero_and_values_finite(any_data: RawArrays) -> None:
    for j, m in enumerate(any_data.modalities):
        x = any_data.features[m.letter].reshape(len(any_data.labels), -1)
        assert np.isfinite(x).all()
        assert not x[~any_data.observed[:, j]].any()
        present = x[any_data.observed[:, j]]
        assert (present != 0).any(axis=1).mean() > 0.99  # observed rows carry values


def test_same_seed_is_bitwise_identical_and_seeds_differ() -> None:
    for gen in GENERATORS.values():
        a, b, c = gen.generate(seed=7), gen.generate(seed=7), gen.generate(seed=8)
        assert a.observed.tobytes() == b.observed.tobytes()
        assert a.labels.tobytes() == b.labels.tobytes()
        assert a.ids.tolist() == b.ids.tolist()
        for k in a.features:
            assert a.features[k].tobytes() == b.features[k].tobytes()
            assert not np.array_equal(a.features[k], c.features[k])
        assert not np.array_equal(a.observed, c.observed)


def test_adni_ids_labels_and_informative_missingness(adni_raw: RawArrays) -> None:
    assert adni_raw.ids[0] == "ADNI-S00001" and adni_raw.class_weights is None
    share = np.bincount(adni_raw.labels, minlength=3) / len(adni_raw.labels)
    assert 0.30 < share[0] < 0.45 and 0.38 < share[1] < 0.50 and 0.12 < share[2] < 0.28
    c_only = ~adni_raw.observed[:, [0, 1, 3]].any(axis=1)
    full = adni_raw.observed.all(axis=1)
    assert np.mean(adni_raw.labels[c_only] == 0) > np.mean(adni_raw.labels[full] == 0) + 0.15


def test_adni_value_domains(adni_raw: RawArrays) -> None:
    g = adni_raw.features["G"][adni_raw.observed[:, 1]]
    assert set(np.unique(g).tolist()) == {-1.0, 0.0, 1.0}
    onehot = adni_raw.features["C"][:, :19]  # C is never missing
    assert set(np.unique(onehot).tolist()) == {0.0, 1.0}
    assert (onehot.sum(axis=1) == 6).all()  # one level per categorical block


def test_mimic_label_rate_missingness_and_layout(mimic_raw: RawArrays) -> None:
    assert mimic_raw.class_weights == (0.25, 0.75)
    assert mimic_raw.ids[0] == "MIMIC-S00001"
    assert 0.2 <= mimic_raw.labels.mean() <= 0.3
    counts = combo_counts(mimic_raw)
    assert set(counts) == {"LNC", "LN", "LC", "NC", "L", "N", "C"}
    assert counts["LNC"] / len(mimic_raw.labels) >= 0.5
    marg = mimic_raw.observed.mean(axis=0)
    assert marg[0] > 0.85 and marg[0] > marg[1] and marg[0] > marg[2]
    labs_only = mimic_raw.observed[:, 0] & ~mimic_raw.observed[:, 1:].any(axis=1)
    full = mimic_raw.observed.all(axis=1)
    assert mimic_raw.labels[full].mean() > mimic_raw.labels[labs_only].mean() + 0.05
    doubled = combo_counts(synthetic_mimic.generate(seed=0, scale=2.0))
    assert doubled == {k: 2 * v for k, v in counts.items()}


def test_mimic_value_domains(mimic_raw: RawArrays) -> None:
    notes = mimic_raw.features["N"][mimic_raw.observed[:, 1]]
    np.testing.assert_allclose(np.linalg.norm(notes, axis=1), 1.0, atol=1e-4)
    codes = mimic_raw.features["C"][mimic_raw.observed[:, 2]]
    assert set(np.unique(codes).tolist()) == {0.0, 1.0}
    assert 0.01 < codes.mean() < 0.1  # sparse multi-hot


def _corr(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.corrcoef(a, b.astype(float))[0, 1])


def test_adni_interactions_are_invisible_to_either_side_alone(adni_raw: RawArrays) -> None:
    """Pair columns (see the data card) agree in sign only for one class each."""
    full = adni_raw.observed.all(axis=1)
    y, f = adni_raw.labels[full], {k: v[full] for k, v in adni_raw.features.items()}
    pairs = [(f["I"][:, 16:19], f["G"][:, 40:43], 2), (f["C"][:, 33:36], f["B"][:, 4:7], 1)]
    for left, right, cls in pairs:
        assert _corr((left * right).sum(axis=1), y == cls) > 0.3
        for side in (left, right):
            for k in range(side.shape[1]):
                assert max(abs(_corr(side[:, k], y == c)) for c in range(3)) < 0.1


def test_mimic_interaction_is_invisible_to_either_side_alone(mimic_raw: RawArrays) -> None:
    """Labs cols 2-4 and codes cols 20-22 agree (high value, code present) for deaths."""
    full = mimic_raw.observed.all(axis=1)
    y = mimic_raw.labels[full]
    labs, codes = mimic_raw.features["L"][full, 2:5], mimic_raw.features["C"][full, 20:23]
    assert _corr((labs * (codes - 0.5)).sum(axis=1), y == 1) > 0.15
    for side in (labs, codes):
        for k in range(3):
            assert abs(_corr(side[:, k], y == 1)) < 0.1


def _held_out(raw: RawArrays, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """30 % of the fully observed samples as test; every other sample trains."""
    full = np.random.default_rng(seed).permutation(np.flatnonzero(raw.observed.all(axis=1)))
    test = full[: int(0.3 * len(full))]
    return np.setdiff1d(np.arange(len(raw.labels)), test), test


def _logreg(c: float) -> Pipeline:
    return make_pipeline(StandardScaler(), LogisticRegression(C=c, max_iter=500))


def test_adni_single_modality_is_clearly_weaker_than_all_four(adni_raw: RawArrays) -> None:
    y, obs = adni_raw.labels, adni_raw.observed
    both = np.concatenate([adni_raw.features[k] for k in "IGCB"] + [obs.astype(np.float32)], 1)
    single: dict[str, list[float]] = {"I": [], "C": [], "B": []}
    together = []
    for seed in range(3):  # several splits: one 442-sample test set is noisy
        train, test = _held_out(adni_raw, seed)
        for k in single:
            j = "IGCB".index(k)
            rows, x = train[obs[train, j]], adni_raw.features[k]
            single[k].append(_logreg(0.003).fit(x[rows], y[rows]).score(x[test], y[test]))
        together.append(_logreg(0.003).fit(both[train], y[train]).score(both[test], y[test]))
    means = {k: float(np.mean(v)) for k, v in single.items()}
    assert min(means.values()) > 0.40  # above chance (1/3) and the majority share
    assert np.mean(together) > max(means.values()) + 0.025
    assert np.mean(together) < 0.7  # hard enough that models can be told apart


def test_mimic_lnc_is_hard_but_learnable(mimic_raw: RawArrays) -> None:
    train, test = _held_out(mimic_raw, seed=0)
    y = mimic_raw.labels
    x = np.concatenate([mimic_raw.features[k] for k in "LNC"]
                       + [mimic_raw.observed.astype(np.float32)], axis=1)
    prob = _logreg(3e-4).fit(x[train], y[train]).predict_proba(x[test])[:, 1]
    assert 0.6 < roc_auc_score(y[test], prob) < 0.75
