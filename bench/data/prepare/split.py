"""The split written beside a prepared folder (``PTID_splits.json`` / ``PTID_splits_mimic.json``).

It is the split the suite itself draws (:func:`bench.data.splits.make_split`: validation and
test each 15 % of all participants, drawn from those with every prepared modality,
stratified by label, from ``split_seed``), written down in the official format so that two
users with the same download, and the official code, train and test on the same people.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from bench.data.splits import make_split


def write_split(path: Path, ids: np.ndarray, observed: np.ndarray, labels: np.ndarray,
                seed: int, val_frac: float, test_frac: float, name: str) -> dict[str, Any]:
    """Write the official ``{"training", "validation", "testing"}`` JSON of ids; return the
    manifest's record of it (seed, fractions, sizes)."""
    parts = make_split(observed, labels, seed, val_frac, test_frac, name=name)
    ids = np.asarray(ids).astype(str)
    lists = {"training": ids[parts["train"]].tolist(), "validation": ids[parts["val"]].tolist(),
             "testing": ids[parts["test"]].tolist()}
    path.write_text(json.dumps(lists, indent=1) + "\n")
    return {"file": path.name, "seed": seed, "val_frac": val_frac, "test_frac": test_frac,
            "rule": "validation and test drawn from the participants with every prepared "
                    "modality, stratified by label (bench.data.splits.make_split)",
            "sizes": {k: len(v) for k, v in lists.items()}}
