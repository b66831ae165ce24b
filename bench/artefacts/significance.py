"""Significance across combinations for the metric tables (1, 2, 7–10).

The seeds of one cell share its data, combination and settings, so they are not independent
observations: the unit of the test (a *block*) is one combination, its value per model the
mean over that cell's seeds, and no cell is ever tested on its own seeds. Per table: the
Friedman test over models (``scipy.stats.friedmanchisquare``), then pairwise Wilcoxon
signed-rank tests with Holm correction (``scikit_posthocs.posthoc_wilcoxon``) and their
critical-difference diagram (``scikit_posthocs.critical_difference_diagram``). Higher values
are better: rank 1 is the best model of a block, ties share the average rank.

All pairs of eleven models on eleven combinations cannot differ after Holm's correction (55
comparisons, each p ≥ 2/2^11), so Flex-MoE, the model the paper proposes, is also compared
with each other model alone: Wilcoxon signed-rank tests (``scipy.stats.wilcoxon``) with
Holm's correction over those K − 1 comparisons (``statsmodels``' ``multipletests``), which
can reach significance from six combinations on.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import scikit_posthocs as sp
from matplotlib import rc_context
from matplotlib.figure import Figure
from scipy import stats
from statsmodels.stats.multitest import multipletests

from bench.artefacts.spec import model_label
from bench.rendering.plots import STYLE, WIDTH, palette

logger = logging.getLogger(__name__)

ALPHA = 0.05  # significance level of the pairwise tests and of the diagram's bars
MIN_MODELS = 3  # the Friedman test compares at least three (scipy refuses fewer)
MIN_BLOCKS = 2
#: The model compared with each other one on its own (the paper's proposal).
CONTROL = model_label("flexmoe")
#: Demšar (2006, §3.1.3): a zero difference splits its rank between the two sums, so a
#: pair that ties in every block gets p = 1 instead of an error.
ZERO_METHOD = "zsplit"


def _fmt_p(p: float) -> str:
    return f"{p:.2g}" if p >= 1e-3 else f"{p:.1e}"


def _names(items: list[str]) -> str:
    return ", ".join(map(str, items))


@dataclass
class Significance:
    """The tests of one metric table; ``reason`` says why they were not run (empty when
    they were: only then are the statistics, ranks and p-values filled in)."""

    models: list[str]  # kept models, best mean rank first
    blocks: list[str]  # kept combinations, in the table's order
    seeds: tuple[int, ...]  # distinct numbers of seeds averaged into the kept values
    statistic: float = math.nan
    p_value: float = math.nan
    mean_ranks: pd.Series = field(default_factory=lambda: pd.Series(dtype=float))
    p_values: pd.DataFrame = field(default_factory=pd.DataFrame)  # Holm-adjusted
    reason: str = ""
    dropped: list[str] = field(default_factory=list)  # what was left out, and why
    control: str = ""  # the model compared with each other one (empty: not among the kept)
    control_p: pd.Series = field(default_factory=lambda: pd.Series(dtype=float))  # Holm

    @property
    def computed(self) -> bool:
        return not self.reason

    def caption(self) -> str:
        """What was tested, on how many blocks, and what the test can show with so few."""
        if not self.computed:
            return f"Significance across combinations not computed: {self.reason}."
        k, b = len(self.models), len(self.blocks)
        s = self.seeds
        each = ("each one seed's value" if s == (1,) else
                f"each the mean over {s[0]} seeds" if len(s) == 1 else
                f"each the mean over {s[0]}–{s[-1]} seeds")
        text = (f"Friedman test over {k} models on {b} blocks (combinations; {each}, since "
                f"the seeds of one combination are not independent blocks): "
                f"χ² = {self.statistic:.2f}, p = {_fmt_p(self.p_value)}; pairwise Wilcoxon "
                f"signed-rank tests with Holm correction, α = {ALPHA}; a bar joins models "
                "not significantly different. Mean rank 1 is best.")
        pairs = k * (k - 1) // 2
        floor = 2.0 ** (1 - b)  # all b differences of one sign: the exact test's least p
        if pairs * floor >= ALPHA:
            text += (f" With {b} blocks no pair can differ at α = {ALPHA}: an exact two-sided "
                     f"Wilcoxon test on {b} blocks gives p ≥ 2/2^{b} = {_fmt_p(floor)}, and "
                     f"Holm multiplies the least of the {pairs} p-values by {pairs}, to at "
                     f"least {_fmt_p(min(pairs * floor, 1.0))}.")
        if self.control:
            text += (f" {self.control} against each of the other {k - 1} models: Wilcoxon "
                     f"signed-rank tests with Holm correction over those {k - 1} comparisons"
                     + (f" (none can differ either: p ≥ {_fmt_p(min((k - 1) * floor, 1.0))})."
                        if (k - 1) * floor >= ALPHA else "."))
        return text

    def findings(self) -> list[str]:
        """The Friedman verdict and the pairs that differ (all p-values are in the CSV)."""
        if not self.computed:
            return []
        verdict = "rejects" if self.p_value < ALPHA else "does not reject"
        out = [f"Friedman: {verdict} equal mean ranks at α = {ALPHA} "
               f"(p = {_fmt_p(self.p_value)})."]
        upper = self.p_values.where(np.triu(np.ones(self.p_values.shape, bool), 1))
        pairs = upper.stack().dropna().sort_values()
        better = {m: i for i, m in enumerate(self.models)}
        found = [f"{a} vs {b}: Holm-adjusted p = {_fmt_p(p)} ("
                 f"{min((a, b), key=better.get)} ranks better)"
                 for (a, b), p in pairs.items() if p < ALPHA]
        if not found:
            (a, b), least = pairs.index[0], pairs.iloc[0]
            found = [f"No pair differs at α = {ALPHA} after Holm correction (least adjusted "
                     f"p = {_fmt_p(least)}, {a} vs {b})."]
        return out + found + self._control_findings(better)

    def _control_findings(self, better: dict[str, int]) -> list[str]:
        """One line: the models the control differs from (better or worse), or none."""
        if not self.control:
            return []
        differ = [f"{m} (p = {_fmt_p(p)}, "
                  f"{'better' if better[self.control] < better[m] else 'worse'})"
                  for m, p in self.control_p.items() if p < ALPHA]
        head = f"{self.control} against each model (Holm over {len(self.control_p)}): "
        if differ:
            return [head + "differs from " + "; ".join(differ) + "."]
        return [head + f"no difference at α = {ALPHA} (least adjusted p = "
                f"{_fmt_p(float(self.control_p.min()))})."]

    def to_frame(self) -> pd.DataFrame:
        """``model, mean_rank, p vs <model>…``: the diagram's data, best model first."""
        frame = self.p_values.add_prefix("p vs ").rename_axis(index="model", columns=None)
        frame.insert(0, "mean_rank", self.mean_ranks)
        if self.control:
            frame.insert(1, f"p vs {self.control} alone", self.control_p)
        return frame.reset_index()


