"""Result tables: ``mean ± std`` over seeds, rows = combinations, columns = models.

:func:`pivot` and :func:`render` print a quick table of stored runs. A :class:`TableView`
is a paper table: one or more :class:`Panel` blocks (reproduced, published, difference)
with the best value per row in bold and the second underlined, and every missing cell
given as "–" with its reason in a numbered footnote. It renders as Markdown (tabulate),
LaTeX (booktabs), HTML and a long CSV that keeps the numbers, ranks and reasons.
"""

from __future__ import annotations

import html
import json
import logging
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from tabulate import tabulate

from bench.errors import UserError
from bench.profiles import paper_order
from bench.training.metrics import metric_columns, metric_of

logger = logging.getLogger(__name__)

#: The metrics a table can show: each declared metric on the test, then the validation split.
METRICS = metric_columns(("test", "val"))


def select_runs(df: pd.DataFrame, dataset: str | None = None, profile: str | None = None,
                data_options: Mapping[str, Any] | None = None
                ) -> tuple[pd.DataFrame, str, str]:
    """Successful runs of one data set, profile and set of data options (default: those of
    the latest run; ``data_options`` as given on the command line, the data set's defaults
    filling the rest), so a table never averages runs on different data.

    Runs keyed by an older recipe (``key_version``) are left out: their configuration was
    not fully recorded, so they cannot be told apart from today's runs of the same cell."""
    from bench.data.load import resolve_data
    from bench.identity.config import KEY_VERSION

    ok = df[df["status"] == "ok"]
    if ok.empty:
        raise UserError("the store holds no successful run yet")
    if "key_version" in ok:
        current = ok[ok["key_version"] == KEY_VERSION]
        if current.empty:
            raise UserError(f"the store holds only runs keyed by an older version of the suite "
                            f"(key version {sorted(set(ok['key_version'].dropna()))}); run the "
                            "grid again — old rows stay readable with "
                            "bench.results.store.load_results")
        ok = current
    dataset = dataset or ok["dataset"].iloc[-1]
    ok = ok[ok["dataset"] == dataset]
    if ok.empty:
        raise UserError(f"no successful run on data set {dataset!r}; stored data sets: "
                        f"{sorted(df['dataset'].unique())}")
    profile = profile or ok["profile"].iloc[-1]
    ok = ok[ok["profile"] == profile]
    if ok.empty:
        raise UserError(f"no successful {dataset!r} run with profile {profile!r}")
    if "data_options" not in ok:
        return ok, dataset, profile
    found = ok["data_options"].map(_option_text)
    wanted = (found.iloc[-1] if data_options is None
              else _option_text(resolve_data(dataset, dict(data_options))[1]))
    chosen = ok[found == wanted]
    others = sorted(set(found) - {wanted})
    if chosen.empty:
        raise UserError(f"no successful {dataset!r} {profile} run with the data options "
                        f"{wanted or 'of the defaults'}; stored: {'; '.join(others)}")
    if others:
        logger.warning("%d %s %s run(s) under other data options left out of the table (%s); "
                       "--data-option KEY=VALUE selects them", len(ok) - len(chosen), dataset,
                       profile, "; ".join(others))
    return chosen, dataset, profile


def _option_text(options: Any) -> str:
    """Data options as one comparable line, without where the data live."""
    from bench.data.load import data_identity

    opts = data_identity(options)
    return ", ".join(f"{k}={opts[k]}" for k in sorted(opts))


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


#: The mark and footnote of a cell where a run predicts one class for every test sample.
ONE_CLASS = "predicts one class for every test sample: not a ranking"
ONE_CLASS_MARK = "†"


def predicts_one_class(df: pd.DataFrame) -> pd.Series:
    """Whether each run's selected state predicts a single class for every test sample
    (rows stored before the counts were recorded are never flagged)."""
    if "test_pred_counts" not in df:
        return pd.Series(False, index=df.index)
    return df["test_pred_counts"].map(
        lambda c: isinstance(c, list) and sum(1 for v in c if v) == 1)


