"""Metrics never lose a finished run: undefined values are NaN with a reason, each checked
against sklearn on the hand-picked classes it should be computed over."""

from __future__ import annotations

import math

import numpy as np
import pytest
from sklearn.metrics import f1_score, roc_auc_score

from bench.data.core import MultimodalData
from bench.registry import create_model
from bench.training.metrics import classification_metrics
from bench.training.train import FitResult, fit, seed_everything
from tests.conftest import toy_arrays

NAMES = ("CN", "MCI", "AD")


def _probs(n: int, num_classes: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).dirichlet(np.ones(num_classes), n)


def _labels(n: int, classes: list[int], seed: int = 1) -> np.ndarray:
    """Labels over ``classes`` in which every one of them occurs."""
    y = np.random.default_rng(seed).choice(classes, n)
    y[: len(classes)] = classes
    return y


def _check_acc_f1(out: dict[str, float], probs: np.ndarray, y: np.ndarray) -> None:
    pred = probs.argmax(1)
    assert out["acc"] == pytest.approx((pred == y).mean())
    assert out["f1"] == pytest.approx(f1_score(y, pred, average="macro",
                                               labels=np.arange(probs.shape[1]),
                                               zero_division=0))


def test_binary_uses_the_positive_class_column():
    probs, y = _probs(40, 2), _labels(40, [0, 1])
    notes: dict[str, str] = {}
    out = classification_metrics(probs, y, notes=notes)
    assert out["auc"] == pytest.approx(roc_auc_score(y, probs[:, 1]))
    _check_acc_f1(out, probs, y)
    assert notes == {}


def test_multi_class_with_all_classes_is_one_vs_rest_macro():
    probs, y = _probs(60, 3), _labels(60, [0, 1, 2])
    notes: dict[str, str] = {}
    out = classification_metrics(probs, y, notes=notes, class_names=NAMES)
    assert out["auc"] == pytest.approx(roc_auc_score(y, probs, multi_class="ovr"))
    _check_acc_f1(out, probs, y)
    assert notes == {}


def test_existing_callers_keep_the_plain_dict():
    probs, y = _probs(30, 3), _labels(30, [0, 1, 2])
    out = classification_metrics(probs, y)
    assert set(out) == {"acc", "f1", "auc"} and all(isinstance(v, float) for v in out.values())


def test_two_of_three_classes_give_the_binary_auc_between_them():
    """The case that used to raise "y should be a 1d array" after a whole training."""
    probs, y = _probs(40, 3), _labels(40, [0, 2])
    notes: dict[str, str] = {}
    out = classification_metrics(probs, y, notes=notes, class_names=NAMES)
    expected = roc_auc_score(y == 2, probs[:, 2] / (probs[:, 0] + probs[:, 2]))
    assert out["auc"] == pytest.approx(expected)
    _check_acc_f1(out, probs, y)
    assert notes["auc"].startswith("over the 2 classes present of 3")
    assert "MCI" in notes["auc"]
    assert "MCI" in notes["f1"]  # the absent class scores 0 in the macro mean


def test_three_of_four_classes_give_one_vs_rest_over_them():
    probs, y = _probs(80, 4), _labels(80, [0, 1, 3])
    notes: dict[str, str] = {}
    out = classification_metrics(probs, y, notes=notes)
    present = [0, 1, 3]
    sub = probs[:, present] / probs[:, present].sum(1, keepdims=True)
    relabelled = np.array([present.index(v) for v in y])
    assert out["auc"] == pytest.approx(roc_auc_score(relabelled, sub, multi_class="ovr"))
    _check_acc_f1(out, probs, y)
    assert notes["auc"].startswith("over the 3 classes present of 4")
    assert "class 2" in notes["auc"]


@pytest.mark.parametrize("num_classes", [2, 3])
def test_a_single_class_leaves_auc_undefined_with_a_reason(num_classes):
    probs, y = _probs(20, num_classes), np.ones(20, dtype=np.int64)
    notes: dict[str, str] = {}
    out = classification_metrics(probs, y, notes=notes, class_names=NAMES[:num_classes])
    assert math.isnan(out["auc"])
    assert notes["auc"] == "undefined: the evaluated samples hold a single class (MCI)"
    _check_acc_f1(out, probs, y)


@pytest.mark.parametrize("bad", [np.nan, np.inf, 0.0])
def test_non_finite_probabilities_make_every_metric_nan(bad):
    probs, y = _probs(30, 3), _labels(30, [0, 1, 2])
    probs[[4, 7]] = bad
    notes: dict[str, str] = {}
    out = classification_metrics(probs, y, notes=notes)
    assert all(math.isnan(v) for v in out.values())
    assert set(notes) == {"acc", "f1", "auc"}
    assert all(v.startswith("undefined: 2 of 30 samples") for v in notes.values())


def test_all_nan_probabilities_do_not_raise():
    out = classification_metrics(np.full((10, 2), np.nan), _labels(10, [0, 1]))
    assert all(math.isnan(v) for v in out.values())


def test_no_probability_on_the_present_classes_is_undefined_not_a_crash():
    probs, y = _probs(20, 3), _labels(20, [0, 2])
    probs[3] = [0.0, 1.0, 0.0]
    notes: dict[str, str] = {}
    out = classification_metrics(probs, y, notes=notes)
    assert math.isnan(out["auc"]) and "1 samples put no probability" in notes["auc"]
    _check_acc_f1(out, probs, y)


def test_no_samples_give_nan():
    notes: dict[str, str] = {}
    out = classification_metrics(np.zeros((0, 3)), np.zeros(0, dtype=np.int64), notes=notes)
    assert all(math.isnan(v) for v in out.values()) and set(notes) == set(out)


def test_malformed_input_is_refused():
    with pytest.raises(ValueError, match="shape"):
        classification_metrics(np.ones(5), np.zeros(5, dtype=np.int64))
    with pytest.raises(ValueError, match=r"labels must be \[N\]"):
        classification_metrics(_probs(5, 2), np.zeros((5, 2), dtype=np.int64))
    with pytest.raises(ValueError, match="0..1"):
        classification_metrics(_probs(5, 2), np.array([0, 1, 2, 0, 1]))


def test_fit_survives_a_test_split_of_one_class():
    """A whole training whose test split holds one class returns, with the reason noted."""
    raw = toy_arrays(n=48, letters="A", widths=(6,))
    labels, idx = raw.labels, np.arange(48)
    test = idx[labels == 0][:5]
    rest = np.setdiff1d(idx, test)
    val = np.concatenate([rest[labels[rest] == c][:3] for c in range(3)])
    splits = {"train": np.setdiff1d(rest, val), "val": val, "test": test}
    data = MultimodalData.from_arrays(raw, "toy", "custom", splits=splits).restrict("A")
    seed_everything(0)
    result = fit(create_model("lee2019", data.spec), data, lr=1e-3, batch_size=8, epochs=1)
    assert isinstance(result, FitResult)
    assert math.isnan(result.test["auc"])
    assert result.notes["test_auc"] == "undefined: the evaluated samples hold a single class (c0)"
    assert math.isfinite(result.val["auc"]) and "val_auc" not in result.notes
    assert math.isfinite(result.test["acc"])
