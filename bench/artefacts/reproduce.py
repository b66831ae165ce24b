"""Reproduce the paper's tables and figures: plan the runs, train what the store lacks,
render every table and figure as its declaration (:mod:`bench.artefacts.catalogue`) says,
and write the report.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pandas as pd

from bench.artefacts import views
from bench.artefacts.planning import artefact_cells, assign_datasets
from bench.artefacts.spec import Artefact, ArtefactCells, RenderContext
from bench.execution.grid import GridRows, run_grid
from bench.execution.options import Options
from bench.rendering.report import Section, write_report
from bench.rendering.tables import TableView, to_csv, to_latex, to_markdown
from bench.results.store import ResultStore, default_store_path, load_results
from bench.training.device import resolve_device

logger = logging.getLogger(__name__)


def plan(artefacts: list[Artefact], profile: str, datasets: list[str] | None = None,
         overrides: dict[str, Any] | None = None, options: dict[str, Any] | None = None,
         seeds: list[int] | None = None) -> list[ArtefactCells]:
    """Every artefact's cells; fails before any training on a bad name, letter or setting."""
    choice = assign_datasets(artefacts, list(datasets or []), options)
    return [artefact_cells(a, choice[a.family], profile, overrides, options, seeds)
            for a in artefacts]


def train_grid(plans: list[ArtefactCells], store: ResultStore, device: str = "auto",
               executor: Options | None = None) -> GridRows:
    """Run every cell of the tables and sweeps that the store does not hold yet (on a
    cluster's executor the tasks resolve ``device`` on their nodes)."""
    cells = [c for p in plans if p.artefact.in_grid for c in p.cells]
    logger.info("%d distinct run(s) behind %s", len({c.key for c in cells}),
                ", ".join(p.artefact.id for p in plans))
    remote = executor is not None and executor.remote
    rows = run_grid(cells, store, device if remote else str(resolve_device(device)),
                    executor=executor)
    failed = sum(r["status"] != "ok" for r in rows)
    logger.info("%d run(s) trained, %d of them failed (footnoted in the tables)", len(rows),
                failed)
    return rows


def _write_table(view: TableView, out_dir: Path) -> None:
    for suffix, render in ((".md", to_markdown), (".tex", to_latex), (".csv", to_csv)):
        (out_dir / f"{view.id}{suffix}").write_text(render(view))


def render_artefact(ac: ArtefactCells, ctx: RenderContext) -> Section:
    """One artefact as its declaration says: its table (Markdown, LaTeX, CSV) and section,
    or a section of its own; then its figure, its caption's explanation and its panels."""
    art = ac.artefact
    if art.view is not None:
        view = art.view(ac, ctx.df, ctx.profile)
        _write_table(view, ctx.out_dir)
        section = Section(art.id, f"{view.name}: {view.title}", view.caption, view)
    else:
        section = Section(art.id, art.title,
                          views.caption(ac, views.runs(ac, ctx.df), ctx.profile))
    if art.figure is not None:
        art.figure(ac, ctx, section)
    if art.explain:
        section.caption += " " + art.explain
    section.subsections += [panel(ac, ctx) for panel in art.panels]
    return section


def render(plans: list[ArtefactCells], df: pd.DataFrame, profile: str, out_dir: Path,
           device: str = "auto", train: bool = True) -> list[Section]:
    """Tables (Markdown, LaTeX, CSV) and figures (PNG, PDF, CSV data) under ``out_dir``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    ctx = RenderContext(df, profile, out_dir, device, train)
    return [render_artefact(ac, ctx) for ac in plans]


def fallback_notes(plans: list[ArtefactCells]) -> list[str]:
    """One line per synthetic stand-in in use, with the reason the real data set was not."""
    return list(dict.fromkeys(f"{p.dataset.name} is a {p.dataset.note} ({p.dataset.reason})"
                              for p in plans if p.dataset.note))


def reproduce(artefacts: list[Artefact], profile: str, store_path: Path | None,
              out_dir: Path | None, datasets: list[str] | None = None,
              overrides: dict[str, Any] | None = None, options: dict[str, Any] | None = None,
              seeds: list[int] | None = None, device: str = "auto",
              executor: Options | None = None,
              train: bool = True) -> tuple[list[Section], list[ArtefactCells], Path]:
    """Plan, train what is missing (``train``, on ``executor``: default in this process),
    render, and write the report; returns the sections, the plans and the output
    directory."""
    plans = plan(artefacts, profile, datasets, overrides, options, seeds)
    path = default_store_path(store_path)
    if train:
        with ResultStore(path) as store:
            train_grid(plans, store, device, executor)
    out_dir = out_dir or path.parent / "reproduce"
    sections = render(plans, load_results(path), profile, out_dir, device, train)
    write_report(sections, out_dir, f"flexmoe-bench: paper tables and figures ({profile})",
                 fallback_notes(plans))
    return sections, plans, out_dir