def mean_std(mean: float, std: float, n: int, spec: str = ".2f") -> str:
    """``mean ± std``, or the mean alone for a single seed (a zero std says nothing)."""
    return format(mean, spec) if n < 2 else f"{mean:{spec}} ± {std:{spec}}"


def pivot(df: pd.DataFrame, metric: str = "test_acc",
          context: dict[str, dict[str, float]] | None = None) -> pd.DataFrame:
    """``mean ± std`` in percent (population std over seeds, as the paper; the mean alone for
    one seed), :data:`ONE_CLASS_MARK` where a run predicts one class, and the ``context``
    lines (combination → line → value as a fraction, ``bench.rendering.context``) as last
    columns."""
    scale = 100.0 if metric_of(metric).percent else 1.0
    df = df.assign(column=_column_labels(df), value=df[metric] * scale,
                   one=predicts_one_class(df))
    stats = df.groupby(["combo", "column"]).agg(
        mean=("value", "mean"), std=("value", lambda v: float(np.std(v, ddof=0))),
        n=("value", "count"), one=("one", "any"))
    cells = stats.apply(lambda r: mean_std(r["mean"], r["std"], r["n"])
                        + (f" {ONE_CLASS_MARK}" if r["one"] else ""), axis=1)
    table = cells.unstack("column").reindex(paper_order(list(stats.index.unique("combo"))))
    order = [c for c in dict.fromkeys(df["column"]) if c in table.columns]
    table = table[order]
    lines = list(dict.fromkeys(k for v in (context or {}).values() for k in v))
    for line in lines:
        table[f"({line})"] = [f"{context[c][line] * scale:.2f}" if c in (context or {})
                              and line in context[c] else "–" for c in table.index]
    return table.fillna("–")


def render(table: pd.DataFrame, fmt: str = "markdown") -> str:
    """The table as Markdown (GitHub pipes) or CSV."""
    if fmt == "csv":
        return table.to_csv()
    if fmt == "markdown":
        return tabulate(table, headers="keys", tablefmt="github", stralign="center")
    raise UserError(f"unknown format {fmt!r}; choose markdown or csv")


_SUPERSCRIPT = str.maketrans("0123456789", "⁰¹²³⁴⁵⁶⁷⁸⁹")


@dataclass
class Panel:
    """One block of a table: numbers (NaN where missing), an optional ``± std`` part, the
    reason per missing or partial cell, and how to rank (per ``row``, ``column`` or not)."""

    name: str
    mean: pd.DataFrame
    std: pd.DataFrame | None = None
    notes: pd.DataFrame | None = None
    rank: str | None = "row"
    formats: dict[str, str] = field(default_factory=dict)
    #: Labels never bold or underlined (context lines): columns when ranking per row, rows
    #: when ranking per column.
    unranked: tuple = ()

    def note(self, row: object, col: object) -> str:
        if self.notes is None or row not in self.notes.index or col not in self.notes.columns:
            return ""
        value = self.notes.at[row, col]
        return value if isinstance(value, str) else ""

    def text(self, row: object, col: object, pm: str) -> str | None:
        """The formatted number of one cell (None when missing)."""
        mean = self.mean.at[row, col]
        if mean is None or (isinstance(mean, float) and math.isnan(mean)):
            return None
        spec = self.formats.get(col, ".2f")
        out = format(float(mean), spec)
        std = self.std_at(row, col)
        if std is not None and not (isinstance(std, float) and math.isnan(std)):
            out += pm + format(float(std), spec.lstrip("+"))
        return out

    def std_at(self, row: object, col: object) -> object:
        """The ``± std`` part of one cell (None where the panel has none for it)."""
        if self.std is None or row not in self.std.index or col not in self.std.columns:
            return None
        return self.std.at[row, col]

    def ranks(self) -> pd.DataFrame:
        """1 for the best value (all ties), 2 for the next distinct value, 0 otherwise;
        values are compared as printed (two decimals)."""
        out = pd.DataFrame(0, index=self.mean.index, columns=self.mean.columns)
        if self.rank is None:
            return out
        values = self.mean.astype(float).round(2)
        if self.rank == "row":
            values = values.drop(columns=[c for c in self.unranked if c in values.columns])
        else:
            values = values.drop(index=[r for r in self.unranked if r in values.index])
        lines = values.iterrows() if self.rank == "row" else values.items()
        for label, line in lines:
            for place, value in enumerate(sorted(line.dropna().unique(), reverse=True)[:2], 1):
                hits = line.index[line == value]
                if self.rank == "row":
                    out.loc[label, hits] = place
                else:
                    out.loc[hits, label] = place
        return out


