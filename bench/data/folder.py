"""Bring-your-own data: a folder of CSV files (``--dataset folder:PATH``).

Layout::

    PATH/labels.csv              columns id,label  (label: integers 0..C-1 or class names)
    PATH/<L>_<name>.csv          one file per modality: column id, then numeric features;
                                 <L> is the modality's one-letter code, e.g. I_image.csv
    PATH/split.csv   (optional)  columns id,split with split in train/val/test

A sample is missing a modality when its id is absent from that modality's file or its row
is entirely empty (NaN). Modalities are ordered as their files sort by name unless
``order`` gives the letters.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from bench.data.arrays import Modality, RawArrays


def read_folder(path: str | Path, order: str | None = None) -> RawArrays:
    """Read the layout above into :class:`RawArrays`, with messages that name the bad file."""
    root = Path(path)
    if not root.is_dir():
        raise FileNotFoundError(f"data folder {root} does not exist; expected a folder with "
                                "labels.csv and one <L>_<name>.csv per modality")
    label_file = root / "labels.csv"
    if not label_file.is_file():
        raise FileNotFoundError(f"{label_file} is missing; expected columns id,label")
    labels = pd.read_csv(label_file, dtype={"id": str})
    if not {"id", "label"} <= set(labels.columns):
        raise ValueError(f"{label_file}: expected columns id,label, found {list(labels.columns)}")
    if labels["id"].duplicated().any():
        raise ValueError(f"{label_file}: duplicate ids, e.g. "
                         f"{labels['id'][labels['id'].duplicated()].tolist()[:3]}")
    files = sorted(p for p in root.glob("*_*.csv") if p.name != "labels.csv")
    if not files:
        raise ValueError(f"data folder {root}: no modality file found; expected files named "
                         "<L>_<name>.csv, e.g. I_image.csv")
    by_letter: dict[str, Path] = {}
    for p in files:
        letter = p.name.split("_", 1)[0]
        if len(letter) != 1 or not letter.isalpha():
            raise ValueError(f"{p}: modality files are named <L>_<name>.csv with a one-letter "
                             "code before the underscore")
        if letter in by_letter:
            raise ValueError(f"{p}: letter {letter!r} is already used by {by_letter[letter]}")
        by_letter[letter] = p
    letters = order or "".join(by_letter)
    if sorted(letters) != sorted(by_letter):
        raise ValueError(f"data folder {root}: order {letters!r} must list exactly the "
                         f"modality letters found ({''.join(by_letter)!r})")
    ids = labels["id"].to_numpy(dtype=str)
    index = pd.Index(ids)
    modalities, features = [], {}
    observed = np.zeros((len(ids), len(letters)), dtype=bool)
    for j, letter in enumerate(letters):
        p = by_letter[letter]
        table = pd.read_csv(p, dtype={"id": str})
        if "id" not in table.columns:
            raise ValueError(f"{p}: expected an id column followed by numeric features")
        unknown = sorted(set(table["id"]) - set(ids))
        if unknown:
            raise ValueError(f"{p}: {len(unknown)} id(s) not in labels.csv, e.g. {unknown[:3]}")
        values = table.drop(columns="id")
        non_numeric = [c for c in values.columns if not pd.api.types.is_numeric_dtype(values[c])]
        if non_numeric:
            raise ValueError(f"{p}: non-numeric feature column(s) {non_numeric[:5]}")
        x = np.zeros((len(ids), values.shape[1]), dtype=np.float32)
        rows = index.get_indexer(table["id"])
        x[rows] = values.to_numpy(dtype=np.float32)
        present = np.zeros(len(ids), dtype=bool)
        present[rows] = ~np.isnan(values.to_numpy(dtype=np.float64)).all(1)
        observed[:, j] = present
        features[letter] = x
        modalities.append(Modality(p.stem.split("_", 1)[1], letter, (values.shape[1],), "vector"))
    y = labels["label"]
    if pd.api.types.is_integer_dtype(y):
        class_names = tuple(str(c) for c in range(int(y.max()) + 1))
        codes = y.to_numpy(dtype=np.int64)
    else:
        class_names = tuple(sorted(y.astype(str).unique()))
        codes = y.astype(str).map({c: i for i, c in enumerate(class_names)}).to_numpy(np.int64)
    return RawArrays(modalities=tuple(modalities), features=features, observed=observed,
                     labels=codes, ids=ids, class_names=class_names)
