"""The plain-array form every data source produces before it becomes tensors.

Generators and loaders return :class:`RawArrays`; :mod:`bench.data.core` turns it
into a :class:`~bench.data.core.MultimodalData` (tensors, split, combination index).
Keeping sources on NumPy keeps them independent of torch and easy to test.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


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
