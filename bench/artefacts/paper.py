"""Did a store reproduce the paper? Its runs on the real data sets against the published numbers.

Users with the real ADNI and MIMIC-IV data run the paper profile and want to know, cell by
cell, whether their numbers match Tables 1, 2 and 7–10 of the Flex-MoE paper
(``results/paper``). :func:`against_paper` matches every (data set, metric, combination,
model) cell of those tables with the store's successful ``paper``-profile runs of the current
key version on ``adni`` and ``mimic`` and tests the two ``mean ± std`` with Welch's t-test
from the summary statistics; :func:`format_comparison` prints the result as a table or JSON.

With three seeds per side the test has little power: "agrees" means "no evidence of a
difference", not "reproduced". A disagreement is information for the user, not an error:
:attr:`PaperComparison.ok` is False only when stored rows cannot be read.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from scipy.stats import ttest_ind_from_stats
from tabulate import tabulate

from bench.artefacts.catalogue import ARTEFACTS
from bench.artefacts.spec import MODEL_LABELS, REAL, Artefact, model_label
from bench.artefacts.views import published
from bench.data.load import data_identity
from bench.errors import UserError
from bench.identity.config import KEY_VERSION
from bench.rendering.tables import mean_std, select_runs

logger = logging.getLogger(__name__)

PROFILE = "paper"
#: The paper's seeds per cell (its numbers are mean ± std over three runs).
PAPER_SEEDS = 3
ALPHA = 0.05
REAL_DATASETS = tuple(REAL.values())
NO_REAL_DATA = ("no runs on the real data sets (adni, mimic) in this store: nothing to "
                "compare")
NO_PAPER_RUNS = ("no successful paper-profile runs of this version of the suite on the real "
                 "data sets (adni, mimic) in this store: nothing to compare")
RULE = ("Rule: a cell agrees when Welch's two-sample t-test on the reproduced and published "
        "mean ± std (population std over seeds, converted to sample std; the paper has 3 "
        "seeds) gives p ≥ 0.05, and a cell with one reproduced seed or zero std on both sides "
        "is not tested; with 3 seeds per side the test has little power, so \"agrees\" means "
        "\"no evidence of a difference\", not a confirmed reproduction.")
AGREES, DISAGREES = "agrees", "disagrees"
UNTESTED_ONE_SEED = "untested: 1 seed"
UNTESTED_ZERO_STD = "untested: zero std on both sides"
UNTESTED_NO_VALUE = "untested: metric undefined in every run"

#: Columns of ``load_results`` the comparison reads.
_NEEDED = ("status", "dataset", "profile", "model", "combo", "seed")
#: The paper's model name (``results/paper``) → registry name, from the one label mapping.
_REGISTRY_NAME = {paper: name for name, (_, paper) in MODEL_LABELS.items() if paper}


@dataclass(frozen=True)
class CellComparison:
    """One published cell beside the reproduced runs of one setting (values in percent)."""

    table: str
    dataset: str
    metric: str
    combo: str
    model: str
    #: The paper's column header, plus the differing settings when the store holds runs of
    #: this cell under several settings (each is compared on its own).
    label: str
    mean: float
    std: float
    n: int
    paper_mean: float
    paper_std: float
    paper_n: int
    p: float | None
    verdict: str

    @property
    def delta(self) -> float:
        """Reproduced − published, in percentage points."""
        return self.mean - self.paper_mean

    @property
    def agrees(self) -> bool | None:
        """True or False for a tested cell, None for an untested one."""
        return {AGREES: True, DISAGREES: False}.get(self.verdict)


@dataclass(frozen=True)
class MissingCell:
    """A published cell with no reproduced run in the store (not a failure)."""

    table: str
    dataset: str
    metric: str
    combo: str
    model: str


@dataclass(frozen=True)
class TableSummary:
    """Per table: published cells, cells with runs, and the verdicts of the compared rows."""

    table: str
    dataset: str
    metric: str
    published: int
    compared: int
    agree: int
    disagree: int
    untested: int
    missing: int


@dataclass
class PaperComparison:
    """The result of :func:`against_paper`.

    ``ok`` is False only when some selected rows could not be read (listed in
    ``unreadable``); cells that disagree with the paper leave it True, because a
    disagreement is information about the reproduction, not a fault of the store, so a
    caller exits 0 on it.
    """

    cells: list[CellComparison] = field(default_factory=list)
    missing: list[MissingCell] = field(default_factory=list)
    summaries: list[TableSummary] = field(default_factory=list)
    #: What was left out and why (older key version, other profiles, failed runs, runs of
    #: models or combinations the paper does not report).
    notes: list[str] = field(default_factory=list)
    unreadable: list[str] = field(default_factory=list)
    #: Set when there is nothing to compare.
    message: str = ""

    @property
    def ok(self) -> bool:
        return not self.unreadable

    def counts(self) -> dict[str, int]:
        """Totals over every table: compared rows, verdicts and missing cells."""
        return {k: sum(getattr(s, k) for s in self.summaries)
                for k in ("published", "compared", "agree", "disagree", "untested", "missing")}


def metric_tables() -> list[Artefact]:
    """The paper's metric tables (1, 2, 7–10), in table order."""
    return [a for a in ARTEFACTS.values() if a.kind == "metric"]


