"""The paper's Figures 4–6 and two summary figures, drawn from tidy DataFrames.

Figures are built with matplotlib's object API (no pyplot, so no global state and no
display needed) and seaborn, sized for a 5.5-inch text width with 8-point labels, in the
colour-blind-safe ``colorblind`` palette (categories also differ by marker) and the
perceptually uniform ``cividis`` / diverging ``PuOr`` maps.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib import rc_context
from matplotlib.figure import Figure
from matplotlib.ticker import NullFormatter

WIDTH = 5.5  # inches: a NeurIPS text width
STYLE = {"font.size": 8, "axes.titlesize": 8, "axes.labelsize": 8, "xtick.labelsize": 7,
         "ytick.labelsize": 7, "legend.fontsize": 7, "axes.spines.top": False,
         "axes.spines.right": False, "pdf.fonttype": 42}
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "<", ">", "*", "h", "p")
#: With colour and marker, a third cue, so eleven lines stay apart in grey or to any eye.
LINESTYLES = ("-", "--", ":", "-.")

# fontTools logs every glyph subset at INFO level when matplotlib writes a PDF
logging.getLogger("fontTools").setLevel(logging.WARNING)


def palette(names: list[str]) -> dict[str, tuple[float, float, float]]:
    """A colour per name from the colour-blind-safe palette (10 colours, then dark grey for
    the paper's 10 models plus I2MoE; markers also differ)."""
    colours = [*sns.color_palette("colorblind", 10), (0.25, 0.25, 0.25)]
    return {n: colours[i % len(colours)] for i, n in enumerate(names)}


def save_figure(fig: Figure, out_dir: Path, stem: str) -> list[Path]:
    """Write ``stem.png`` (200 dpi) and ``stem.pdf``; return both paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [out_dir / f"{stem}.png", out_dir / f"{stem}.pdf"]
    with rc_context(STYLE):
        for path in paths:
            fig.savefig(path, bbox_inches="tight", dpi=200)
    return paths


#: Figure 4's panel titles: the paper's two (§4.3: "row and column in missing modality
#: bank") and the extra comparison with the encoders' embeddings.
BANK_TITLES = {"row": "Observed modality combinations\n(bank rows)",
               "column": "Missing modalities\n(bank columns)",
               "embedding": "Extra, not in the paper: bank\nentry vs mean encoder embedding"}
BANK_LABELS = {"row": ("observed combination", "observed combination"),
               "column": ("missing modality", "missing modality"),
               "embedding": ("missing modality (bank entry)", "observed combination")}


def _bank_matrix(df: pd.DataFrame, panel: str) -> pd.DataFrame:
    """One panel of the tidy frame as a matrix, rows and columns in the frame's order."""
    part = df[df["panel"] == panel]
    rows = list(dict.fromkeys(part["row"]))
    columns = list(dict.fromkeys(part["column"]))
    if panel == "embedding":  # the modalities in the order of the column panel
        order = list(dict.fromkeys(df.loc[df["panel"] == "column", "row"]))
        columns = [c for c in order if c in columns] + [c for c in columns if c not in order]
    return part.pivot(index="row", columns="column", values="cosine").reindex(
        index=rows, columns=columns)


def bank_similarity(df: pd.DataFrame) -> Figure:
    """Figure 4: cosine similarity between the missing-modality bank's entries — left,
    between observed combinations (the bank's rows), right, between missing modalities (its
    columns) — side by side, plus the extra bank-vs-encoder panel when ``df`` has it
    (``flexmoe.analysis.bank_similarity``'s frame). Undefined cells are hatched: the full
    combination misses nothing, so no entry of its row is ever read; in the extra panel, a
    modality the combination observes has no entry that is read."""
    panels = [p for p in ("row", "column", "embedding") if (df["panel"] == p).any()]
    tables = {p: _bank_matrix(df, p) for p in panels}
    n = max(len(t) for t in tables.values())
    cells = sum(t.shape[1] + 2 for t in tables.values())  # heatmap columns plus labels
    width = WIDTH * (1.3 if len(panels) > 2 else 1.0)
    with rc_context(STYLE):
        fig = Figure(figsize=(width, max(2.4, 0.85 * width * n / cells + 1.4)),
                     layout="constrained")
        axes = fig.subplots(1, len(panels), squeeze=False,
                            width_ratios=[max(t.shape[1], 2) for t in tables.values()])[0]
        for ax, panel in zip(axes, panels):
            table = tables[panel]
            ax.patch.set_hatch("///")
            ax.patch.set_edgecolor("0.75")
            sns.heatmap(table, ax=ax, cmap="PuOr", center=0.0, vmin=-1.0, vmax=1.0,
                        annot=True, fmt=".2f", linewidths=0.5, cbar=False,
                        annot_kws={"size": 7 if n <= 6 else 5 if n <= 10 else 3.5},
                        square=panel != "embedding")
            ax.set_title(BANK_TITLES[panel])
            ax.set_xlabel(BANK_LABELS[panel][0])
            ax.set_ylabel(BANK_LABELS[panel][1])
            ax.set_yticks(np.arange(len(table)) + 0.5, table.index, rotation=0)
            ax.set_xticks(np.arange(table.shape[1]) + 0.5, table.columns,
                          rotation=90 if panel == "row" else 0)
        fig.colorbar(axes[0].collections[0], ax=list(axes), shrink=0.8,
                     label="cosine similarity")
    return fig


def expert_activation(df: pd.DataFrame, num_experts: int) -> Figure:
    """Figure 5: share of each expert's routed tokens that come from each combination
    (an expert that received no token is an empty column)."""
    with rc_context(STYLE):
        table = df.pivot(index="combo", columns="expert", values="share").fillna(0.0)
        table = table.reindex(columns=range(num_experts))
        tokens = df.groupby("combo")["tokens"].sum()
        table = table.reindex(tokens.sort_values(ascending=False).index)
        fig = Figure(figsize=(WIDTH, 0.3 * len(table) + 1.2))
        ax = fig.add_subplot()
        sns.heatmap(table, ax=ax, cmap="cividis", vmin=0.0, vmax=1.0, linewidths=0.3,
                    cbar_kws={"label": "share of the expert's tokens"})
        ax.set_xlabel("expert")
        ax.set_ylabel("observed combination")
        fig.tight_layout()
    return fig


def sensitivity(df: pd.DataFrame) -> Figure:
    """Figure 6: test accuracy against each hyper-parameter axis (mean ± std over seeds);
    settings without a result are marked × on the axis and explained in the caption."""
    axes_names = list(dict.fromkeys(df["axis"]))
    with rc_context(STYLE):
        fig = Figure(figsize=(WIDTH, 1.9))
        axes = fig.subplots(1, len(axes_names), sharey=True, squeeze=False)[0]
        colour = sns.color_palette("colorblind", 1)[0]
        for ax, name in zip(axes, axes_names):
            part = df[df["axis"] == name].sort_values("value")
            done = part.dropna(subset=["mean"])
            ax.errorbar(done["value"], done["mean"], yerr=done["std"], color=colour,
                        marker="o", markersize=4, capsize=2, linewidth=1.2)
            for value in part.loc[part["mean"].isna(), "value"]:
                ax.plot(value, 0, marker="x", color="0.4", transform=ax.get_xaxis_transform(),
                        clip_on=False, markersize=6)
            if part["value"].max() >= 8 * part["value"].min() > 0:  # 4, 8, 16, 32: even steps
                ax.set_xscale("log", base=2)
                ax.minorticks_off()
            ax.set_xticks(part["value"].tolist(), [str(v) for v in part["value"]])
            ax.set_xlabel(name)
            ax.grid(axis="y", alpha=0.3)
        axes[0].set_ylabel("test accuracy (%)")
        fig.tight_layout()
    return fig


def _model_lines(df: pd.DataFrame, x: str, ticks: list[int], xlabel: str) -> Figure:
    """Mean test accuracy (``mean`` ± ``std``) of each model against the integer column
    ``x``, one line per model, nudged sideways so error bars of equal x stay apart."""
    models = list(dict.fromkeys(df["model"]))
    colours = palette(models)
    with rc_context(STYLE):
        fig = Figure(figsize=(WIDTH, 2.6))
        ax = fig.add_subplot()
        for i, model in enumerate(models):
            part = df[df["model"] == model].sort_values(x)
            ax.errorbar(part[x] + (i - len(models) / 2) * 0.015, part["mean"],
                        yerr=part["std"], label=model, color=colours[model],
                        marker=MARKERS[i % len(MARKERS)], markersize=4, capsize=2, linewidth=1,
                        linestyle=LINESTYLES[i % len(LINESTYLES)])
        ax.set_xticks(ticks)
        ax.set_xlabel(xlabel)
        ax.set_ylabel("test accuracy (%)")
        ax.grid(axis="y", alpha=0.3)
        ax.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), frameon=False)
        fig.tight_layout()
    return fig


