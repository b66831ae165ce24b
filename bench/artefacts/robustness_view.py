"""The test-time robustness table and the tidy data behind its figure.

Each run of a robustness artefact (``bench.artefacts.catalogue``: every model on its family's full
combination) stored, besides its own test metrics, those on the same test patients with each
proper subset of its modalities removed (``bench.training.robustness``). Here they are grouped
by how many modalities were removed: one number per model and count, the mean over the removal
subsets of that size and the seeds, so the table and the figure show the same numbers.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from bench.artefacts.spec import ArtefactCells, model_label
from bench.artefacts.views import caption, runs, summarise
from bench.rendering import plots
from bench.rendering.tables import Panel, TableView
from bench.training.metrics import METRICS, Metric, metric_names

#: Footnote of a finished run stored before test-time metrics were recorded with each run.
STORED_WITHOUT = ("stored without test-time metrics (runs record them since the store's "
                  "robustness column was added): re-run it into a new store")
#: Columns of :func:`robustness_data`; metrics in percent (those declared so).
TIDY = ("model", "seed", "removed", "kept", "n_removed", *metric_names())


def _scale(metric: Metric) -> float:
    return 100.0 if metric.percent else 1.0


def _stored(value: object) -> dict:
    return value if isinstance(value, dict) else {}


def robustness_data(ac: ArtefactCells, df: pd.DataFrame) -> pd.DataFrame:
    """One line per finished run and removal subset (:data:`TIDY`, metrics in percent),
    the run's own test metrics first as ``n_removed`` 0 (``removed`` empty); runs stored
    without test-time metrics give that first line only."""
    frame = runs(ac, df)
    ok = frame[frame["status"] == "ok"]
    lines = []
    for run in ok.itertuples():
        label, seed = model_label(run.model), int(run.seed)
        lines.append({"model": label, "seed": seed, "removed": "", "kept": run.combo,
                      "n_removed": 0, **{m.name: getattr(run, f"test_{m.name}") * _scale(m)
                                         for m in METRICS}})
        for removed, metrics in _stored(getattr(run, "robustness", None)).items():
            lines.append({"model": label, "seed": seed, "removed": removed,
                          "kept": "".join(c for c in run.combo if c not in removed),
                          "n_removed": len(removed),
                          **{m.name: float(metrics.get(m.name, np.nan)) * _scale(m)
                             for m in METRICS}})
    return pd.DataFrame(lines, columns=list(TIDY))


def robustness_curve(data: pd.DataFrame, size: int) -> pd.DataFrame:
    """``model, n_removed, available, mean, std, n``: accuracy (%) per model and number of
    modalities removed from a run of ``size`` modalities, mean and population std over the
    removal subsets and seeds (std NaN for a single value: it says nothing)."""
    stats = data.dropna(subset=["acc"]).groupby(["model", "n_removed"], sort=False)["acc"].agg(
        mean="mean", std=lambda v: float(np.std(v, ddof=0)), n="count").reset_index()
    stats.loc[stats["n"] < 2, "std"] = np.nan
    stats.insert(2, "available", size - stats["n_removed"])
    return stats


def _notes(frame: pd.DataFrame, labels: list[str], columns: list[str]) -> pd.DataFrame:
    """Why each cell is missing or partial: the run's own note for every column (one-class
    flag on the "0 removed" column only), plus runs stored without test-time metrics."""
    own = summarise(frame, ["label"], "test_acc")["note"]
    runs_note = summarise(frame.drop(columns=["test_pred_counts"], errors="ignore"), ["label"],
                          "test_acc")["note"]
    notes = pd.DataFrame("", index=labels, columns=columns)
    for label in labels:
        ok = frame[(frame["label"] == label) & (frame["status"] == "ok")]
        without = sum(not _stored(r) for r in ok.get("robustness", pd.Series(dtype=object)))
        extra = ("" if not without else STORED_WITHOUT if without == len(ok)
                 else f"{without} of {len(ok)} seeds {STORED_WITHOUT}")
        notes.loc[label, columns[0]] = own.get(label, "")
        notes.loc[label, columns[1:]] = "; ".join(
            n for n in (runs_note.get(label, ""), extra) if n)
    return notes


def robustness_view(ac: ArtefactCells, df: pd.DataFrame, profile: str) -> TableView:
    """Rows models, columns the number of modalities removed at test time (0: the run's own
    test accuracy), cells accuracy in percent, mean ± population std over subsets × seeds."""
    art = ac.artefact
    sweep = art.sweeps[0]
    combo = sweep.combos[0]
    frame = runs(ac, df)
    frame["label"] = frame["model"].map(model_label)
    labels = [model_label(m) for m in sweep.models]
    columns = [f"{k} removed" for k in range(len(combo))]
    curve = robustness_curve(robustness_data(ac, df), len(combo))
    curve["column"] = curve["n_removed"].map(lambda k: f"{k} removed")
    mean, std = (curve.pivot(index="model", columns="column", values=v)
                 .reindex(index=labels, columns=columns) for v in ("mean", "std"))
    notes = _notes(frame, labels, columns)
    for table in (mean, std, notes):
        table.index.name, table.columns.name = "model", None
    extra = (f"Each model trained on {combo} is scored on the same test patients with k of "
             "its modalities removed at test time, through its own missing-modality path "
             "and without retraining. Cells: test accuracy (%), mean ± population std over "
             f"the removal subsets of that size and the seeds (C({len(combo)}, k) subsets × "
             "seeds values; '0 removed' is the run's own test accuracy, over seeds; the mean "
             "alone for a single value); best per column in bold, second underlined. The "
             "figure plots the same numbers against the modalities available at test, "
             f"{len(combo)} − k (bars: that std).")
    return TableView(art.id, "Robustness", f"{art.title} on {ac.dataset.name}",
                     caption(ac, frame, profile, extra),
                     [Panel("Reproduced", mean, std, notes, rank="column")])


def write_figure(ac: ArtefactCells, df: pd.DataFrame, out_dir: Path) -> list[Path]:
    """Write the tidy per-subset data as ``<id>-subsets.csv`` and the accuracy-vs-available
    figure (PNG, PDF) under ``out_dir``; return the PNG for the report (none without data)."""
    combo = ac.artefact.sweeps[0].combos[0]
    data = robustness_data(ac, df)
    out_dir.mkdir(parents=True, exist_ok=True)
    data.to_csv(out_dir / f"{ac.artefact.id}-subsets.csv", index=False)
    curve = robustness_curve(data, len(combo))
    if curve.empty:
        return []
    fig = plots.accuracy_vs_available(curve, combo)
    return plots.save_figure(fig, out_dir, ac.artefact.id)[:1]
