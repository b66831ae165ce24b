"""The missingness-mechanisms table and the tidy data behind its figure.

The ``mechanisms`` artefact (``bench.artefacts.catalogue``) trains every model on one data
set's full combination with each mechanism × missing rate imposed on the training split
(``bench.data.missingness``), and once with nothing imposed (rate 0, shared by the
mechanisms' curves). The table has the models as rows and rate 0 then mechanism × rate as
columns; the figure draws the same numbers, one panel per mechanism.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pandas as pd

from bench.artefacts.spec import ANY_DEFAULT, ArtefactCells, Sweep, model_label
from bench.artefacts.views import CONTEXT_NOTE, caption, runs, summarise
from bench.data import missingness
from bench.data.load import load_data
from bench.rendering import plots
from bench.rendering.context import CONTEXT, context_metric
from bench.rendering.tables import Panel, TableView

logger = logging.getLogger(__name__)

#: Columns of :func:`mechanisms_data`; accuracy in percent.
TIDY = ("model", "mechanism", "rate", "mean", "std", "n", "note")


def column(sweep: Sweep) -> str:
    """A sweep's column header: ``0 (none)``, or the mechanism and its rate."""
    if sweep.axis == missingness.NONE:
        return "0 (none)"
    return f"{sweep.axis} {sweep.value:g}"


def _stats(ac: ArtefactCells, df: pd.DataFrame) -> pd.DataFrame:
    frame = runs(ac, df)
    frame["label"] = frame["model"].map(model_label)
    return summarise(frame, ["sweep", "label"], "test_acc", 100.0)


def mechanisms_data(ac: ArtefactCells, df: pd.DataFrame) -> pd.DataFrame:
    """:data:`TIDY` lines: test accuracy (%) per model, mechanism and rate, mean and
    population std over seeds; the rate-0 lines appear once under every mechanism."""
    stats = _stats(ac, df).reset_index()
    meta = pd.DataFrame([{"sweep": i, "mechanism": s.axis, "rate": s.value}
                         for i, (s, _) in enumerate(ac.sweeps)])
    order = {model_label(m): i for i, m in enumerate(ac.artefact.sweeps[0].models)}
    tidy = stats.merge(meta, on="sweep").rename(columns={"label": "model"})
    tidy = tidy.assign(place=tidy["model"].map(order)).sort_values(["sweep", "place"])
    base = tidy[tidy["mechanism"] == missingness.NONE]
    parts = [pd.concat([base.assign(mechanism=m), tidy[tidy["mechanism"] == m]])
             for m in dict.fromkeys(tidy["mechanism"]) if m != missingness.NONE]
    if not parts:
        return pd.DataFrame(columns=list(TIDY))
    return pd.concat(parts, ignore_index=True)[list(TIDY)]


def _context_rows(ac: ArtefactCells, columns: list[str]) -> pd.DataFrame:
    """The context lines (``bench.rendering.context``) of each sweep's data, in percent."""
    out = pd.DataFrame(index=[f"({line})" for line in CONTEXT], columns=columns, dtype=float)
    for name, (_, cells) in zip(columns, ac.sweeps):
        if not cells:
            continue
        cell = cells[0]
        found = context_metric(pd.DataFrame([{"dataset": cell.dataset, "combo": cell.combo,
                                              "data_options": cell.data_options,
                                              "split_seed": cell.split_seed}]), "test_acc")
        for line in CONTEXT:
            out.loc[f"({line})", name] = found.get(cell.combo, {}).get(line, float("nan")) * 100
    return out


def _driver(ac: ArtefactCells) -> str:
    """``mar``'s driver modality on this data set, for the caption ("" when it cannot load)."""
    cells = ac.sweeps[0][1] if ac.sweeps else []
    if not cells:
        return ""
    try:
        data = load_data(cells[0].dataset, cells[0].data_options, cells[0].split_seed)
    except (OSError, ValueError, KeyError) as exc:
        logger.warning("no mar driver for the caption: %s", exc)
        return ""
    observed = data.observed[data.splits["train"]].numpy()
    modality = data.modalities[missingness.mar_driver(observed)]
    return f"{modality.letter} ({modality.name})"


