"""Shared fixtures: small data sets and specs, built once per session."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from bench.data.arrays import Modality, RawArrays
from bench.data.core import Batch, DataSpec, MultimodalData
from bench.data.load import load_data


def pytest_configure(config: pytest.Config) -> None:
    """One torch thread, as a run trains by default: the tests check behaviour, not speed, and
    on a machine other work keeps busy a multi-threaded step can cost ten times its idle time
    (tests of multi-threaded determinism set their own count)."""
    torch.set_num_threads(1)


def toy_arrays(n: int = 120, seed: int = 0, letters: str = "ABC",
               widths: tuple[int, ...] = (20, 7, 33), num_classes: int = 3) -> RawArrays:
    """Random features with a fixed missingness pattern: half full, the rest partial."""
    rng = np.random.default_rng(seed)
    mods = tuple(Modality(f"mod{c}", c, (w,)) for c, w in zip(letters, widths))
    observed = np.ones((n, len(letters)), dtype=bool)
    partial = np.arange(n // 2, n)
    observed[partial] = rng.random((len(partial), len(letters))) < 0.5
    observed[partial[~observed[partial].any(1)], 0] = True
    labels = rng.integers(0, num_classes, n)
    feats = {c: rng.normal(size=(n, w)).astype(np.float32) * observed[:, [j]]
             for j, (c, w) in enumerate(zip(letters, widths))}
    return RawArrays(modalities=mods, features=feats, observed=observed, labels=labels,
                     ids=np.array([f"s{i}" for i in range(n)]),
                     class_names=tuple(f"c{i}" for i in range(num_classes)))


@pytest.fixture(scope="session")
def toy_data() -> MultimodalData:
    return MultimodalData.from_arrays(toy_arrays(), "toy", "custom")


@pytest.fixture(scope="session")
def adni() -> MultimodalData:
    return load_data("synthetic-adni")


@pytest.fixture(scope="session")
def mimic() -> MultimodalData:
    return load_data("synthetic-mimic")


def spec_of(modalities: dict[str, int], num_classes: int = 3, family: str = "adni") -> DataSpec:
    """A spec with hand-picked feature widths, for exact parameter counts."""
    mods = tuple(Modality(f"mod{c}", c, (w,)) for c, w in modalities.items())
    return DataSpec("hand", family, mods, mods, num_classes)


def batch_of(spec: DataSpec, observed: list[list[bool]], seed: int = 0) -> Batch:
    """A hand-made batch: random features zeroed where ``observed`` is False, random labels."""
    g = torch.Generator().manual_seed(seed)
    obs = torch.tensor(observed)
    n = len(observed)
    x = {m.letter: torch.randn(n, m.num_features, generator=g) * obs[:, [j]]
         for j, m in enumerate(spec.modalities)}
    y = torch.randint(0, spec.num_classes, (n,), generator=g)
    return Batch(x, obs, torch.zeros(n, dtype=torch.long), y)