@dataclass
class TableView:
    """A paper table: a name ("Table 1"), a title, a caption and its panels."""

    id: str
    name: str
    title: str
    caption: str
    panels: list[Panel]

    def footnotes(self) -> list[str]:
        """Distinct cell notes of every panel, in reading order; footnote k is index k-1."""
        seen: dict[str, None] = {}
        for p in self.panels:
            for r in p.mean.index:
                for c in p.mean.columns:
                    if p.note(r, c):
                        seen.setdefault(p.note(r, c))
        return list(seen)


@dataclass(frozen=True)
class _Style:
    bold: str
    under: str
    mark: str
    missing: str
    pm: str
    escape: Callable[[str], str]


def _tex(text: str) -> str:
    """Escape LaTeX's special characters in a label."""
    table = {"&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_", "{": r"\{",
             "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}",
             "\\": r"\textbackslash{}", "±": r"$\pm$", "–": "--", "—": "---", "−": "$-$",
             "×": r"$\times$", "Δ": r"$\Delta$", "≥": r"$\geq$"}
    return "".join(table.get(ch, ch) for ch in str(text))


_STYLES = {
    "markdown": _Style("**{}**", "<u>{}</u>", "{}", "–", " ± ", str),
    "plain": _Style("{}", "{}", "{}", "–", " ± ", str),
    "latex": _Style(r"\textbf{{{}}}", r"\underline{{{}}}", r"\textsuperscript{{{}}}", "--",
                    r" $\pm$ ", _tex),
    "html": _Style("<b>{}</b>", "<u>{}</u>", "<sup>{}</sup>", "–", " ± ", html.escape),
}


def _marker(number: int, style: _Style) -> str:
    return (style.mark.format(str(number).translate(_SUPERSCRIPT)) if style.mark == "{}"
            else style.mark.format(number))


def _body(view: TableView, panel: Panel, style: _Style) -> tuple[list[str], list[list[str]]]:
    """Header and rows of one panel as strings in ``style`` (index levels lead)."""
    numbers = {n: i + 1 for i, n in enumerate(view.footnotes())}
    ranks = panel.ranks()
    names = [n or "" for n in panel.mean.index.names]
    header = [style.escape(n) for n in names] + [style.escape(c) for c in panel.mean.columns]
    rows = []
    for r in panel.mean.index:
        labels = list(r) if isinstance(r, tuple) else [r]
        cells = []
        for c in panel.mean.columns:
            text = panel.text(r, c, style.pm)
            if text is None:
                text = style.missing
            elif ranks.at[r, c] == 1:
                text = style.bold.format(text)
            elif ranks.at[r, c] == 2:
                text = style.under.format(text)
            if panel.note(r, c):
                text += _marker(numbers[panel.note(r, c)], style)
            cells.append(text)
        rows.append([style.escape(str(v)) for v in labels] + cells)
    return header, rows