def _explain(ac: ArtefactCells) -> str:
    seeds = sorted({c.data_options["missing_seed"] for c in ac.cells
                    if "missing_seed" in c.data_options})
    driver = _driver(ac)
    kept = ac.dataset.options.get("modalities")
    views = (f", by default its views {', '.join(kept)} alone (modalities={kept}: the three "
             "narrowest; the study trains every model ten times, and on all six views MulT "
             "and I2MoE alone cost hours; --dataset mfeat trains on all six)" if kept else "")
    default = (f" {ANY_DEFAULT} is this table's default data set{views}: real and fully "
               "observed, so every missing entry is imposed by the mechanism (--dataset NAME "
               "names another)." if ac.dataset.name == ANY_DEFAULT else "")
    return (f"Columns: the missing rate imposed on the training split by each mechanism "
            f"(missing_seed={', '.join(map(str, seeds)) or 'n/a'}; the expected share of its "
            "observed modality entries dropped, a sample keeping at least one): 0 = nothing "
            "imposed (missing=none), shared by the three mechanisms; mcar drops each modality "
            "of each sample independently; mar keeps the most often observed modality"
            f"{f', here {driver},' if driver else ''} and drops the others more often the "
            "higher its value; mnar drops each modality more often the higher its own value. "
            "Validation and test samples keep the data set's modalities and evaluation rule. "
            "Rows: the paper's ten models and I2MoE on the data set's full combination. "
            "Cells: test accuracy, mean ± population std over seeds (the mean alone for one "
            f"seed), in percent; best per column in bold, second underlined. {CONTEXT_NOTE}"
            f"{default}")


def mechanisms_view(ac: ArtefactCells, df: pd.DataFrame, profile: str) -> TableView:
    """Rows models (then the context lines), columns rate 0 and mechanism × rate."""
    art = ac.artefact
    labels = [model_label(m) for m in art.sweeps[0].models]
    columns = [column(s) for s, _ in ac.sweeps]
    stats = _stats(ac, df)

    def grid(field: str) -> pd.DataFrame:
        table = stats[field].unstack("sweep").reindex(index=labels,
                                                      columns=range(len(columns)))
        table.columns = columns
        return table

    context = _context_rows(ac, columns)
    mean = pd.concat([grid("mean").astype(float), context])
    std = grid("std").reindex(index=mean.index)
    notes = grid("note").reindex(index=mean.index).fillna("")
    for i, reason in ac.skipped.items():
        notes[columns[i]] = f"not run: {reason}"
    for table in (mean, std, notes):
        table.index.name, table.columns.name = "model", None
    frame = runs(ac, df)
    return TableView(art.id, "Mechanisms", f"{art.title} on {ac.dataset.name} (test accuracy, %)",
                     caption(ac, frame, profile, _explain(ac)),
                     [Panel("Reproduced", mean, std, notes, rank="column",
                            unranked=tuple(context.index))])


def write_figure(ac: ArtefactCells, df: pd.DataFrame, out_dir: Path) -> list[Path]:
    """Write the tidy data as ``<id>-curves.csv`` and the accuracy-vs-rate figure (PNG, PDF)
    under ``out_dir``; return the PNG for the report (none without a finished run)."""
    data = mechanisms_data(ac, df)
    out_dir.mkdir(parents=True, exist_ok=True)
    data.to_csv(out_dir / f"{ac.artefact.id}-curves.csv", index=False)
    if not data["mean"].notna().any():
        return []
    return plots.save_figure(plots.accuracy_vs_missing_rate(data), out_dir,
                             ac.artefact.id)[:1]