def accuracy_vs_modalities(df: pd.DataFrame) -> Figure:
    """Mean test accuracy of each model over the combinations with 2, 3 and 4 modalities."""
    return _model_lines(df, "modalities", sorted(df["modalities"].unique().tolist()),
                        "number of observed modalities in the combination")


def accuracy_vs_cost(df: pd.DataFrame) -> Figure:
    """Accuracy against forward GFLOP per sample and against parameters; bubble area grows
    with the parameter count, colour is the model, marker the combination."""
    models = list(dict.fromkeys(df["model"]))
    combos = list(dict.fromkeys(df["combo"]))
    colours = palette(models)
    size = 20 + 180 * np.sqrt(df["params"] / max(float(df["params"].max()), 1.0))
    with rc_context(STYLE):
        fig = Figure(figsize=(WIDTH, 2.5))
        left, right = fig.subplots(1, 2, sharey=True)
        for ax, x, label in ((left, "gflop", "forward GFLOP per sample (FlopCounter, log)"),
                             (right, "params", "trainable parameters (log)")):
            for j, combo in enumerate(combos):
                part = df["combo"] == combo
                ax.scatter(df.loc[part, x], df.loc[part, "acc"], s=size[part],
                           c=[colours[m] for m in df.loc[part, "model"]],
                           marker=MARKERS[j % len(MARKERS)], alpha=0.75, edgecolors="0.2",
                           linewidths=0.4)
            ax.set_xscale("log")
            ax.xaxis.set_minor_formatter(NullFormatter())  # labelled minor ticks collide
            ax.set_xlabel(label)
            ax.grid(alpha=0.3)
        left.set_ylabel("test accuracy (%)")
        handles = [left.scatter([], [], color=colours[m], label=m) for m in models]
        handles += [left.scatter([], [], marker=MARKERS[j % len(MARKERS)], color="0.5",
                                 label=c) for j, c in enumerate(combos)]
        fig.legend(handles=handles, loc="center left", bbox_to_anchor=(1.0, 0.5),
                   frameon=False)
        fig.tight_layout()
    return fig