def complete_blocks(frame: pd.DataFrame) -> tuple[pd.DataFrame, list[str]]:
    """Blocks × models with a value in every cell, and one line per model or block left out.

    Greedy: the block or model with the largest share of missing values goes first (a block
    on a tie, so models are kept rather than combinations), until none is missing."""
    matrix = frame.pivot(index="block", columns="model", values="value").reindex(
        index=list(dict.fromkeys(frame["block"])), columns=list(dict.fromkeys(frame["model"])))
    blocks: dict[tuple[str, ...], list[str]] = {}
    notes: list[str] = []
    while matrix.size and matrix.isna().to_numpy().any():
        by_block, by_model = matrix.isna().mean(axis=1), matrix.isna().mean(axis=0)
        if by_block.max() >= by_model.max():
            block = by_block.idxmax()
            missing = tuple(matrix.columns[matrix.loc[block].isna()])
            blocks.setdefault(missing if len(missing) < matrix.shape[1] else (), []).append(block)
            matrix = matrix.drop(index=block)
        else:
            model = by_model.idxmax()
            missing = list(matrix.index[matrix[model].isna()])
            where = ("any combination" if len(missing) == len(matrix) else
                     f"{len(missing)} of {len(matrix)} combinations ({_names(missing)})")
            notes.append(f"left out {model}: no value in {where}")
            matrix = matrix.drop(columns=model)
    notes += [f"left out combination{'s' if len(bs) > 1 else ''} {_names(bs)}: "
              + (f"no value for {_names(list(m))}" if m else "no finished run")
              for m, bs in blocks.items()]
    return matrix, notes


