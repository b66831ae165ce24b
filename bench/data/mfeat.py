"""UCI Multiple Features (mfeat): a real six-view data set with simulated missingness.

Views and letters, in canonical order: F Fourier coefficients (76), A profile correlations
(216), K Karhunen–Loève coefficients (64), P pixel averages (240), Z Zernike moments (47),
M morphological features (6). 2,000 digits, 10 classes.

Missingness is simulated on the training part only (validation and test keep every view,
as the paper's protocol evaluates on fully observed samples), seeded by ``missing_seed``:

* ``adni`` (default): ADNI's observed-combination shares (Flex-MoE paper, Figure 2) with
  ADNI's roles mapped onto views — image → P,K; genetic → A; clinical → F,M (always
  observed, like ADNI's clinical data); biospecimen → Z. So 61.9 % of training digits keep
  every view, 20.1 % only F,M, 6.6 % P,K,F,M, 5.3 % P,K,F,M,Z, 5.1 % A,F,M,Z, 0.9 % F,M,Z.
* ``mcar``: every view of every training digit is dropped independently with probability
  ``rate``; a digit left with no view gets one view back at random.
* ``none``: every view observed.

Features are standardised with the training part's mean and standard deviation.
"""

from __future__ import annotations

import gzip
from pathlib import Path
from typing import Literal, get_args

import numpy as np
import pandas as pd

from bench.data.arrays import Modality, RawArrays

VIEWS = (("F", "fourier", "mfeat-fou"), ("A", "profile", "mfeat-fac"),
         ("K", "karhunen_loeve", "mfeat-kar"), ("P", "pixels", "mfeat-pix"),
         ("Z", "zernike", "mfeat-zer"), ("M", "morphology", "mfeat-mor"))
CLASS_NAMES = tuple(str(d) for d in range(10))

#: ADNI's observed combinations (I G C B roles → views) and their counts in the paper.
ADNI_PATTERN = (("FAKPZM", 1474), ("FM", 479), ("FKPM", 157), ("FKPZM", 127), ("FAZM", 122),
                ("FZM", 21))
MissingRule = Literal["adni", "mcar", "none"]
MISSING: tuple[str, ...] = get_args(MissingRule)


def read_views(root: Path) -> tuple[tuple[Modality, ...], dict[str, np.ndarray], np.ndarray]:
    """Read the six gzip CSV files; check that every file has 2,000 rows and the same labels."""
    modalities, features, labels = [], {}, None
    for letter, name, stem in VIEWS:
        path = root / f"{stem}.csv.gz"
        if not path.is_file():
            raise FileNotFoundError(f"mfeat view file {path} is missing; the project ships it "
                                    "under datasets/mfeat/")
        with gzip.open(path, "rt") as fh:
            table = pd.read_csv(fh)
        values = table.to_numpy(dtype=np.float64)
        x, y = values[:, :-1].astype(np.float32), values[:, -1].astype(np.int64)
        if labels is None:
            labels = y
        elif not np.array_equal(labels, y):
            raise ValueError(f"{path}: labels (last column) differ from the other views")
        modalities.append(Modality(name, letter, (x.shape[1],), "vector"))
        features[letter] = x
    return tuple(modalities), features, labels


def simulate_missing(observed: np.ndarray, rows: np.ndarray, letters: str, how: str,
                     rate: float, seed: int) -> np.ndarray:
    """Return a copy of ``observed`` with views of ``rows`` dropped by mechanism ``how``."""
    if how not in MISSING:
        raise ValueError(f"mfeat: missing must be one of {MISSING}, got {how!r}")
    out = observed.copy()
    rng = np.random.default_rng(seed)
    if how == "adni":
        shares = np.array([n for _, n in ADNI_PATTERN], dtype=float)
        counts = np.floor(shares / shares.sum() * len(rows)).astype(int)
        counts[0] += len(rows) - counts.sum()
        combos = np.repeat(np.arange(len(ADNI_PATTERN)), counts)
        for row, k in zip(rng.permutation(rows), combos):
            out[row] = [c in ADNI_PATTERN[k][0] for c in letters]
    elif how == "mcar":
        if not 0.0 <= rate < 1.0:
            raise ValueError(f"mfeat: rate must lie in [0, 1), got {rate}")
        keep = rng.random((len(rows), len(letters))) >= rate
        empty = np.flatnonzero(~keep.any(1))
        keep[empty, rng.integers(0, len(letters), len(empty))] = True
        out[rows] = keep
    return out


def load(root: Path, split_seed: int, missing: str, rate: float, missing_seed: int,
         splitter) -> tuple[RawArrays, dict[str, np.ndarray]]:
    """Arrays with simulated missingness and the split they were simulated under."""
    modalities, features, labels = read_views(root)
    letters = "".join(m.letter for m in modalities)
    n = len(labels)
    full = np.ones((n, len(modalities)), dtype=bool)
    splits = splitter(full, labels, split_seed)
    observed = simulate_missing(full, splits["train"], letters, missing, rate, missing_seed)
    for j, c in enumerate(letters):
        train_obs = splits["train"][observed[splits["train"], j]]
        mean = features[c][train_obs].mean(0)
        std = features[c][train_obs].std(0)
        features[c] = ((features[c] - mean) / np.where(std > 0, std, 1.0)).astype(np.float32)
        features[c][~observed[:, j]] = 0.0
    raw = RawArrays(modalities=modalities, features=features, observed=observed, labels=labels,
                    ids=np.array([f"mfeat-{i:04d}" for i in range(n)]), class_names=CLASS_NAMES)
    return raw, splits
