"""ADNI's study tables: diagnosis labels, clinical and biospecimen features.

Follows the released ``data/adni/clinical/clinical_preprocess.py`` and
``data/adni/biospecimen/biospecimen_preprocess.py`` of the Flex-MoE code; where they have a
quirk that changes numbers, the default keeps it and a fix (``--fix NAME``) corrects it.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd

from bench.data.prepare.encode import encode, latest_per_participant, merge_tables
from bench.data.prepare.raw import RawInputError, canonical_columns, find_one, parse_dates, read_csv

logger = logging.getLogger(__name__)

CLINICAL = ("MEDHIST", "NEUROEXM", "PTDEMOG", "RECCMEDS", "VITALS")
BIOSPECIMEN = ("APOERES", "UPENNBIOMK_ROCHE_ELECSYS")
DIAGNOSIS = "DXSUM_PDXCONV"
#: Column spellings seen across ADNI download dates (matched with case ignored).
PHASE = ("PHASE", "COLPROT")
#: Older DXSUM downloads hold the diagnosis as DXCURREN (ADNI 1: 1 NL, 2 MCI, 3 AD) and
#: DXCHANGE (ADNI GO/2: 1–9, stable or converted, mapped to the current diagnosis).
DXCHANGE = {1: 1, 7: 1, 9: 1, 2: 2, 4: 2, 8: 2, 3: 3, 5: 3, 6: 3}


def table_patterns(name: str) -> tuple[str, ...]:
    """File names of an ADNI table, with or without its download date, plain or gzip."""
    return tuple(f"{name}{tail}{ext}" for tail in ("", "_*") for ext in (".csv", ".csv.gz"))


def find_table(raw: Path, name: str, required: bool = True) -> Path | None:
    return find_one(raw, table_patterns(name), f"the ADNI table {name} (e.g. "
                    f"{name}_09May2024.csv)", required=required)


def read_diagnosis(path: Path) -> pd.DataFrame:
    """DXSUM as (PTID, DIAGNOSIS) rows, DIAGNOSIS 1 CN / 2 MCI / 3 Dementia or NaN.

    ADNI's negative codes (−4 "not applicable", −1) count as missing, like an empty cell.
    """
    table = canonical_columns(read_csv(path, "the diagnosis table DXSUM_PDXCONV"), path,
                              {"PTID": ("PTID",)})
    if "DIAGNOSIS" in table.columns:
        diagnosis = table["DIAGNOSIS"]
    elif {"DXCURREN", "DXCHANGE"} & set(table.columns):
        current = table.get("DXCURREN", pd.Series(np.nan, index=table.index))
        change = table.get("DXCHANGE", pd.Series(np.nan, index=table.index))
        diagnosis = pd.to_numeric(current, errors="coerce").combine_first(
            pd.to_numeric(change, errors="coerce").map(DXCHANGE))
    else:
        raise RawInputError(f"{path}: no column DIAGNOSIS (nor the older DXCURREN / "
                            f"DXCHANGE); expected the diagnosis 1 CN, 2 MCI, 3 Dementia")
    values = pd.to_numeric(diagnosis, errors="coerce")
    text = diagnosis.notna() & values.isna()
    if text.any():
        raise RawInputError(f"{path}: column DIAGNOSIS has non-numeric values, e.g. "
                            f"{diagnosis[text].iloc[0]!r}; expected 1, 2 or 3")
    values = values.where(values >= 0)
    odd = values.notna() & ~values.isin([1, 2, 3])
    if odd.any():
        raise RawInputError(f"{path}: column DIAGNOSIS has values other than 1, 2, 3, e.g. "
                            f"{values[odd].iloc[0]!r}")
    return pd.DataFrame({"PTID": table["PTID"], "DIAGNOSIS": values.astype(float)})


def labels(diagnosis: pd.DataFrame) -> tuple[pd.DataFrame, set[str]]:
    """``label.csv``'s rows and the participants whose tables are kept.

    As released: a participant with any row of missing diagnosis is dropped; of the others
    (whose rows the clinical and biospecimen tables keep), only those whose diagnosis never
    changes are labelled, in DXSUM's order of first appearance.
    """
    excluded = set(diagnosis.loc[diagnosis["DIAGNOSIS"].isna(), "PTID"])
    kept = set(diagnosis["PTID"].dropna()) - excluded
    rows = diagnosis[diagnosis["PTID"].isin(kept)]
    stable = rows.groupby("PTID")["DIAGNOSIS"].nunique()
    stable = set(stable.index[stable == 1])
    out = rows[rows["PTID"].isin(stable)][["PTID", "DIAGNOSIS"]].drop_duplicates("PTID")
    if out.empty:
        raise RawInputError("no participant has a diagnosis that never changes (DXSUM): "
                            "nothing to label")
    return out.reset_index(drop=True), kept


def _read_study_table(path: Path, name: str) -> pd.DataFrame:
    table = canonical_columns(read_csv(path, f"the ADNI table {name}"), path,
                              {"PTID": ("PTID",), "UPDATE_STAMP": ("UPDATE_STAMP",)})
    table["UPDATE_STAMP"] = parse_dates(table["UPDATE_STAMP"], path, "UPDATE_STAMP")
    return table


def _encode_pair(tables: list[pd.DataFrame], kept: set[str], fixes: frozenset[str],
                 what: str, files: list[Path]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The merged table of ``kept`` participants, unfilled and mean-filled."""
    merged = merge_tables([latest_per_participant(t) for t in tables])
    merged = merged[merged["PTID"].isin(kept)].set_index("PTID")
    if merged.empty:
        names = ", ".join(p.name for p in files)
        raise RawInputError(f"{what}: no PTID of {names} matches a participant of the "
                            f"diagnosis table (column PTID); are they from the same download?")
    source = f"{what} ({', '.join(p.name for p in files)})"
    return encode(merged, False, fixes, source), encode(merged, True, fixes, source)


