"""Bring-your-own data: a folder of CSV files (``--dataset folder:PATH``).

Layout::

    PATH/labels.csv              columns id,label; one row per sample
    PATH/<L>_<name>.csv          one file per modality: column id, then numeric features;
                                 <L> is the modality's one-letter code, e.g. I_image.csv
    PATH/split.csv   (optional)  columns id,split with split in train/val/test

Labels are either all integers (any set, e.g. 1..K or 0, 5, 10) or all class names; they are
mapped to class indices in sorted order (integers numerically, names as strings), and the
mapping is recorded in the data set's ``meta["classes"]``. At least two classes are needed.

A sample is missing a modality when its id is absent from that modality's file or its row
is entirely empty (NaN). Modalities are ordered as their files sort by name unless
``order`` gives the letters. By default features are standardised with the mean and
standard deviation of the training samples that observe the modality (as the shipped data
sets are); ``standardize=false`` keeps the values of the files.

Bad input fails with the file and its line (1-based, the header being line 1) named, so a
typo in one row does not silently become a new class or overwrite another row. The data
set's ``content_digest`` hashes every file read, so runs on changed files get new keys.
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from bench.data.arrays import Modality, RawArrays
from bench.errors import UserError

logger = logging.getLogger(__name__)

#: Cells read as empty in feature columns (pandas' defaults); ids and labels are read
#: literally, so an id or class called "NA" stays a string.
_EMPTY = ("", "#N/A", "#N/A N/A", "#NA", "-1.#IND", "-1.#QNAN", "-NaN", "-nan", "1.#IND",
          "1.#QNAN", "<NA>", "N/A", "NA", "NULL", "NaN", "None", "n/a", "nan", "null")
_INTEGER = r"[+-]?\d+"
_SHOW = 3  # examples quoted in a message


@dataclass(frozen=True)
class FolderData:
    """What :func:`read_folder` found: the arrays, the label mapping and the files it read."""

    raw: RawArrays
    #: Class label as written in labels.csv (integers in canonical form) → class index.
    classes: dict[str, int]
    #: ``(name relative to the folder, path)`` of every file read, for the content digest.
    files: tuple[tuple[str, Path], ...]


def _where(lines: pd.Series, ids: pd.Series, rows: pd.Index, values: pd.Series | None = None,
           what: str = "") -> str:
    """``line 5 (id 'p3')`` for the first few ``rows``, optionally with their values."""
    shown = []
    for r in rows[:_SHOW]:
        head = f"{what} {values[r]!r} on " if values is not None else ""
        shown.append(f"{head}line {lines[r]} (id {ids[r]!r})")
    more = f" and {len(rows) - _SHOW} more" if len(rows) > _SHOW else ""
    return ", ".join(shown) + more


def _read_csv(path: Path, expected: str, **kwargs: Any) -> pd.DataFrame:
    """``pd.read_csv`` whose parse errors name the file and what it should hold."""
    try:
        with warnings.catch_warnings():
            # More fields than the header would silently be dropped (index_col=False).
            warnings.simplefilter("error", pd.errors.ParserWarning)
            return pd.read_csv(path, skip_blank_lines=False, index_col=False, **kwargs)
    except pd.errors.EmptyDataError:
        raise UserError(f"{path}: file is empty; expected {expected}") from None
    except pd.errors.ParserWarning:
        raise UserError(f"{path}: rows have more fields than the header; expected "
                        f"{expected}") from None
    except pd.errors.ParserError as e:
        raise UserError(f"{path}: not a readable CSV ({e}); expected {expected}") from None
    except UnicodeDecodeError as e:
        raise UserError(f"{path}: not UTF-8 text (byte {e.start}: {e.reason}); expected a CSV "
                        f"file saved as UTF-8 with {expected}") from None


def _filled(column: pd.Series) -> pd.Series:
    """Which cells hold something (not NaN, not blank text)."""
    if pd.api.types.is_numeric_dtype(column):
        return column.notna()
    return column.notna() & (column.astype(str).str.strip() != "")


def _drop_blank(table: pd.DataFrame) -> tuple[pd.DataFrame, pd.Series]:
    """Strip ids, drop blank lines and return the table with each row's line number."""
    table = table.copy()
    table["id"] = table["id"].fillna("").astype(str).str.strip()
    lines = pd.Series(table.index + 2, index=table.index)
    keep = table["id"] != ""
    for c in table.columns.drop("id"):
        keep |= _filled(table[c])
    return table[keep], lines[keep]


