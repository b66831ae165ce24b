"""Shared pieces of the seeded synthetic generators (synthetic-adni, synthetic-mimic).

Exact per-combination layouts, class-ordered latent readings, column standardisation and
the final packing into :class:`~bench.data.arrays.RawArrays` live here once.
"""

from __future__ import annotations

import numpy as np

from bench.data.arrays import Modality, RawArrays
from bench.errors import UserError


def scaled_counts(counts: dict[str, int], scale: float) -> dict[str, int]:
    """Multiply each count by ``scale``, round half up, keep at least one per combination."""
    if not scale > 0:
        raise UserError(f"scale must be positive, got {scale}")
    return {k: max(1, int(np.floor(v * scale + 0.5))) for k, v in counts.items()}


def allocate(n: int, probs: tuple[float, ...]) -> np.ndarray:
    """Split ``n`` into integer class counts that follow ``probs`` (largest remainder)."""
    p = np.asarray(probs, dtype=float) / float(np.sum(probs))
    raw = n * p
    out = np.floor(raw).astype(np.int64)
    order = np.argsort(-(raw - out), kind="stable")
    out[order[: n - int(out.sum())]] += 1
    return out


def layout(counts: dict[str, int], mix: dict[str, tuple[float, ...]], letters: str,
           rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Observed mask and labels with exact per-combination counts, rows shuffled by ``rng``."""
    masks, labels = [], []
    for combo, n in counts.items():
        per_class = allocate(n, mix[combo])
        labels.append(np.repeat(np.arange(len(per_class)), per_class))
        masks.append(np.tile([c in combo for c in letters], (n, 1)))
    order = rng.permutation(sum(counts.values()))
    return np.concatenate(masks)[order], np.concatenate(labels).astype(np.int64)[order]


def make_ids(prefix: str, n: int) -> np.ndarray:
    """Zero-padded sample identifiers such as ``ADNI-S00001``."""
    width = max(5, len(str(n)))
    return np.array([f"{prefix}{i + 1:0{width}d}" for i in range(n)])


def zscore(x: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """Standardise columns with the statistics of the observed ``rows``, as preprocessing would."""
    ref = x[rows] if rows.any() else x
    sd = ref.std(axis=0)
    return (x - ref.mean(axis=0)) / np.where(sd > 0, sd, 1.0)


def severity(labels: np.ndarray, n_classes: int, rng: np.random.Generator,
             gains: dict[str, float], shared: float) -> dict[str, np.ndarray]:
    """Per-modality noisy copies of a class-ordered latent; noise is partly shared."""
    centred = labels - (n_classes - 1) / 2.0
    common = rng.standard_normal(labels.shape[0])
    return {k: g * centred + np.sqrt(shared) * common
            + np.sqrt(1 - shared) * rng.standard_normal(labels.shape[0])
            for k, g in gains.items()}


def loaded(rng: np.random.Generator, latent: np.ndarray, n_cols: int,
            low: float, high: float) -> np.ndarray:
    """``latent`` spread over ``n_cols`` columns with random loadings in ``[low, high]``."""
    return latent[:, None] * rng.uniform(low, high, n_cols)[None, :]


def pack(raw: dict[str, np.ndarray], observed: np.ndarray, labels: np.ndarray,
         modalities: tuple[Modality, ...], scaled: dict[str, object], id_prefix: str,
         class_names: tuple[str, ...],
         class_weights: tuple[float, ...] | None = None) -> RawArrays:
    """Standardise the ``scaled`` columns of each modality on its observed rows, zero the
    missing rows and return the arrays in the suite's form."""
    n = labels.shape[0]
    features: dict[str, np.ndarray] = {}
    for j, m in enumerate(modalities):
        x, rows = raw[m.letter], observed[:, j]
        if m.letter in scaled:
            cols = scaled[m.letter]
            x[:, cols] = zscore(x[:, cols], rows)
        x = np.where(rows[:, None], x, 0.0).astype(np.float32)
        features[m.letter] = np.ascontiguousarray(x.reshape((n, *m.shape)))
    return RawArrays(modalities=modalities, features=features, observed=observed.astype(bool),
                     labels=labels, ids=make_ids(id_prefix, n), class_names=class_names,
                     class_weights=class_weights)