def clinical(paths: list[Path], kept: set[str], fixes: frozenset[str]) \
        -> tuple[pd.DataFrame, pd.DataFrame]:
    """``clinical_merged.csv`` and ``clinical_merged_mean.csv`` from the five tables."""
    tables = [_read_study_table(p, n) for p, n in zip(paths, CLINICAL)]
    return _encode_pair(tables, kept, fixes, "clinical", paths)


def upenn_ptids(apoe: pd.DataFrame, upenn: pd.DataFrame, diagnosis: pd.DataFrame,
                fixed: bool) -> pd.Series:
    """The PTID of each UPENNBIOMK row, which has none of its own.

    Released: the key is the last character of the phase plus the RID as text
    (``ADNI2`` + 4 → ``2_4``), looked up among APOERES's rows, so a measurement taken in
    another phase than the genotyping finds nothing and the row is lost. Fixed
    (``rid-mapping``): by RID alone, from APOERES and DXSUM.
    """
    if fixed:
        pairs = pd.concat([apoe[["RID", "PTID"]], diagnosis[["RID", "PTID"]]]).dropna()
        pairs = pairs.assign(RID=pd.to_numeric(pairs["RID"], errors="coerce")).dropna()
        lookup = pairs.drop_duplicates("RID", keep="last").set_index("RID")["PTID"]
        return pd.to_numeric(upenn["RID"], errors="coerce").map(lookup)

    def keys(table: pd.DataFrame) -> pd.Series:
        valid = table["PHASE"].notna() & table["RID"].notna()
        key = table["PHASE"].astype(str).str[-1] + "_" + table["RID"].astype(str)
        return key.where(valid)

    apoe_keys = keys(apoe)
    lookup = pd.Series(apoe["PTID"].to_numpy(), index=apoe_keys.to_numpy())[apoe_keys.notna()
                                                                            .to_numpy()]
    lookup = lookup[~lookup.index.duplicated(keep="last")]
    return keys(upenn).map(lookup)


def biospecimen(apoe_path: Path, upenn_path: Path, diagnosis_path: Path, kept: set[str],
                fixes: frozenset[str]) -> tuple[pd.DataFrame, pd.DataFrame, dict]:
    """``biospecimen_merged{,_mean}.csv`` from APOERES and UPENNBIOMK_ROCHE_ELECSYS, and the
    count of UPENNBIOMK rows the RID → PTID mapping lost."""
    apoe = _read_study_table(apoe_path, "APOERES")
    apoe = canonical_columns(apoe, apoe_path, {"RID": ("RID",), "PHASE": PHASE})
    upenn = canonical_columns(read_csv(upenn_path, "the ADNI table UPENNBIOMK_ROCHE_ELECSYS"),
                              upenn_path, {"RID": ("RID",), "PHASE": PHASE,
                                           "UPDATE_STAMP": ("UPDATE_STAMP",)})
    upenn["UPDATE_STAMP"] = parse_dates(upenn["UPDATE_STAMP"], upenn_path, "UPDATE_STAMP")
    dx = canonical_columns(read_csv(diagnosis_path, "the diagnosis table"), diagnosis_path,
                           {"PTID": ("PTID",), "RID": ("RID",)})
    upenn["PTID"] = upenn_ptids(apoe, upenn, dx, "rid-mapping" in fixes)
    lost = int(upenn["PTID"].isna().sum())
    if lost:
        logger.warning("%s: %d of %d rows match no PTID through the %s and are left out",
                       upenn_path.name, lost, len(upenn),
                       "RID" if "rid-mapping" in fixes else
                       "released phase + RID key (--fix rid-mapping maps by RID alone)")
    unfilled, mean = _encode_pair([apoe, upenn.dropna(subset=["PTID"])], kept, fixes,
                                  "biospecimen", [apoe_path, upenn_path])
    return unfilled, mean, {"upenn_rows": len(upenn), "upenn_rows_without_ptid": lost}