def _sample_std(std: float, n: int) -> float:
    """Population std (as the suite and, by its reading, the paper print) → sample std."""
    return std * math.sqrt(n / (n - 1))


def _welch(values: np.ndarray, paper_mean: float, paper_std: float
          ) -> tuple[float, float, float | None, str]:
    """Mean, population std, Welch p-value (None when untested) and verdict of one cell."""
    if not len(values):
        return math.nan, math.nan, None, UNTESTED_NO_VALUE
    mean, std = float(values.mean()), float(np.std(values, ddof=0))
    if len(values) < 2:
        return mean, math.nan, None, UNTESTED_ONE_SEED
    if math.isclose(std, 0.0, abs_tol=1e-9) and paper_std == 0:
        return mean, std, None, UNTESTED_ZERO_STD
    p = float(ttest_ind_from_stats(mean, _sample_std(std, len(values)), len(values), paper_mean,
                                   _sample_std(paper_std, PAPER_SEEDS), PAPER_SEEDS,
                                   equal_var=False).pvalue)
    return mean, std, p, AGREES if p >= ALPHA else DISAGREES


def _settings(row: pd.Series) -> str:
    """Everything besides the seed that tells two runs of one cell apart, as JSON."""
    hparams = row["hparams"] if isinstance(row.get("hparams"), dict) else {}
    options = data_identity(row.get("data_options"))
    split = row.get("split_seed")
    return json.dumps({**hparams, **{f"data {k}": v for k, v in options.items()},
                       "split_seed": None if pd.isna(split) else int(split)},
                      sort_keys=True, default=str)


def _variants(group: pd.DataFrame) -> list[tuple[str, pd.DataFrame]]:
    """The runs of one cell split by setting, each named by the settings that differ ("" when
    all runs share one setting): runs of other settings must not pool into one mean."""
    signatures = group.apply(_settings, axis=1)
    distinct = list(dict.fromkeys(signatures))
    if len(distinct) == 1:
        return [("", group)]
    dicts = [json.loads(s) for s in distinct]
    keys = sorted(k for k in set().union(*dicts)
                  if len({json.dumps(d.get(k)) for d in dicts}) > 1)
    return [(", ".join(f"{k}={d.get(k)}" for k in keys), group[signatures == s])
            for s, d in zip(distinct, dicts)]