def to_markdown(view: TableView, title: bool = True) -> str:
    """GitHub Markdown: title (unless a heading gives it), caption, one pipe table per
    panel, numbered footnotes."""
    style = _STYLES["markdown"]
    parts = ([f"**{view.name}: {view.title}**", ""] if title else []) + [view.caption, ""]
    for panel in view.panels:
        header, rows = _body(view, panel, style)
        parts += [f"*{panel.name}*", "", tabulate(rows, headers=header, tablefmt="github",
                                                   stralign="center", disable_numparse=True), ""]
    parts += [f"{str(i).translate(_SUPERSCRIPT)} {note}  "
              for i, note in enumerate(view.footnotes(), 1)]
    return "\n".join(parts).rstrip() + "\n"


def to_latex(view: TableView) -> str:
    """One booktabs ``table`` (needs ``booktabs`` and ``graphicx``), a tabular per panel."""
    style = _STYLES["latex"]
    out = [r"\begin{table}[t]", r"\centering", r"\small",
           rf"\caption{{{_tex(view.title)}. {_tex(view.caption)}}}", rf"\label{{tab:{view.id}}}"]
    for i, panel in enumerate(view.panels):
        header, rows = _body(view, panel, style)
        lead = panel.mean.index.nlevels
        spec = "l" * lead + "c" * len(panel.mean.columns)
        out += [r"\medskip" if i else "", rf"\textit{{{_tex(panel.name)}}}\par",
                r"\resizebox{\linewidth}{!}{%", rf"\begin{{tabular}}{{{spec}}}", r"\toprule",
                " & ".join(header) + r" \\", r"\midrule"]
        out += [" & ".join(row) + r" \\" for row in rows]
        out += [r"\bottomrule", r"\end{tabular}}"]
    notes = view.footnotes()
    if notes:
        out.append(r"\par\footnotesize " + "; ".join(
            rf"\textsuperscript{{{i}}}\,{_tex(n)}" for i, n in enumerate(notes, 1)))
    out.append(r"\end{table}")
    return "\n".join(line for line in out if line) + "\n"


def to_html(view: TableView) -> str:
    """A ``<figure>`` holding the panels side by side and the footnotes (no scripts)."""
    style = _STYLES["html"]
    out = [f'<figure class="table" id="{html.escape(view.id)}">',
           f"<figcaption><b>{html.escape(view.name)}: {html.escape(view.title)}.</b> "
           f"{html.escape(view.caption)}</figcaption>", '<div class="panels">']
    for panel in view.panels:
        header, rows = _body(view, panel, style)
        lead = panel.mean.index.nlevels
        head = "".join(f"<th>{h}</th>" for h in header)
        body = "".join("<tr>" + "".join(f'<th scope="row">{v}</th>' if j < lead
                                        else f"<td>{v}</td>" for j, v in enumerate(row))
                       + "</tr>" for row in rows)
        out.append(f'<div class="panel"><h4>{html.escape(panel.name)}</h4><table>'
                   f"<thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></div>")
    out.append("</div>")
    notes = view.footnotes()
    if notes:
        out.append('<p class="notes">' + "<br>".join(
            f"<sup>{i}</sup> {html.escape(n)}" for i, n in enumerate(notes, 1)) + "</p>")
    out.append("</figure>")
    return "\n".join(out) + "\n"


def to_csv(view: TableView) -> str:
    """Long CSV, one line per cell: panel, index levels, column, mean, std, rank (1 bold,
    2 underlined), note — the numbers unformatted, so nothing is lost to rounding."""
    frames = []
    for panel in view.panels:
        ranks = panel.ranks()
        names = [n or f"level_{i}" for i, n in enumerate(panel.mean.index.names)]
        for r in panel.mean.index:
            labels = dict(zip(names, r if isinstance(r, tuple) else (r,)))
            for c in panel.mean.columns:
                std = panel.std_at(r, c)
                frames.append({"panel": panel.name, **labels, "column": c,
                               "mean": panel.mean.at[r, c], "std": std,
                               "rank": int(ranks.at[r, c]), "note": panel.note(r, c)})
    return pd.DataFrame(frames).to_csv(index=False)