def _check_ids(path: Path, table: pd.DataFrame, lines: pd.Series, hint: str) -> None:
    """Every row has an id and no id appears twice (the last row would silently win)."""
    ids = table["id"]
    empty = table.index[ids == ""]
    if len(empty):
        raise UserError(f"{path}: empty id on line(s) "
                        f"{', '.join(str(lines[r]) for r in empty[:_SHOW])}"
                        f"{' and more' if len(empty) > _SHOW else ''}; expected the sample's "
                        "id on every row")
    dup = ids[ids.duplicated(keep=False)]
    if len(dup):
        groups = dup.groupby(dup, sort=False).groups
        shown = "; ".join(f"{i!r} on lines {', '.join(str(lines[r]) for r in rows[:_SHOW])}"
                          f"{', ...' if len(rows) > _SHOW else ''}"
                          for i, rows in list(groups.items())[:_SHOW])
        more = f" and {len(groups) - _SHOW} more" if len(groups) > _SHOW else ""
        raise UserError(f"{path}: duplicate id(s): {shown}{more}; expected each id once {hint}")


def _read_labels(path: Path) -> tuple[pd.DataFrame, pd.Series, np.ndarray, dict[str, int]]:
    """labels.csv → (table, line numbers, class indices, class → index)."""
    expected = "columns id,label with one row per sample"
    table = _read_csv(path, expected, dtype=str, keep_default_na=False)
    if not {"id", "label"} <= set(table.columns):
        raise UserError(f"{path}: expected columns id,label, found {list(table.columns)}")
    table, lines = _drop_blank(table)
    if table.empty:
        raise UserError(f"{path}: no rows (header only); expected {expected}")
    _check_ids(path, table, lines, "(one label per sample)")
    label = table["label"].astype(str).str.strip()
    empty = table.index[label == ""]
    if len(empty):
        raise UserError(f"{path}: empty label on {_where(lines, table['id'], empty)}; expected "
                        "a label for every sample (drop the row to leave the sample out)")
    integer = label.str.fullmatch(_INTEGER)
    if integer.all():
        numbers = label.map(int)
        classes = {str(v): k for k, v in enumerate(sorted(numbers.unique()))}
        names = numbers.map(str)
    elif integer.any():
        odd = table.index[~integer]
        example = label[integer].iloc[0]
        verb = "is not an integer" if len(odd) == 1 else "are not integers"
        raise UserError(f"{path}: {_where(lines, table['id'], odd, label, 'label')} {verb}, "
                        f"but other labels are (e.g. {example!r}); expected integers "
                        "throughout or class names throughout")
    else:
        classes = {c: k for k, c in enumerate(sorted(label.unique()))}
        names = label
    if len(classes) < 2:
        raise UserError(f"{path}: every sample has label {next(iter(classes))!r}; "
                        "classification needs at least two classes")
    return table, lines, names.map(classes).to_numpy(np.int64), classes


def _read_modality(path: Path, index: pd.Index, label_file: Path
                   ) -> tuple[np.ndarray, np.ndarray, int]:
    """One ``<L>_<name>.csv`` → (features [N, F] with zero rows where missing, observed, F)."""
    expected = "an id column followed by numeric feature columns, one row per sample"
    header = _read_csv(path, expected, nrows=0)
    if "id" not in header.columns:
        raise UserError(f"{path}: no id column, found {list(header.columns)[:5]}; "
                        f"expected {expected}")
    columns = [c for c in header.columns if c != "id"]
    if not columns:
        raise UserError(f"{path}: only an id column; expected {expected}")
    table = _read_csv(path, expected, dtype={"id": str}, keep_default_na=False,
                      na_values={c: list(_EMPTY) for c in columns})
    table, lines = _drop_blank(table)
    if table.empty:
        raise UserError(f"{path}: no rows (header only); expected {expected}")
    _check_ids(path, table, lines,
               "(leave a sample out, or its row empty, to mark the modality missing)")
    ids = table["id"]
    rows = index.get_indexer(ids)
    unknown = table.index[rows < 0]
    if len(unknown):
        raise UserError(f"{path}: {len(unknown)} id(s) not in {label_file.name}: "
                        f"{_where(lines, ids, unknown)}; expected only ids listed there")
    values = table[columns].copy()
    for c in columns:
        if not pd.api.types.is_numeric_dtype(values[c]):
            number = pd.to_numeric(values[c], errors="coerce")
            bad = values.index[number.isna() & _filled(values[c])]
            if len(bad):
                raise UserError(f"{path}: non-numeric feature column {c!r}: "
                                f"{_where(lines, ids, bad, values[c], 'value')}; expected "
                                "numbers (an empty cell marks a missing value)")
            values[c] = number
    x = values.to_numpy(dtype=np.float64)
    empty_row = np.isnan(x).all(1)
    partial = table.index[~empty_row & ~np.isfinite(x).all(1)]
    if len(partial):
        raise UserError(f"{path}: empty or infinite feature(s) in an otherwise filled row on "
                        f"{_where(lines, ids, partial)}; expected every feature of a row, or "
                        "none to mark the modality missing for that sample")
    features = np.zeros((len(index), len(columns)), dtype=np.float32)
    observed = np.zeros(len(index), dtype=bool)
    features[rows[~empty_row]] = x[~empty_row]
    observed[rows[~empty_row]] = True
    return features, observed, len(columns)


