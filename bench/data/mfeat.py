"""UCI Multiple Features (mfeat): a real six-view data set, fully observed.

Views and letters, in canonical order: F Fourier coefficients (76), A profile correlations
(216), K Karhunen–Loève coefficients (64), P pixel averages (240), Z Zernike moments (47),
M morphological features (6). 2,000 digits, 10 classes.

Every view of every digit is observed; missingness is imposed on the training split by the
options every data set takes (``bench.data.missingness``). mfeat's default is
``missing=pattern=adni`` with ADNI's roles mapped onto views by :data:`ADNI_ROLES`: image →
P,K; genetic → A; clinical → F,M (always observed, like ADNI's clinical data); biospecimen →
Z. So 61.9 % of training digits keep every view, 20.1 % only F,M, 6.6 % P,K,F,M, 5.3 %
P,K,F,M,Z, 5.1 % A,F,M,Z, 0.9 % F,M,Z.

Features are standardised with the mean and standard deviation of the training split, before
any missingness is imposed, so every mechanism sees the same values.
"""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pandas as pd

from bench.data.arrays import Modality, RawArrays
from bench.errors import UserError

VIEWS = (("F", "fourier", "mfeat-fou"), ("A", "profile", "mfeat-fac"),
         ("K", "karhunen_loeve", "mfeat-kar"), ("P", "pixels", "mfeat-pix"),
         ("Z", "zernike", "mfeat-zer"), ("M", "morphology", "mfeat-mor"))
CLASS_NAMES = tuple(str(d) for d in range(10))

#: ADNI's roles (``bench.data.missingness``, ``missing=pattern=adni``) → views.
ADNI_ROLES = {"I": "PK", "G": "A", "C": "FM", "B": "Z"}


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
            raise UserError(f"{path}: labels (last column) differ from the other views")
        modalities.append(Modality(name, letter, (x.shape[1],), "vector"))
        features[letter] = x
    return tuple(modalities), features, labels


def load(root: Path, split_seed: int, splitter) -> tuple[RawArrays, dict[str, np.ndarray]]:
    """Fully observed arrays, standardised on the training split, and that split."""
    modalities, features, labels = read_views(root)
    n = len(labels)
    observed = np.ones((n, len(modalities)), dtype=bool)
    splits = splitter(observed, labels, split_seed)
    train = splits["train"]
    for m in modalities:
        x = features[m.letter]
        mean, std = x[train].mean(0), x[train].std(0)
        features[m.letter] = ((x - mean) / np.where(std > 0, std, 1.0)).astype(np.float32)
    raw = RawArrays(modalities=modalities, features=features, observed=observed, labels=labels,
                    ids=np.array([f"mfeat-{i:04d}" for i in range(n)]), class_names=CLASS_NAMES)
    return raw, splits
