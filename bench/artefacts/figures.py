"""The artefacts' figures and panels: each draws into its artefact's section and writes the
tidy data behind it as CSV beside the image.

Figures 4 and 5 need a trained Flex-MoE, which the store does not keep: one Flex-MoE is
trained on IGCB with the profile's settings and its first seed (the same cell as in
Table 1) and its ``state_dict`` cached under ``<out>/models/`` in a file named by the cell's
key, so a different setting never reads another's weights and a re-run trains nothing.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pandas as pd
import torch
from matplotlib.figure import Figure

from bench import registry
from bench.artefacts import mechanisms_view, robustness_view, significance, views
from bench.artefacts.spec import ArtefactCells, RenderContext, model_label
from bench.data.core import RunData
from bench.data.load import load_data
from bench.identity.config import RunConfig
from bench.rendering import plots
from bench.rendering.report import Section
from bench.training.device import resolve_device
from bench.training.train import fit, seed_everything
from flexmoe import analysis

logger = logging.getLogger(__name__)


def _save(ac: ArtefactCells, ctx: RenderContext, section: Section, data: pd.DataFrame,
          fig: Figure | None) -> None:
    """The figure's data as ``<id>.csv`` and, when there is a figure, its image."""
    ctx.out_dir.mkdir(parents=True, exist_ok=True)
    data.to_csv(ctx.out_dir / f"{ac.artefact.id}.csv", index=False)
    if fig is not None:
        section.figures = plots.save_figure(fig, ctx.out_dir, ac.artefact.id)[:1]


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
    seed_everything(cell.seed)  # as a run does, so the weights are those of its run
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


def _analysed(ac: ArtefactCells, ctx: RenderContext,
              section: Section) -> tuple[RunConfig, torch.nn.Module, RunData] | None:
    """The Flex-MoE a figure analyses, or None with the reason in the section's notes."""
    if not ac.cells:
        section.notes.append(views.UNREGISTERED + ": flexmoe")
        return None
    cell = ac.cells[0]
    try:
        found = analysis_model(cell, ctx.out_dir, ctx.device, ctx.train)
    except (RuntimeError, ValueError) as exc:  # e.g. a diverging run: say so, go on
        section.notes.append(f"training the Flex-MoE failed: {exc}")
        return None
    if found is None:
        section.notes.append("no trained Flex-MoE cached yet: run_bench.py reproduce "
                             f"--table {ac.artefact.id}")
        return None
    section.caption = (f"Flex-MoE trained once on {cell.combo} (seed {cell.seed}, "
                       f"{cell.hparams.get('epochs')} epochs), analysed on the training "
                       "split, the only one with partial combinations. " + section.caption)
    return cell, *found


def bank_figure(ac: ArtefactCells, ctx: RenderContext, section: Section) -> None:
    """Figure 4: cosine similarity between the missing-modality bank's entries."""
    found = _analysed(ac, ctx, section)
    if found is not None:
        data = analysis.bank_similarity(found[1], found[2])
        _save(ac, ctx, section, data, plots.bank_similarity(data))


def experts_figure(ac: ArtefactCells, ctx: RenderContext, section: Section) -> None:
    """Figure 5: expert activation by observed combination."""
    found = _analysed(ac, ctx, section)
    if found is not None:
        cell, model, data = found
        frame = analysis.expert_activation(model, data)
        _save(ac, ctx, section, frame,
              plots.expert_activation(frame, int(cell.hparams["num_experts"])))


def sensitivity_figure(ac: ArtefactCells, ctx: RenderContext, section: Section) -> None:
    """Figure 6: Flex-MoE's accuracy along each hyper-parameter axis."""
    data = views.sensitivity_data(ac, ctx.df)
    section.notes += [f"{r.axis} = {r.value}: {r.note}" for r in data.itertuples() if r.note]
    _save(ac, ctx, section, data,
          plots.sensitivity(data) if data["mean"].notna().any() else None)


def _model_notes(ac: ArtefactCells, ctx: RenderContext, section: Section) -> None:
    frame = views.runs(ac, ctx.df)
    frame["label"] = frame["model"].map(model_label)
    stats = views.summarise(frame, ["label"], "test_acc")
    section.notes += [f"{m}: {n}" for m, n in stats["note"].items() if n]


def modalities_figure(ac: ArtefactCells, ctx: RenderContext, section: Section) -> None:
    """Accuracy against the number of observed modalities."""
    data = views.modalities_data(ac, ctx.df)
    _save(ac, ctx, section, data,
          None if data.empty else plots.accuracy_vs_modalities(data))
    _model_notes(ac, ctx, section)


def cost_figure(ac: ArtefactCells, ctx: RenderContext, section: Section) -> None:
    """Accuracy against forward GFLOP per sample, bubbles sized by parameters."""
    data = views.cost_data(ac, ctx.df)
    _save(ac, ctx, section, data, None if data.empty else plots.accuracy_vs_cost(data))
    _model_notes(ac, ctx, section)


def robustness_figure(ac: ArtefactCells, ctx: RenderContext, section: Section) -> None:
    """The robustness table's numbers as a figure, beside it."""
    section.figures = robustness_view.write_figure(ac, ctx.df, ctx.out_dir)


def mechanisms_figure(ac: ArtefactCells, ctx: RenderContext, section: Section) -> None:
    """Accuracy against the missing rate, one panel per mechanism."""
    section.figures = mechanisms_view.write_figure(ac, ctx.df, ctx.out_dir)


def significance_panel(ac: ArtefactCells, ctx: RenderContext) -> Section:
    """Friedman and Holm-corrected Wilcoxon tests across the combinations of a metric table,
    on the runs the table shows; the diagram and its data (CSV) beside the table."""
    art = ac.artefact
    result = significance.compare(significance.block_means(views.runs(ac, ctx.df),
                                                           art.metric))
    stem = f"{art.id}-significance"
    section = Section(stem, "Significance across combinations", result.caption(),
                      notes=result.findings() + result.dropped)
    if result.computed:
        result.to_frame().to_csv(ctx.out_dir / f"{stem}.csv", index=False)
        section.figures = plots.save_figure(significance.cd_diagram(result), ctx.out_dir,
                                            stem)[:1]
        section.notes.append(f"Mean ranks and every Holm-adjusted p-value: {stem}.csv.")
    return section