def compare(frame: pd.DataFrame, control: str | None = CONTROL) -> Significance:
    """The tests on a tidy frame ``model, block, value, n`` (``n``: seeds averaged into
    ``value``; higher values are better), on its complete blocks and models; ``control``,
    when kept, is also compared with each other model on its own."""
    matrix, dropped = complete_blocks(frame)
    n = frame.set_index(["block", "model"])["n"]
    kept = n[n.index.isin(pd.MultiIndex.from_product([matrix.index, matrix.columns]))]
    result = Significance(list(matrix.columns), list(matrix.index),
                          tuple(sorted({int(v) for v in kept})), dropped=dropped)
    k, b = matrix.shape[1], matrix.shape[0]
    if k < MIN_MODELS or b < MIN_BLOCKS:
        result.reason = (f"complete results for {k} model(s) on {b} combination(s); the "
                         f"Friedman test needs at least {MIN_MODELS} models on at least "
                         f"{MIN_BLOCKS} combinations")
        return result
    if (matrix.nunique(axis=1) == 1).all():  # Friedman's tie correction would divide by 0
        result.reason = "every model has the same value in every combination"
        return result
    ranks = matrix.rank(axis=1, ascending=False, method="average").mean()
    statistic, p_value = stats.friedmanchisquare(*(matrix[m].to_numpy(float) for m in matrix))
    p = sp.posthoc_wilcoxon([matrix[m].to_numpy(float) for m in matrix], p_adjust="holm",
                            zero_method=ZERO_METHOD)
    p.index = p.columns = matrix.columns
    order = list(ranks.sort_values(kind="stable").index)
    result.models, result.statistic, result.p_value = order, float(statistic), float(p_value)
    result.mean_ranks, result.p_values = ranks[order], p.loc[order, order]
    if control in matrix.columns:
        others = [m for m in order if m != control]
        raw = [stats.wilcoxon(matrix[control], matrix[m], zero_method=ZERO_METHOD).pvalue
               for m in others]
        result.control = control
        result.control_p = pd.Series(multipletests(raw, method="holm")[1], index=others)
    logger.info("Friedman over %d models on %d blocks: chi2 = %.3f, p = %.3g", k, b,
                statistic, p_value)
    return result


def block_means(runs: pd.DataFrame, metric: str) -> pd.DataFrame:
    """``model, block, value, n`` from ``bench.artefacts.views.runs``: per model (its paper
    label) and combination, the mean of ``metric`` over the finished seeds and their number."""
    ok = runs["status"] == "ok"
    value = pd.to_numeric(runs[metric], errors="coerce") if metric in runs else np.nan
    frame = runs.assign(value=value).assign(value=lambda f: f["value"].where(ok))
    out = frame.groupby(["model", "combo"], sort=False)["value"].agg(["mean", "count"])
    out = out.reset_index().rename(columns={"combo": "block", "mean": "value", "count": "n"})
    out["model"] = out["model"].map(model_label)
    return out


def cd_diagram(result: Significance) -> Figure:
    """The critical-difference diagram of a computed result, drawn by scikit-posthocs."""
    rows = (len(result.models) + 1) // 2 + 2
    with rc_context(STYLE):
        fig = Figure(figsize=(WIDTH, 0.22 * rows + 0.7))
        ax = fig.add_subplot()
        sp.critical_difference_diagram(result.mean_ranks, result.p_values, alpha=ALPHA, ax=ax,
                                       label_fmt_left="{label} ({rank:.2f})",
                                       label_fmt_right="({rank:.2f}) {label}",
                                       color_palette=palette(result.models))
        # the whole rank scale, 1 to k, as in Demšar's diagram (the library autoscales to
        # the ranks present, which hides how close the best model is to rank 1)
        k = len(result.models)
        low, high = ax.get_xlim()
        ax.set_xlim(min(low, 1), max(high, k))
        ax.set_xticks(range(1, k + 1))
        ax.set_xlabel("mean rank over combinations (1 = best)")
        ax.xaxis.set_label_position("top")
    return fig
