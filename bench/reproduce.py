"""Reproduce the paper's tables and figures: plan the runs, train what the store lacks,
render every table and figure, and write the report.

Figures 4 and 5 need a trained Flex-MoE, which the store does not keep: one Flex-MoE is
trained on IGCB with the profile's settings and its first seed (the same cell as in
Table 1) and its ``state_dict`` cached under ``<out>/models/`` in a file named by the cell's
key, so a different setting never reads another's weights and a re-run trains nothing.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from bench import mechanisms_view, plots, presets, registry, robustness_view, significance, views
from bench.config import RunConfig, load_data
from bench.data.core import RunData
from bench.execution import Options
from bench.presets import ArtefactCells
from bench.report import write_report
from bench.runner import GridRows, resolve_device, run_grid
from bench.store import ResultStore, default_store_path, load_results
from bench.tables import TableView, to_csv, to_latex, to_markdown
from bench.train import fit, seed_everything
from flexmoe import analysis

logger = logging.getLogger(__name__)

ANALYSIS_KINDS = ("bank", "experts")
EXPLAIN = {
    "modalities": "Test accuracy (%) averaged over the combinations with that many modalities "
                  "and their seeds; bars: population std over them.",
    "cost": "Forward GFLOP per sample by torch.utils.flop_counter (2 per multiply-add, along "
            "the real MoE routing); bubble area grows with the parameter count; means over "
            "seeds.",
}


@dataclass
class Section:
    """One table or figure as written: its view or figure files, caption and notes; panels
    that belong to it (a metric table's significance tests) are its ``subsections``."""

    id: str
    title: str
    caption: str
    view: TableView | None = None
    figures: list[Path] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    subsections: list[Section] = field(default_factory=list)


def plan(artefacts: list[presets.Artefact], profile: str, datasets: list[str] | None = None,
         overrides: dict[str, Any] | None = None, options: dict[str, Any] | None = None,
         seeds: list[int] | None = None) -> list[ArtefactCells]:
    """Every artefact's cells; fails before any training on a bad name, letter or setting."""
    choice = presets.assign_datasets(artefacts, list(datasets or []), options)
    return [presets.artefact_cells(a, choice[a.family], profile, overrides, options, seeds)
            for a in artefacts]


def train_grid(plans: list[ArtefactCells], store: ResultStore, device: str = "auto",
               executor: Options | None = None) -> GridRows:
    """Run every cell of the tables and sweeps that the store does not hold yet (on a
    cluster's executor the tasks resolve ``device`` on their nodes)."""
    cells = [c for p in plans if p.artefact.kind not in ANALYSIS_KINDS for c in p.cells]
    logger.info("%d distinct run(s) behind %s", len({c.key for c in cells}),
                ", ".join(p.artefact.id for p in plans))
    remote = executor is not None and executor.remote
    rows = run_grid(cells, store, device if remote else str(resolve_device(device)),
                    executor=executor)
    failed = sum(r["status"] != "ok" for r in rows)
    logger.info("%d run(s) trained, %d of them failed (footnoted in the tables)", len(rows),
                failed)
    return rows


def analysis_model(cell: RunConfig, out_dir: Path, device: str = "auto",
                   train: bool = True) -> tuple[torch.nn.Module, RunData] | None:
    """The trained model of ``cell`` and its data: from ``<out>/models/`` when cached, else
    trained now (``train``) and cached atomically; None when neither is possible."""
    path = out_dir / "models" / f"{cell.model}-{cell.combo}-{cell.key}.pt"
    if not train and not path.is_file():
        return None
    dev = resolve_device(device)
    data = load_data(cell.dataset, cell.data_options, cell.split_seed).restrict(cell.combo)
    data = data.to(dev)
    seed_everything(cell.seed)  # as the runner does, so the weights are those of its run
    model = registry.build_model(cell.model, data.spec, cell.hparams).to(dev)
    if path.is_file():
        model.load_state_dict(torch.load(path, map_location=dev, weights_only=True))
        return model, data
    logger.info("training %s on %s %s (seed %d) for Figures 4 and 5", cell.model,
                cell.dataset, cell.combo, cell.seed)
    fit(model, data, seed=cell.seed, **registry.split_hparams(cell.hparams)[0])
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp-{os.getpid()}")
    torch.save(model.state_dict(), tmp)
    os.replace(tmp, path)
    return model, data


def _write_table(view: TableView, out_dir: Path) -> None:
    for suffix, render in ((".md", to_markdown), (".tex", to_latex), (".csv", to_csv)):
        (out_dir / f"{view.id}{suffix}").write_text(render(view))


def _significance_section(ac: ArtefactCells, df: pd.DataFrame, out_dir: Path) -> Section:
    """Friedman and Holm-corrected Wilcoxon tests across the combinations of a metric table,
    on the runs the table shows; the diagram and its data (CSV) beside the table."""
    art = ac.artefact
    result = significance.compare(significance.block_means(views.runs(ac, df), art.metric))
    stem = f"{art.id}-significance"
    section = Section(stem, "Significance across combinations", result.caption(),
                      notes=result.findings() + result.dropped)
    if result.computed:
        result.to_frame().to_csv(out_dir / f"{stem}.csv", index=False)
        section.figures = plots.save_figure(significance.cd_diagram(result), out_dir, stem)[:1]
        section.notes.append(f"Mean ranks and every Holm-adjusted p-value: {stem}.csv.")
    return section


def _figure_section(ac: ArtefactCells, df: pd.DataFrame, profile: str, out_dir: Path,
                    device: str, train: bool) -> Section:
    """Draw one figure artefact, write its data as CSV beside it."""
    art = ac.artefact
    frame = views.runs(ac, df)
    section = Section(art.id, art.title, views.caption(ac, frame, profile))
    if art.kind in ANALYSIS_KINDS:
        if not ac.cells:
            section.notes.append(views.UNREGISTERED + ": flexmoe")
            return section
        cell = ac.cells[0]
        try:
            found = analysis_model(cell, out_dir, device, train)
        except (RuntimeError, ValueError) as exc:  # e.g. a diverging run: say so, go on
            section.notes.append(f"training the Flex-MoE failed: {exc}")
            return section
        if found is None:
            section.notes.append("no trained Flex-MoE cached yet: run_bench.py reproduce "
                                 f"--table {art.id}")
            return section
        model, data = found
        if art.kind == "bank":
            data_frame = analysis.bank_similarity(model, data)
            fig = plots.bank_similarity(data_frame)
        else:
            data_frame = analysis.expert_activation(model, data)
            fig = plots.expert_activation(data_frame, int(cell.hparams["num_experts"]))
        section.caption = (f"Flex-MoE trained once on {cell.combo} (seed {cell.seed}, "
                           f"{cell.hparams.get('epochs')} epochs), analysed on the training "
                           "split, the only one with partial combinations. "
                           + views.caption(ac, frame, profile))
    elif art.kind == "sensitivity":
        data_frame = views.sensitivity_data(ac, df)
        fig = plots.sensitivity(data_frame) if data_frame["mean"].notna().any() else None
        section.notes += [f"{r.axis} = {r.value}: {r.note}" for r in data_frame.itertuples()
                          if r.note]
        section.caption += (" Test accuracy (%), mean ± population std over seeds; other "
                            "settings at the defaults (16 experts, 1 SMoE layer, top-4); "
                            "k SMoE layers means num_layers = 2k − 1 (sparse and dense "
                            "layers alternate); × marks a setting without a result.")
    else:
        data_frame = (views.modalities_data(ac, df) if art.kind == "modalities"
                      else views.cost_data(ac, df))
        fig = (None if data_frame.empty else plots.accuracy_vs_modalities(data_frame)
               if art.kind == "modalities" else plots.accuracy_vs_cost(data_frame))
        frame["label"] = frame["model"].map(presets.model_label)
        stats = views.summarise(frame, ["label"], "test_acc")
        section.notes += [f"{m}: {n}" for m, n in stats["note"].items() if n]
        section.caption += " " + EXPLAIN[art.kind]
    out_dir.mkdir(parents=True, exist_ok=True)
    data_frame.to_csv(out_dir / f"{art.id}.csv", index=False)
    if fig is not None:
        section.figures = plots.save_figure(fig, out_dir, art.id)[:1]
    return section


def render(plans: list[ArtefactCells], df: pd.DataFrame, profile: str, out_dir: Path,
           device: str = "auto", train: bool = True) -> list[Section]:
    """Tables (Markdown, LaTeX, CSV) and figures (PNG, PDF, CSV data) under ``out_dir``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    builders = {"metric": views.metric_view, "ablation": views.ablation_view,
                "complexity": views.complexity_view,
                "robustness": robustness_view.robustness_view,
                "mechanisms": mechanisms_view.mechanisms_view}
    sections = []
    for ac in plans:
        art = ac.artefact
        if art.kind in builders:
            view = builders[art.kind](ac, df, profile)
            _write_table(view, out_dir)
            sections.append(Section(art.id, f"{view.name}: {view.title}", view.caption, view))
            if art.kind == "robustness":  # the table's numbers as a figure, beside it
                sections[-1].figures = robustness_view.write_figure(ac, df, out_dir)
            if art.kind == "mechanisms":  # accuracy vs missing rate, one panel per mechanism
                sections[-1].figures = mechanisms_view.write_figure(ac, df, out_dir)
            if art.kind == "metric":
                sections[-1].subsections.append(_significance_section(ac, df, out_dir))
        else:
            sections.append(_figure_section(ac, df, profile, out_dir, device, train))
    return sections


def fallback_notes(plans: list[ArtefactCells]) -> list[str]:
    """One line per synthetic stand-in in use, with the reason the real data set was not."""
    return list(dict.fromkeys(f"{p.dataset.name} is a {p.dataset.note} ({p.dataset.reason})"
                              for p in plans if p.dataset.note))


def reproduce(artefacts: list[presets.Artefact], profile: str, store_path: Path | None,
              out_dir: Path | None, datasets: list[str] | None = None,
              overrides: dict[str, Any] | None = None, options: dict[str, Any] | None = None,
              seeds: list[int] | None = None, device: str = "auto",
              executor: Options | None = None,
              train: bool = True) -> tuple[list[Section], list[ArtefactCells], Path]:
    """Plan, train what is missing (``train``, on ``executor``: default in this process),
    render, and write the report; returns the sections, the plans and the output
    directory."""
    plans = plan(artefacts, profile, datasets, overrides, options, seeds)
    path = Path(store_path) if store_path is not None else default_store_path()
    if train:
        with ResultStore(path) as store:
            train_grid(plans, store, device, executor)
    out_dir = out_dir or path.parent / "reproduce"
    sections = render(plans, load_results(path), profile, out_dir, device, train)
    write_report(sections, out_dir, f"flexmoe-bench: paper tables and figures ({profile})",
                 fallback_notes(plans))
    return sections, plans, out_dir
