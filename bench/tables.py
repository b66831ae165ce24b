"""Result tables: ``mean ± std`` over seeds, rows = combinations, columns = models."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
from tabulate import tabulate

from bench.data.core import combinations

METRICS = ("test_acc", "test_f1", "test_auc", "val_acc", "val_f1", "val_auc")


def select_runs(df: pd.DataFrame, dataset: str | None = None,
                profile: str | None = None) -> tuple[pd.DataFrame, str, str]:
    """Successful runs of one data set and profile (default: those of the latest run)."""
    ok = df[df["status"] == "ok"]
    if ok.empty:
        raise ValueError("the store holds no successful run yet")
    dataset = dataset or ok["dataset"].iloc[-1]
    ok = ok[ok["dataset"] == dataset]
    if ok.empty:
        raise ValueError(f"no successful run on data set {dataset!r}; stored data sets: "
                         f"{sorted(df['dataset'].unique())}")
    profile = profile or ok["profile"].iloc[-1]
    ok = ok[ok["profile"] == profile]
    if ok.empty:
        raise ValueError(f"no successful {dataset!r} run with profile {profile!r}")
    return ok, dataset, profile


def _column_labels(df: pd.DataFrame) -> pd.Series:
    """Model name, plus the settings that differ when one model ran with several settings on
    the same combination (settings a model derives per combination do not split it)."""
    labels = df["model"].copy()
    settings = df["hparams"].map(lambda h: json.dumps(h, sort_keys=True))
    for _, group in df.groupby("model"):
        varying: set[str] = set()
        for _, cell in group.groupby("combo"):
            dicts = [json.loads(s) for s in settings[cell.index].unique()]
            if len(dicts) > 1:
                keys = set().union(*dicts)
                varying |= {k for k in keys if len({str(d.get(k)) for d in dicts}) > 1}
        if varying:
            labels[group.index] = [
                f"{m} ({', '.join(f'{k}={h.get(k)}' for k in sorted(varying))})"
                for m, h in zip(group["model"], group["hparams"])]
    return labels


def combo_order(combos: list[str]) -> list[str]:
    """The paper's row order: fewer modalities first, ``itertools`` order within a size."""
    letters = max(combos, key=len)
    for c in combos:
        letters += "".join(ch for ch in c if ch not in letters)
    rank = {c: i for i, c in enumerate(combinations(letters))}
    return sorted(combos, key=lambda c: (len(c), rank.get(c, 0)))


def pivot(df: pd.DataFrame, metric: str = "test_acc") -> pd.DataFrame:
    """``mean ± std`` in percent (population std over seeds, as the paper), with seed counts."""
    if metric not in METRICS:
        raise ValueError(f"unknown metric {metric!r}; choose one of {', '.join(METRICS)}")
    df = df.assign(column=_column_labels(df), value=df[metric] * 100.0)
    stats = df.groupby(["combo", "column"])["value"].agg(
        mean="mean", std=lambda v: float(np.std(v, ddof=0)), n="count")
    cells = stats.apply(lambda r: f"{r['mean']:.2f} ± {r['std']:.2f}", axis=1)
    table = cells.unstack("column").reindex(combo_order(list(stats.index.unique("combo"))))
    order = [c for c in dict.fromkeys(df["column"]) if c in table.columns]
    return table[order].fillna("–")


def render(table: pd.DataFrame, fmt: str = "markdown") -> str:
    """The table as Markdown (GitHub pipes) or CSV."""
    if fmt == "csv":
        return table.to_csv()
    if fmt == "markdown":
        return tabulate(table, headers="keys", tablefmt="github", stralign="center")
    raise ValueError(f"unknown format {fmt!r}; choose markdown or csv")
