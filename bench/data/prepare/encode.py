"""The released ADNI table pipeline: latest row per participant, merge, and feature encoding.

Mirrors ``process_num_cat_cols`` and the merge of the released
``data/adni/clinical/clinical_preprocess.py`` (the biospecimen script holds a copy), so the
files it writes carry the same columns and values. Two of its quirks change numbers; each is
reproduced by default and corrected when its name is in ``fixes`` (:data:`QUIRKS` in
:mod:`bench.data.prepare.adni` has the lines).
"""

from __future__ import annotations

import logging
import warnings

import numpy as np
import pandas as pd
from sklearn.preprocessing import KBinsDiscretizer, MinMaxScaler

from bench.data.prepare.raw import RawInputError, parse_dates

logger = logging.getLogger(__name__)

#: A value with one of these characters makes a text column categorical (released rule).
TEXT_PATTERN = r"[-:\sa-zA-Z]"
#: Categorical columns with this many distinct values or more are dropped (released rule).
MAX_LEVELS = 1000
DATE_BINS = 5


def latest_per_participant(table: pd.DataFrame) -> pd.DataFrame:
    """One row per PTID: for each column, the latest non-missing value by ``UPDATE_STAMP``.

    The released ``sort_values('UPDATE_STAMP').groupby('PTID').apply(ffill().bfill()
    .iloc[-1])`` keeps exactly that; rows with equal stamps keep their file order here (a
    stable sort), where the released quicksort leaves their order unspecified.
    """
    ordered = table.sort_values("UPDATE_STAMP", kind="mergesort", na_position="last")
    return ordered.groupby("PTID", sort=True).last().reset_index()


def merge_tables(tables: list[pd.DataFrame]) -> pd.DataFrame:
    """Outer merge on PTID; a column several tables share takes the first table's value
    where present, else the next one's; columns every table has (RID, VISCODE,
    UPDATE_STAMP, …) are dropped, as the released scripts do."""
    common = set.intersection(*(set(t.columns) for t in tables)) - {"PTID"}
    merged = tables[0]
    for table in tables[1:]:
        merged = merged.merge(table, on="PTID", how="outer", suffixes=("", "_dup"))
        for col in table.columns:
            if col != "PTID" and f"{col}_dup" in merged.columns:
                other = merged[f"{col}_dup"]  # combine_first, without its all-NaN warning
                merged[col] = merged[col].where(merged[col].notna(), other)
                merged = merged.drop(columns=[f"{col}_dup"])
    return merged.drop(columns=sorted(common))


def _kinds(df: pd.DataFrame, fixes: frozenset[str]) -> tuple[list[str], list[str], list[str]]:
    """Numerical, categorical and date columns by the released rules.

    Quirk ``gap-makes-categorical``: a text column (e.g. ``ABETA`` with ``>1700``) is tested
    for letters as ``astype(str)``, where a gap reads ``'nan'``, so any such column with a
    gap becomes categorical; fixed: only the values present are tested.
    """
    numerical, categorical, dates = [], [], []
    for col in df.columns:
        series = df[col]
        if pd.api.types.is_integer_dtype(series) or pd.api.types.is_float_dtype(series):
            (categorical if series.nunique() <= 2 else numerical).append(col)
        elif pd.api.types.is_datetime64_any_dtype(series) or "DATE" in str(col).upper():
            dates.append(col)
        elif (series.dropna() if "gap-makes-categorical" in fixes else series) \
                .astype(str).str.contains(TEXT_PATTERN).any():
            categorical.append(col)
        else:
            numerical.append(col)
    return numerical, categorical, dates


def encode(df: pd.DataFrame, fill: bool, fixes: frozenset[str], source: str) -> pd.DataFrame:
    """The released encoding of a PTID-indexed table: numerical columns min–max scaled to
    [−1, 1], categorical ones one-hot as ±1, date columns one-hot in five uniform bins.

    ``fill`` is the ``_mean`` file's imputation. Quirks (reproduced unless fixed):
    ``mean-fill`` — numerical gaps take the *first* column's mean, not their own;
    ``unfilled-categoricals`` — the unfilled file still fills categorical and date gaps
    with the mode (the released ``initial_filling != 'None'`` compares ``None`` with a
    string, so it is always true).
    """
    numerical, categorical, dates = _kinds(df, fixes)
    parts = []
    fill_levels = fill or "unfilled-categoricals" not in fixes
    if numerical:
        num = pd.DataFrame(index=df.index)
        for col in numerical:
            text = df[col].astype(str).str.replace("<", "").str.replace(">", "")
            values = pd.to_numeric(text.where(df[col].notna()), errors="coerce")
            bad = df[col].notna() & values.isna()
            if bad.any():
                raise RawInputError(f"{source}: column {col} mixes numbers with values that "
                                    f"are not numbers, e.g. {df[col][bad].iloc[0]!r}")
            num[col] = values
        scaled = MinMaxScaler(feature_range=(-1, 1)).fit_transform(num.to_numpy(float))
        num = pd.DataFrame(scaled, columns=numerical, index=df.index)
        if fill and num.isna().to_numpy().any():
            num = num.fillna(num.mean() if "mean-fill" in fixes else num.mean().iloc[0])
        parts.append(num)
    levels = df[categorical].loc[:, df[categorical].nunique() < MAX_LEVELS] if categorical \
        else df[[]]
    if levels.shape[1]:
        gaps = levels.isna()
        if fill_levels and gaps.to_numpy().any():
            levels = levels.fillna(levels.mode().iloc[0])
        onehot = pd.get_dummies(levels, columns=list(levels.columns))
        onehot = onehot.astype(np.int64) * 2 - 1
        if not fill_levels:
            onehot = onehot.astype(float)
            for col in levels.columns:
                mine = [c for c in onehot.columns if c.startswith(f"{col}_")]
                onehot.loc[gaps[col].to_numpy(), mine] = np.nan
        parts.append(onehot)
    if dates:
        parts.append(_date_bins(df[dates], fill_levels, source))
    if not parts:
        raise RawInputError(f"{source}: no feature column left after the merge")
    out = pd.concat(parts, axis=1)
    out.index = df.index
    return out


def _date_bins(dates: pd.DataFrame, fill: bool, source: str) -> pd.DataFrame:
    """Each date column as five one-hot uniform bins over its range (0/1; NaN where the
    date is missing and not filled)."""
    parsed = pd.DataFrame({c: parse_dates(dates[c], source, c) for c in dates.columns},
                          index=dates.index)
    if fill and parsed.isna().to_numpy().any():
        parsed = parsed.fillna(parsed.mode().iloc[0])
    out = []
    for col in parsed.columns:
        present = parsed[col].dropna()
        block = pd.DataFrame(index=dates.index)
        if len(present):
            seconds = (present.astype("datetime64[ns]").astype("int64") // 10**9).to_frame()
            binner = KBinsDiscretizer(n_bins=DATE_BINS, encode="onehot-dense",
                                      strategy="uniform")
            with warnings.catch_warnings():  # a constant column keeps one bin, as named below
                warnings.simplefilter("ignore", UserWarning)
                binned = binner.fit_transform(seconds.to_numpy())
            block = block.join(pd.DataFrame(
                binned, index=present.index,
                columns=[f"{col}_BIN{i}" for i in range(binned.shape[1])]))
        out.append(block)
    return pd.concat(out, axis=1)