def _unreadable(rows: pd.DataFrame) -> pd.Series:
    """Rows without model or combination, or with a metric that is not a fraction in [0, 1]
    (a missing metric is fine: an undefined metric is stored as missing)."""
    bad = rows["model"].isna() | rows["combo"].isna()
    for metric in {a.metric for a in metric_tables()}:
        raw = rows[metric] if metric in rows else pd.Series(np.nan, index=rows.index)
        values = pd.to_numeric(raw, errors="coerce")
        bad |= (raw.notna() & values.isna()) | (values < 0) | (values > 1)
    return bad


def _left_out(real: pd.DataFrame) -> list[str]:
    """Notes on the real-data rows that are not compared, and why."""
    ok = real["status"] == "ok"
    paper = real["profile"] == PROFILE
    current = (real["key_version"] == KEY_VERSION if "key_version" in real
               else pd.Series(True, index=real.index))
    notes = []
    if n := int((~ok & paper).sum()):
        notes.append(f"{n} failed paper-profile run(s) left out (`run` retries them)")
    if n := int((ok & ~current).sum()):
        notes.append(f"{n} run(s) keyed by an older version of the suite left out (run the "
                     "grid again)")
    others = real[ok & current & ~paper]
    if len(others):
        profiles = ", ".join(sorted(map(str, others["profile"].unique())))
        notes.append(f"{len(others)} run(s) of other profiles ({profiles}) left out: the "
                     "paper's numbers are for the paper profile")
    return notes


def against_paper(df: pd.DataFrame) -> PaperComparison:
    """Compare the store's paper-profile runs on ``adni`` / ``mimic`` (``df``: the rows of
    ``bench.results.store.load_results``) with the published cells of Tables 1, 2 and 7–10.

    ``ok`` of the result is False only when selected rows cannot be read; a cell that
    disagrees with the paper does not make it False (see :class:`PaperComparison`).
    """
    if df.empty:
        return PaperComparison(message=NO_REAL_DATA)
    absent = [c for c in _NEEDED if c not in df]
    if absent:
        raise ValueError(f"the rows lack column(s) {absent}; pass "
                         "bench.results.store.load_results()")
    real = df[df["dataset"].isin(REAL_DATASETS)]
    if real.empty:
        return PaperComparison(message=NO_REAL_DATA)
    result = PaperComparison(notes=_left_out(real))
    selected = []
    for name in REAL_DATASETS:
        try:
            selected.append(select_runs(df, name, PROFILE, {})[0])  # the defaults
        except ValueError:  # nothing current on this data set: _left_out says why
            tables = ", ".join(a.id.removeprefix("table") for a in metric_tables()
                               if REAL[a.family] == name)
            result.notes.append(f"no successful paper-profile runs on {name}: Tables "
                                f"{tables} not compared")
    rows = pd.concat(selected) if selected else real.iloc[:0]
    bad = _unreadable(rows)
    for r in rows[bad].itertuples():
        result.unreadable.append(f"run {r.key}: {r.model} {r.dataset} {r.combo} seed {r.seed}")
    if bad.any():
        logger.warning("%d stored run(s) on the real data sets cannot be read and are left "
                       "out: %s", int(bad.sum()), "; ".join(result.unreadable))
    rows = rows[~bad]
    if rows.empty:
        result.message = NO_PAPER_RUNS
        return result
    unmatched: set[int] = set(rows.index)
    for art in metric_tables():
        dataset = REAL[art.family]
        runs = rows[rows["dataset"] == dataset]
        if runs.empty:
            continue
        paper = published(art.paper_file)
        table, metric = art.id.replace("table", "Table "), str(paper["metric"].iloc[0])
        cells: list[CellComparison] = []
        missing: list[MissingCell] = []
        for cell in paper.itertuples():
            model = _REGISTRY_NAME[cell.model]
            group = runs[(runs["model"] == model) & (runs["combo"] == cell.combo)]
            unmatched -= set(group.index)
            if group.empty:
                missing.append(MissingCell(table, dataset, metric, cell.combo, model))
                continue
            for settings, variant in _variants(group):
                values = pd.to_numeric(variant[art.metric], errors="coerce").dropna()
                mean, std, p, verdict = _welch(values.to_numpy(float) * 100.0, float(cell.mean),
                                              float(cell.std))
                label = model_label(model) + (f" ({settings})" if settings else "")
                cells.append(CellComparison(table, dataset, metric, cell.combo, model, label,
                                            mean, std, len(values), float(cell.mean),
                                            float(cell.std), PAPER_SEEDS, p, verdict))
        verdicts = [c.agrees for c in cells]
        result.cells += cells
        result.missing += missing
        result.summaries.append(TableSummary(
            table, dataset, metric, len(paper), len(cells), verdicts.count(True),
            verdicts.count(False), verdicts.count(None), len(missing)))
    if unmatched:
        left = rows.loc[sorted(unmatched)]
        which = "; ".join(f"{model} {'/'.join(dict.fromkeys(group['combo']))}"
                          for model, group in left.groupby("model"))
        result.notes.append(f"{len(left)} run(s) of models or combinations the paper does not "
                            f"report not compared ({which})")
    return result


