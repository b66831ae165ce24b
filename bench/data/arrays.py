"""The plain-array form every data source produces before it becomes tensors.

Generators and loaders return :class:`RawArrays`; :mod:`bench.data.core` turns it
into a :class:`~bench.data.core.MultimodalData` (tensors, split, combination index).
Keeping sources on NumPy keeps them independent of torch and easy to test.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from bench.errors import UserError


@dataclass(frozen=True)
class Modality:
    """One modality of a data set: its name, unique letter, per-sample shape and kind."""

    name: str
    letter: str
    shape: tuple[int, ...]
    kind: str = "vector"

    @property
    def num_features(self) -> int:
        """Flat feature count of one sample."""
        return int(np.prod(self.shape))


@dataclass(frozen=True)
class RawArrays:
    """A whole data set as arrays.

    ``features[letter]`` is float32 ``[N, *shape]`` with zeros where the modality is
    missing; ``observed`` is bool ``[N, M]`` with columns in ``modalities`` order;
    ``labels`` is int64 ``[N]``; ``ids`` are unique sample identifiers (str).
    """

    modalities: tuple[Modality, ...]
    features: dict[str, np.ndarray]
    observed: np.ndarray
    labels: np.ndarray
    ids: np.ndarray
    class_names: tuple[str, ...]
    class_weights: tuple[float, ...] | None = None


def validate_arrays(raw: RawArrays, name: str) -> None:
    """Fail early, naming the modality and what was expected, on malformed input."""
    n = len(raw.labels)
    letters = [m.letter for m in raw.modalities]
    if len(set(letters)) != len(letters):
        raise UserError(f"data set {name!r}: modality letters must be unique, got {letters}")
    if raw.observed.shape != (n, len(letters)):
        raise UserError(f"data set {name!r}: observed mask has shape {raw.observed.shape}, "
                        f"expected ({n}, {len(letters)})")
    if len(raw.ids) != n or len(set(map(str, raw.ids))) != n:
        raise UserError(f"data set {name!r}: expected {n} unique sample ids")
    for j, m in enumerate(raw.modalities):
        x = raw.features.get(m.letter)
        if x is None:
            raise UserError(f"data set {name!r}: no features for modality {m.letter!r}")
        if x.shape != (n, *m.shape):
            raise UserError(f"data set {name!r}: modality {m.letter!r} ({m.name}) has shape "
                            f"{x.shape}, expected {(n, *m.shape)}")
        present = raw.observed[:, j]
        bad = ~np.isfinite(x[present].reshape(int(present.sum()), -1)).all(1)
        if bad.any():
            rows = np.flatnonzero(present)[bad][:5]
            raise UserError(f"data set {name!r}: modality {m.letter!r} ({m.name}) has NaN or "
                            f"infinite features in observed samples {raw.ids[rows].tolist()}; "
                            "impute them or mark the modality missing for those samples")
        if not present.any():
            raise UserError(f"data set {name!r}: modality {m.letter!r} ({m.name}) has no "
                            "observed sample")
    labels = np.asarray(raw.labels)
    if labels.min() < 0 or labels.max() >= len(raw.class_names):
        raise UserError(f"data set {name!r}: labels must lie in 0..{len(raw.class_names) - 1}")
