"""Classification metrics as the paper reports them: accuracy, macro-F1, AUC (one-vs-rest).

Each metric is declared once, in :data:`METRICS`: its name, label, direction, whether it
reads in percent and how it is computed. The store's ``val_<name>`` / ``test_<name>``
columns, a run's row, the tables' ``--metric`` choices and the regression check derive from
that tuple, so a new metric is one :class:`Metric` added there.

They run after a whole training, so they must never raise on well-shaped input: a metric
that is undefined for the evaluated samples (one class present, a diverged model's NaN
probabilities) is NaN, and the reason is reported through ``notes`` instead of an exception
that would lose the finished run.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from sklearn.metrics import f1_score, roc_auc_score

from bench.errors import UserError

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Scored:
    """The evaluated samples as every metric reads them: finite probabilities ``probs``
    ``[N, C]`` (rows summing to one), labels ``y``, predictions ``pred``, the classes
    ``present`` in ``y`` and the names of those ``absent``; ``name(k)`` names class ``k``."""

    probs: np.ndarray
    y: np.ndarray
    pred: np.ndarray
    present: np.ndarray
    absent: list[str]
    num_classes: int
    name: Callable[[int], str]


@dataclass(frozen=True)
class Metric:
    """One reported metric. ``compute`` returns the value (a fraction, NaN where undefined)
    and its caveat ("" when there is none); ``percent``: tables show it × 100."""

    name: str
    label: str
    description: str
    compute: Callable[[Scored], tuple[float, str]]
    higher_is_better: bool = True
    percent: bool = True


def _accuracy(s: Scored) -> tuple[float, str]:
    return float((s.pred == s.y).mean()), ""


def _macro_f1(s: Scored) -> tuple[float, str]:
    """Macro over all the model's classes; a class absent from the samples scores 0."""
    value = float(f1_score(s.y, s.pred, average="macro", labels=np.arange(s.num_classes),
                           zero_division=0))
    note = "" if not s.absent else (
        f"macro over all {s.num_classes} classes; each class absent from the evaluated "
        f"samples scores 0 (absent: {', '.join(s.absent)})")
    return value, note


def _auc(s: Scored) -> tuple[float, str]:
    """AUC over the classes present in ``y`` (one-vs-rest for more than two)."""
    probs, y, present, num_classes, absent, name = (s.probs, s.y, s.present, s.num_classes,
                                                    s.absent, s.name)
    k = len(present)
    if k < 2:
        return math.nan, ("undefined: the evaluated samples hold a single class "
                          f"({name(int(present[0]))})")
    subset = "" if k == num_classes else (f"over the {k} classes present of {num_classes} "
                                          f"(absent: {', '.join(absent)})")
    sub = probs[:, present]
    with np.errstate(divide="ignore", invalid="ignore"):
        sub = sub / sub.sum(1, keepdims=True)
    if not np.isfinite(sub).all():
        zero = int((~np.isfinite(sub).all(1)).sum())
        return math.nan, (f"undefined: {zero} samples put no probability on the "
                          f"{k} classes present")
    try:
        if k == 2:
            auc = roc_auc_score(y == present[1], sub[:, 1])
        else:
            auc = roc_auc_score(np.searchsorted(present, y), sub, multi_class="ovr")
    except ValueError as exc:  # a last guard: the run is worth more than this one number
        return math.nan, f"undefined: {exc}"
    return float(auc), subset


#: The reported metrics, in the order tables and rows list them.
METRICS: tuple[Metric, ...] = (
    Metric("acc", "ACC", "accuracy", _accuracy),
    Metric("f1", "F1", "macro-F1", _macro_f1),
    Metric("auc", "AUC", "AUC (one-vs-rest; over the classes present)", _auc),
)
#: The splits every run is scored on (a row holds each metric on each).
SPLITS = ("val", "test")


def metric_names() -> tuple[str, ...]:
    """``("acc", "f1", "auc")``: the keys of :func:`classification_metrics`' result."""
    return tuple(m.name for m in METRICS)


