"""Finding and reading raw download tables, with one clear message for each way they go wrong.

ADNI renames files (the download date is part of the name) and, between download dates,
some columns (``Phase`` / ``PHASE`` / ``COLPROT``); MIMIC-IV ships ``.csv`` or ``.csv.gz``.
Every reader here names the file and the column it could not find and what it expected.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable
from pathlib import Path

import pandas as pd

from bench.errors import UserError


class RawInputError(UserError):
    """A raw download is missing, empty, unreadable or lacks a column (one line, no trace)."""


def find_one(raw: Path, patterns: Iterable[str], what: str, required: bool = True) -> Path | None:
    """The one file under ``raw`` (searched recursively) whose name matches a pattern.

    Patterns are matched case-insensitively against file names, so ``DXSUM_PDXCONV*.csv``
    finds ``DXSUM_PDXCONV_22Apr2024.csv``. Two matches are an error: which download is meant
    cannot be guessed.
    """
    patterns = tuple(patterns)
    found = sorted(p for p in raw.rglob("*") if p.is_file() and not p.name.startswith(".")
                   and any(fnmatch.fnmatch(p.name.lower(), pat.lower()) for pat in patterns))
    if len(found) > 1:
        names = ", ".join(str(p.relative_to(raw)) for p in found)
        raise RawInputError(f"{raw}: several files match {' or '.join(patterns)} ({what}): "
                            f"{names}; keep one download of each table")
    if not found:
        if required:
            raise RawInputError(f"{raw}: no file matches {' or '.join(patterns)}; expected "
                                f"{what}")
        return None
    return found[0]


def read_csv(path: Path, what: str, **kwargs) -> pd.DataFrame:
    """A CSV (plain or gzip) as a data frame; empty, undecodable or malformed files are one
    line naming the file."""
    if path.is_dir():
        raise RawInputError(f"{path} is a directory; expected {what} (a CSV file)")
    try:
        table = pd.read_csv(path, low_memory=False, **kwargs)
    except pd.errors.EmptyDataError:
        raise RawInputError(f"{path} is empty; expected {what}") from None
    except UnicodeDecodeError as exc:
        raise RawInputError(f"{path} is not UTF-8 text ({exc.reason} at byte {exc.start}); "
                            f"expected {what} as a UTF-8 CSV") from None
    except (pd.errors.ParserError, OSError, EOFError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise RawInputError(f"{path} could not be read as CSV ({first}); expected {what}") \
            from None
    if table.empty:
        raise RawInputError(f"{path} has a header but no rows; expected {what}")
    return table


def canonical_columns(table: pd.DataFrame, path: Path,
                      aliases: dict[str, tuple[str, ...]]) -> pd.DataFrame:
    """Upper-case every column name and rename the first known spelling of each canonical
    column in ``aliases`` (``{"PHASE": ("PHASE", "COLPROT")}``); a missing one is an error
    naming the file, the column and the spellings tried."""
    table = table.rename(columns=lambda c: str(c).strip().upper())
    for name, spellings in aliases.items():
        present = [s for s in spellings if s in table.columns]
        if not present:
            tried = "/".join(spellings)
            raise RawInputError(f"{path}: no column {tried} (case ignored); found "
                                f"{_some(table.columns)}")
        if present[0] != name:
            table = table.drop(columns=[name], errors="ignore").rename(
                columns={present[0]: name})
    return table


def _some(columns: Iterable[str], n: int = 12) -> str:
    columns = list(columns)
    shown = ", ".join(map(str, columns[:n]))
    return f"{shown}, … ({len(columns)} in all)" if len(columns) > n else shown


def parse_dates(values: pd.Series, path: Path | str, column: str) -> pd.Series:
    """Dates of one column; values that are present but not dates are an error naming them
    (and ``path``: the file, or the tables a merged column came from)."""
    return refuse_unparsed(values, pd.to_datetime(values, errors="coerce", format="mixed"),
                           path, column, "dates")


def refuse_unparsed(values: pd.Series, parsed: pd.Series, path: Path | str, column: str,
                    kind: str) -> pd.Series:
    """``parsed``, unless a value present in ``values`` did not parse: then an error naming
    the file, the column, how many and a few of them."""
    bad = values.notna() & parsed.isna()
    if bad.any():
        examples = values[bad].astype(str).unique()[:3].tolist()
        raise RawInputError(f"{path}: column {column} has {int(bad.sum())} value(s) that are "
                            f"not {kind}, e.g. {examples}")
    return parsed
