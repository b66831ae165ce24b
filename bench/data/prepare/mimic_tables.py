"""The MIMIC-IV tables ``prepare mimic`` reads: where each lives, which columns, how they
parse, and a chunked reader for the large ones (labevents has about 120 million rows).

Every error names the file and the column (:class:`bench.data.prepare.raw.RawInputError`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
from tqdm import tqdm

from bench.data.prepare.raw import (
    RawInputError,
    canonical_columns,
    find_one,
    read_csv,
    refuse_unparsed,
)

#: Rows per chunk of a large table (memory stays bounded on the real labevents).
CHUNK_ROWS = 1_000_000


@dataclass(frozen=True)
class Table:
    """One MIMIC-IV table: where it lives, the columns read, and how each is parsed."""

    stem: str
    columns: tuple[str, ...]
    numbers: tuple[str, ...] = ()
    times: tuple[str, ...] = ()
    text: tuple[str, ...] = ()

    @property
    def what(self) -> str:
        cols = ", ".join(c.lower() for c in self.columns)
        return f"MIMIC-IV {self.stem}.csv or .csv.gz with columns {cols}"

    def find(self, raw: Path) -> Path:
        name = self.stem.split("/")[-1]
        return find_one(raw, (f"{name}.csv", f"{name}.csv.gz"), self.what)  # or raises


TABLES = {
    "patients": Table("hosp/patients", ("SUBJECT_ID", "DOD"), ("SUBJECT_ID",), ("DOD",)),
    "admissions": Table("hosp/admissions", ("SUBJECT_ID", "HADM_ID", "DISCHTIME",
                                            "HOSPITAL_EXPIRE_FLAG"),
                        ("SUBJECT_ID", "HADM_ID", "HOSPITAL_EXPIRE_FLAG"), ("DISCHTIME",)),
    "labevents": Table("hosp/labevents", ("HADM_ID", "ITEMID", "CHARTTIME", "VALUENUM"),
                       ("HADM_ID", "ITEMID", "VALUENUM"), ("CHARTTIME",)),
    "d_labitems": Table("hosp/d_labitems", ("ITEMID", "LABEL"), ("ITEMID",), text=("LABEL",)),
    "diagnoses_icd": Table("hosp/diagnoses_icd", ("HADM_ID", "ICD_CODE", "ICD_VERSION"),
                           ("HADM_ID", "ICD_VERSION"), text=("ICD_CODE",)),
    "discharge": Table("note/discharge", ("HADM_ID", "CHARTTIME", "TEXT"), ("HADM_ID",),
                       ("CHARTTIME",), ("TEXT",)),
}


def read_table(path: Path, table: Table,
               keep: Callable[[pd.DataFrame], pd.Series] | None = None) -> Iterator[pd.DataFrame]:
    """The table's columns (upper-case names) in chunks of CHUNK_ROWS rows: numbers parsed,
    rows outside ``keep`` dropped, then times parsed (a value that is neither is an error
    naming the file and the column); a progress bar follows the file's bytes."""
    first = read_csv(path, table.what, nrows=1)  # empty, header-only, undecodable
    canonical_columns(first, path, {c: (c,) for c in table.columns})
    header = {str(c).strip().upper(): c for c in first.columns}
    names = {header[c]: c for c in table.columns}
    gz = path.name.lower().endswith(".gz")
    with open(path, "rb") as fh, tqdm(total=path.stat().st_size, unit="B", unit_scale=True,
                                      desc=path.name, leave=False) as bar:
        try:
            for chunk in pd.read_csv(fh, compression="gzip" if gz else None, usecols=list(names),
                                     dtype={header[c]: str for c in table.text},
                                     chunksize=CHUNK_ROWS):
                bar.update(fh.tell() - bar.n)
                chunk = chunk.rename(columns=names)
                chunk = chunk.assign(**{c: refuse_unparsed(chunk[c], pd.to_numeric(
                    chunk[c], errors="coerce"), path, c.lower(), "numbers") for c in table.numbers})
                if keep is not None:
                    chunk = chunk[keep(chunk)]
                yield chunk.assign(**{c: refuse_unparsed(chunk[c], pd.to_datetime(
                    chunk[c], errors="coerce", format="ISO8601"), path, c.lower(),
                    "ISO dates (YYYY-MM-DD[ HH:MM:SS])") for c in table.times})
        except (pd.errors.ParserError, UnicodeDecodeError, OSError, EOFError) as exc:
            line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise RawInputError(f"{path} could not be read as CSV ({line}); expected "
                                f"{table.what}") from None


def whole(path: Path, table: Table) -> pd.DataFrame:
    return pd.concat(list(read_table(path, table)), ignore_index=True)


def examples(values: pd.Series) -> list[str]:
    return values.astype(str).unique()[:3].tolist()


def unmatched(path: Path, column: str, admissions: Path) -> RawInputError:
    return RawInputError(f"{path}: no {column} matches a cohort admission (each patient's last "
                         f"admission in {admissions.name}); are both tables from the same "
                         "MIMIC-IV download?")