def column(split: str, metric: str) -> str:
    """The store's column of ``metric`` on ``split`` (``test_acc``)."""
    return f"{split}_{metric}"


def metric_columns(splits: Sequence[str] = SPLITS) -> tuple[str, ...]:
    """Every metric column of ``splits``, split by split (``val_acc, val_f1, …``)."""
    return tuple(column(split, m.name) for split in splits for m in METRICS)


def metric_of(column_name: str) -> Metric:
    """The declaration behind a metric column (``test_auc`` → AUC); a clear error otherwise."""
    for split in SPLITS:
        for m in METRICS:
            if column(split, m.name) == column_name:
                return m
    raise UserError(f"unknown metric {column_name!r}; choose one of "
                    f"{', '.join(metric_columns(('test', 'val')))}")


def classification_metrics(probs: np.ndarray, y: np.ndarray, *,
                           notes: dict[str, str] | None = None,
                           class_names: Sequence[str] | None = None) -> dict[str, float]:
    """``acc``, ``f1`` (macro) and ``auc`` as fractions in [0, 1]; NaN where undefined.

    AUC uses the positive-class column for two classes and is one-vs-rest macro for more
    (the official multi-class call fails on binary data). When some classes are absent from
    ``y`` it is computed over the classes present, on their renormalised probabilities: the
    binary AUC between them if two are present, one-vs-rest over them if more; with a single
    class present it is undefined. Non-finite probabilities make every metric NaN.

    ``notes``, when given, receives a reason per metric (``notes["auc"]``) that is NaN or
    computed on fewer classes than the model has; metrics without a caveat get no key.
    ``class_names`` only make those reasons readable. Raises ``ValueError`` only on input
    of the wrong shape or labels outside ``0..C-1`` (a caller's bug, not a run's outcome).
    """
    probs = np.asarray(probs, dtype=np.float64)
    y = np.asarray(y)
    _check_input(probs, y)
    y = y.astype(np.int64)
    n, num_classes = probs.shape
    local: dict[str, str] = {}
    out = dict.fromkeys(metric_names(), math.nan)

    def name(k: int) -> str:
        if class_names is not None and 0 <= k < len(class_names):
            return str(class_names[k])
        return f"class {k}"

    with np.errstate(divide="ignore", invalid="ignore"):
        probs = probs / probs.sum(1, keepdims=True)
    bad = ~np.isfinite(probs).all(1)
    if n == 0:
        local = dict.fromkeys(metric_names(), "undefined: no samples were evaluated")
    elif bad.any():
        reason = (f"undefined: {int(bad.sum())} of {n} samples have non-finite or all-zero "
                  "probabilities (a diverged model?)")
        local = dict.fromkeys(metric_names(), reason)
    else:
        present = np.unique(y)
        seen = set(present.tolist())
        scored = Scored(probs, y, probs.argmax(1), present,
                        [name(k) for k in range(num_classes) if k not in seen], num_classes,
                        name)
        for metric in METRICS:
            out[metric.name], note = metric.compute(scored)
            if note:
                local[metric.name] = note
    for key, reason in local.items():
        log = logger.warning if math.isnan(out[key]) else logger.info
        log("%s: %s", key, reason)
    if notes is not None:
        notes.update(local)
    return out


def _check_input(probs: np.ndarray, y: np.ndarray) -> None:
    """Refuse malformed input loudly; everything well-shaped is scored."""
    if probs.ndim != 2 or probs.shape[1] < 2:
        raise ValueError(f"probabilities must be [N, C] with C >= 2, got shape {probs.shape}")
    if y.ndim != 1 or len(y) != len(probs):
        raise ValueError(f"labels must be [N] with N = {len(probs)}, got shape {y.shape}")
    if len(y) and not (np.issubdtype(y.dtype, np.integer) or np.all(np.mod(y, 1) == 0)):
        raise ValueError("labels must be integers")
    if len(y) and (y.min() < 0 or y.max() >= probs.shape[1]):
        raise ValueError(f"labels must lie in 0..{probs.shape[1] - 1}, "
                         f"got {y.min()}..{y.max()}")