def accuracy_vs_available(df: pd.DataFrame, trained_on: str) -> Figure:
    """Test-time robustness: accuracy of each model trained on ``trained_on`` against the
    number of its modalities still available at test (mean ± std over removal subsets and
    seeds; ``bench.artefacts.robustness_view.robustness_curve``'s frame)."""
    return _model_lines(df.assign(std=df["std"].fillna(0.0)), "available",
                        list(range(1, len(trained_on) + 1)),
                        f"number of modalities available at test (trained on {trained_on})")


def accuracy_vs_missing_rate(df: pd.DataFrame) -> Figure:
    """Missingness mechanisms: one panel per mechanism, test accuracy against the missing
    rate imposed on the training split (mean ± std over seeds), one line per model; every
    panel starts from the shared rate-0 runs (``bench.artefacts.mechanisms_view``'s frame); models
    without a result are left out."""
    mechanisms = list(dict.fromkeys(df["mechanism"]))
    models = list(dict.fromkeys(df.dropna(subset=["mean"])["model"]))
    colours = palette(models)
    with rc_context(STYLE):
        fig = Figure(figsize=(WIDTH, 2.4))
        axes = fig.subplots(1, len(mechanisms), sharey=True, squeeze=False)[0]
        for ax, mechanism in zip(axes, mechanisms):
            part = df[df["mechanism"] == mechanism]
            for i, model in enumerate(models):
                line = part[part["model"] == model].dropna(subset=["mean"]).sort_values("rate")
                ax.errorbar(line["rate"], line["mean"], yerr=line["std"].fillna(0.0),
                            label=model, color=colours[model], marker=MARKERS[i % len(MARKERS)],
                            markersize=3, capsize=2, linewidth=1)
            rates = sorted(part["rate"].unique().tolist())
            ax.set_xticks(rates, [f"{r:g}" for r in rates])
            ax.set_title(mechanism)
            ax.set_xlabel("missing rate (training)")
            ax.grid(axis="y", alpha=0.3)
        axes[0].set_ylabel("test accuracy (%)")
        legend = {label: handle for ax in axes
                  for handle, label in zip(*ax.get_legend_handles_labels())}
        fig.legend(list(legend.values()), list(legend), loc="center left",
                   bbox_to_anchor=(1.0, 0.5), frameon=False)
        fig.tight_layout()
    return fig
