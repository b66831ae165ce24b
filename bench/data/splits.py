"""Train / validation / test splits: drawn from a seed, or read from a user's file."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd

from bench.errors import UserError

logger = logging.getLogger(__name__)

PARTS = ("train", "val", "test")


def make_split(observed: np.ndarray, labels: np.ndarray, split_seed: int = 0,
               val_frac: float = 0.15, test_frac: float = 0.15,
               name: str = "data") -> dict[str, np.ndarray]:
    """Draw validation and test sets from the fully observed samples, stratified by label.

    Sizes are fractions of the whole data set (the paper's 70/15/15); everything else,
    including the remaining fully observed samples, is training data.
    """
    n = len(labels)
    full = np.flatnonzero(np.asarray(observed).all(1))
    n_val, n_test = round(val_frac * n), round(test_frac * n)
    if n_val < 1 or n_test < 1:
        raise UserError(f"data set {name!r}: val_frac and test_frac must give at least one "
                        f"sample each (N = {n})")
    if n_val + n_test > len(full):
        raise UserError(f"data set {name!r}: validation and test need {n_val + n_test} fully "
                        f"observed samples but only {len(full)} have every modality; lower "
                        "val_frac/test_frac or supply a split file")
    rng = np.random.default_rng(split_seed)
    order = _stratified_order(full, np.asarray(labels)[full], rng)
    val, test = order[:n_val], order[n_val:n_val + n_test]
    train = np.setdiff1d(np.arange(n), np.concatenate([val, test]))
    return {"train": train, "val": np.sort(val), "test": np.sort(test)}


def _stratified_order(index: np.ndarray, labels: np.ndarray,
                      rng: np.random.Generator) -> np.ndarray:
    """A permutation of ``index`` whose every prefix keeps the label mix (round-robin by rank)."""
    keys = np.empty(len(index))
    for c in np.unique(labels):
        members = np.flatnonzero(labels == c)
        ranks = rng.permutation(len(members))
        keys[members] = (ranks + rng.random()) / len(members)
    return index[np.argsort(keys, kind="stable")]


def read_split_file(path: str | Path, ids: np.ndarray, name: str = "data") -> dict[str, np.ndarray]:
    """Read a CSV with columns ``id`` and ``split`` (train / val / test).

    Samples the file does not list are left out of every part; an id the data set does not
    know, or an unknown part name, is an error.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"split file {path} does not exist (expected a CSV with "
                                "columns id,split)")
    try:
        table = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise UserError(f"split file {path}: not a readable UTF-8 CSV ({exc}); expected "
                        "columns id,split") from None
    missing = {"id", "split"} - set(table.columns)
    if missing:
        raise UserError(f"split file {path}: missing column(s) {sorted(missing)}; expected "
                        f"columns id,split, found {list(table.columns)}")
    table["split"] = table["split"].str.strip()
    blank = [i + 2 for i in range(len(table)) if not table["split"].iloc[i]]
    if blank:
        raise UserError(f"split file {path}: empty split on line(s) "
                        f"{', '.join(map(str, blank[:5]))}; expected one of {PARTS} on every "
                        "line (leave a sample out by deleting its line)")
    bad_parts = sorted(set(table["split"]) - set(PARTS))
    if bad_parts:
        raise UserError(f"split file {path}: unknown split name(s) {bad_parts}; use {PARTS}")
    dup = table["id"][table["id"].duplicated()].tolist()
    if dup:
        raise UserError(f"split file {path}: id(s) listed more than once, e.g. {dup[:3]}")
    position = {str(i): k for k, i in enumerate(ids)}
    unknown = [i for i in table["id"] if i not in position]
    if unknown:
        raise UserError(f"split file {path}: {len(unknown)} id(s) not in data set {name!r}, "
                        f"e.g. {unknown[:3]}")
    out = {p: np.array(sorted(position[i] for i in table.loc[table["split"] == p, "id"]),
                       dtype=np.int64) for p in PARTS}
    left_out = len(ids) - sum(len(v) for v in out.values())
    if left_out:
        logger.info("split file %s leaves %d sample(s) of %s out of every part", path, left_out,
                    name)
    return out


def refuse_seed_with_fixed_split(split_seed: int, source: str, name: str) -> None:
    """A data set whose split comes from a file has no split to draw: a ``--split-seed``
    other than 0 would be recorded with its runs yet change nothing, so it is refused."""
    if split_seed:
        raise UserError(f"data set {name!r}: --split-seed {split_seed} has no effect, its split "
                        f"comes from {source}; drop --split-seed, or move that file aside to "
                        "draw splits from seeds")