def read_folder(path: str | Path, order: str | None = None) -> FolderData:
    """Read the layout above, with messages that name the bad file and line."""
    root = Path(path)
    if not root.is_dir():
        raise FileNotFoundError(f"data folder {root} does not exist; expected a folder with "
                                "labels.csv and one <L>_<name>.csv per modality")
    label_file = root / "labels.csv"
    if not label_file.is_file():
        raise FileNotFoundError(f"{label_file} is missing; expected columns id,label")
    labels, _, codes, classes = _read_labels(label_file)
    files = sorted(p for p in root.glob("*_*.csv") if p.name != "labels.csv")
    if not files:
        raise UserError(f"data folder {root}: no modality file found; expected files named "
                        "<L>_<name>.csv, e.g. I_image.csv")
    by_letter: dict[str, Path] = {}
    for p in files:
        if not p.is_file():
            raise UserError(f"{p}: is a folder, but its name is that of a modality file; "
                            "expected a CSV file (rename or move the folder)")
        letter = p.name.split("_", 1)[0]
        if len(letter) != 1 or not letter.isalpha():
            raise UserError(f"{p}: modality files are named <L>_<name>.csv with a one-letter "
                            "code before the underscore")
        if letter in by_letter:
            raise UserError(f"{p}: letter {letter!r} is already used by {by_letter[letter]}")
        by_letter[letter] = p
    letters = order or "".join(by_letter)
    if sorted(letters) != sorted(by_letter):
        raise UserError(f"data folder {root}: order {letters!r} must list exactly the "
                        f"modality letters found ({''.join(by_letter)!r})")
    ids = labels["id"].to_numpy(dtype=str)
    index = pd.Index(ids)
    modalities, features = [], {}
    observed = np.zeros((len(ids), len(letters)), dtype=bool)
    for j, letter in enumerate(letters):
        p = by_letter[letter]
        features[letter], observed[:, j], width = _read_modality(p, index, label_file)
        modalities.append(Modality(p.stem.split("_", 1)[1], letter, (width,), "vector"))
    keep = observed.any(1)
    if not keep.all():
        left = ids[~keep]
        logger.warning("%s: %d id(s) appear in no modality file and are left out of the data "
                       "and of every split (e.g. %s)", label_file, len(left),
                       ", ".join(repr(str(i)) for i in left[:_SHOW]))
        ids, codes, observed = ids[keep], codes[keep], observed[keep]
        features = {c: x[keep] for c, x in features.items()}
    raw = RawArrays(modalities=tuple(modalities), features=features, observed=observed,
                    labels=codes, ids=ids, class_names=tuple(classes))
    read = (("labels.csv", label_file), *((by_letter[c].name, by_letter[c]) for c in letters))
    return FolderData(raw=raw, classes=classes, files=read)


def standardize(raw: RawArrays, train: np.ndarray) -> RawArrays:
    """Standardise each feature with the training samples that observe its modality.

    Statistics come from the training part only, so validation and test stay unseen; a
    constant feature keeps std 1, and missing rows stay zero.
    """
    features = {}
    for j, m in enumerate(raw.modalities):
        x = raw.features[m.letter].astype(np.float64)
        seen = np.asarray(train)[raw.observed[np.asarray(train), j]]
        if len(seen) == 0:
            logger.warning("modality %s (%s): no training sample observes it; its features are "
                           "left unstandardised", m.letter, m.name)
            features[m.letter] = raw.features[m.letter]
            continue
        mean, std = x[seen].mean(0), x[seen].std(0)
        x = (x - mean) / np.where(std > 0, std, 1.0)
        x[~raw.observed[:, j]] = 0.0
        features[m.letter] = x.astype(np.float32)
    return replace(raw, features=features)