def _number(value: float | None, spec: str) -> str:
    return "–" if value is None or math.isnan(value) else format(value, spec)


def _p(value: float | None) -> str:
    return "–" if value is None else "<0.001" if value < 1e-3 else f"{value:.3f}"


def _summary_lines(result: PaperComparison) -> list[str]:
    total = result.counts()
    lines = [f"Summary: {total['agree']} of {total['compared']} compared cells agree with the "
             f"paper ({total['disagree']} disagree, {total['untested']} untested); "
             f"{total['missing']} of {total['published']} published cells have no run here "
             "(missing, not failures)."]
    lines += [f"  {s.table} ({s.dataset}, {s.metric}): {s.agree} of {s.compared} agree, "
              f"{s.disagree} disagree, {s.untested} untested; {s.missing} of {s.published} "
              "published cells missing" for s in result.summaries]
    return lines


def _jsonable(value: Any) -> Any:
    """NaN → None, so the JSON is standard."""
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_jsonable(v) for v in value]
    return value


def format_comparison(result: PaperComparison, fmt: str = "text") -> str:
    """The comparison as text (a table, the summary, notes and the rule) or as JSON."""
    if fmt == "json":
        return json.dumps(_jsonable({
            "ok": result.ok, "message": result.message or None, "rule": RULE,
            "alpha": ALPHA, "paper_seeds": PAPER_SEEDS,
            "cells": [{**asdict(c), "delta": c.delta} for c in result.cells],
            "summary": {"total": result.counts(),
                        "tables": [asdict(s) for s in result.summaries]},
            "missing": [asdict(m) for m in result.missing],
            "notes": result.notes, "unreadable": result.unreadable}), indent=2,
            ensure_ascii=False)
    if fmt != "text":
        raise UserError(f"unknown format {fmt!r}; choose text or json")
    lines = [result.message] if result.message else []
    if result.cells:
        rows = [[c.table, c.dataset, c.metric, c.combo, c.label,
                 "–" if c.n == 0 else f"{mean_std(c.mean, c.std, c.n)} (n={c.n})",
                 f"{mean_std(c.paper_mean, c.paper_std, c.paper_n)} (n={c.paper_n})",
                 _number(c.delta, "+.2f"), _p(c.p), c.verdict] for c in result.cells]
        lines += ["Reproduced vs published (Flex-MoE paper, Tables 1, 2, 7–10): test metrics "
                  "in percent, mean ± population std over seeds.", "",
                  tabulate(rows, headers=["table", "data set", "metric", "combination", "model",
                                          "reproduced", "published", "Δ", "p", "verdict"],
                           tablefmt="github", disable_numparse=True), ""]
        lines += _summary_lines(result)
    lines += [f"Note: {n}." for n in result.notes]
    if result.unreadable:
        lines.append("Rows that could not be read (left out): " + "; ".join(result.unreadable))
    if result.cells:
        lines.append(RULE)
    return "\n".join(lines) + "\n"
