"""From stored runs to the paper's tables and the tidy data behind its figures.

Every function takes an artefact's resolved cells (``bench.artefacts.spec.ArtefactCells``)
and the store as a DataFrame, so a table shows exactly the runs its grid asked for: a cell whose
model is not registered, whose runs failed or that has not run yet is "–" with the reason
in a footnote, never dropped. The published numbers come from ``results/paper``; the
difference (reproduced − published) is shown only on the real data sets.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from bench.artefacts.spec import ABLATIONS, MODEL_LABELS, ArtefactCells, model_label
from bench.data.load import data_identity
from bench.profiles import get_profile
from bench.rendering.context import CONTEXT, LIBRARY, context_metric
from bench.rendering.tables import ONE_CLASS, Panel, TableView, predicts_one_class
from bench.resources import shipped
from bench.training.run import contention

PAPER_DIR = shipped("paper")  # results/paper in a checkout, the package's copy when installed
UNREGISTERED = "model not registered"
NOT_IN_PAPER = "not in the paper"
NOT_RUN = "not run yet (run_bench.py reproduce)"


def published(file: str) -> pd.DataFrame:
    """One of the paper's tables as transcribed in ``results/paper``."""
    return pd.read_csv(PAPER_DIR / file)


def runs(ac: ArtefactCells, df: pd.DataFrame) -> pd.DataFrame:
    """One line per cell of the artefact (run or not), with its stored row if any and the
    index of its sweep; models that are not registered get one placeholder line per combo."""
    cells = [{"key": c.key, "model": c.model, "combo": c.combo, "seed": c.seed, "sweep": i}
             for i, (_, cs) in enumerate(ac.sweeps) for c in cs]
    cells += [{"key": None, "model": m, "combo": combo, "seed": None, "sweep": i}
              for i, (sweep, _) in enumerate(ac.sweeps) for m in sweep.models
              if m in ac.unregistered for combo in sweep.combos]
    frame = pd.DataFrame(cells, columns=["key", "model", "combo", "seed", "sweep"])
    stored = df.drop(columns=["model", "combo", "seed"], errors="ignore")
    out = frame.merge(stored, on="key", how="left") if len(stored) else frame
    if "status" not in out:
        out["status"] = None
    if "error" not in out:
        out["error"] = None
    out["registered"] = ~out["model"].isin(ac.unregistered)
    return out


def _note(group: pd.DataFrame) -> str:
    """Why a cell is missing or partial ("" when every expected seed finished)."""
    if not group["registered"].all():
        return UNREGISTERED
    ok = int((group["status"] == "ok").sum())
    errors = group.loc[group["status"] == "failed", "error"].dropna()
    reason = f"run failed: {str(errors.iloc[0]).strip().splitlines()[-1][:160]}" if len(
        errors) else NOT_RUN
    if ok == 0:
        return reason
    return "" if ok == len(group) else f"{ok} of {len(group)} {_unit(group)} ({reason})"


def _unit(group: pd.DataFrame) -> str:
    """What a cell's runs are: its seeds, or — a cell over several combinations (a model's
    line in a figure) — runs."""
    return "seeds" if group["combo"].nunique() <= 1 else "runs"


def summarise(frame: pd.DataFrame, by: list[str], column: str,
              scale: float = 1.0) -> pd.DataFrame:
    """Mean and population std over seeds of ``column`` × ``scale``, the number of finished
    seeds and each cell's note, indexed by ``by`` (in order of first appearance)."""
    records, index = [], []
    for keys, group in frame.groupby(by, sort=False):
        ok = group.loc[group["status"] == "ok", column] if column in group else []
        values = pd.to_numeric(pd.Series(ok, dtype=object), errors="coerce").dropna()
        values = values.to_numpy(float) * scale
        one = int(predicts_one_class(group[group["status"] == "ok"]).sum())
        note = _note(group)
        if one:
            flag = ONE_CLASS + (f" ({one} of {len(values)} {_unit(group)})"
                                if len(values) > 1 else "")
            note = f"{note}; {flag}" if note else flag
        records.append({"mean": values.mean() if len(values) else np.nan,
                        "std": float(np.std(values, ddof=0)) if len(values) > 1 else np.nan,
                        "n": len(values), "note": note})
        index.append(keys if isinstance(keys, tuple) else (keys,))
    labels = (pd.MultiIndex.from_tuples(index, names=by) if len(by) > 1
              else pd.Index([k[0] for k in index], name=by[0]))
    return pd.DataFrame(records, index=labels, columns=["mean", "std", "n", "note"])


def _grid(stats: pd.DataFrame, rows: list, cols: list, field: str) -> pd.DataFrame:
    """``stats[field]`` indexed by (row, model) as a rows × columns frame."""
    return stats[field].unstack().reindex(index=rows, columns=cols)


def caption(ac: ArtefactCells, frame: pd.DataFrame, profile: str, extra: str = "") -> str:
    """Data set (with the data options every run shares: an artefact whose sweeps vary one,
    e.g. ``missing``, says so in ``extra``), profile, seeds, epochs, device and code version
    of the runs shown."""
    ok = frame[frame["status"] == "ok"]
    first = data_identity(ac.cells[0].data_options) if ac.cells else {}
    options = ", ".join(f"{k}={v}" for k, v in sorted(first.items())
                        if v is not None and all(k in c.data_options and c.data_options[k] == v
                                                 for c in ac.cells))
    data = ac.dataset.name + (f" ({options})" if options else "")
    if ac.dataset.note:
        data += f" — {ac.dataset.note}"
    seeds = sorted({int(s) for s in (ok["seed"] if len(ok) else frame["seed"].dropna())})

    def values(column: str) -> str:
        vals = ok[column].dropna() if column in ok else pd.Series([], dtype=object)
        text = {str(int(v)) if isinstance(v, float) and v.is_integer() else str(v) for v in vals}
        return ", ".join(sorted(text)) or "n/a"

    devices = sorted({f"{r.device} ({r.device_name}, {int(r.threads)} threads)"
                      for r in ok.itertuples()}) if len(ok) else ["n/a"]
    epochs = values("epochs")
    parts = [f"Data set {data}.",
             f"Profile {profile} ({get_profile(profile).purpose}); seeds "
             f"{', '.join(map(str, seeds)) or 'n/a'}; epochs trained {epochs}; batch size "
             f"{values('batch_size')}; learning rate {values('lr')}; device "
             f"{'; '.join(devices)}; code {values('code_version')}.", extra]
    return " ".join(p for p in parts if p).strip()


#: What the context lines are, for every caption that shows them.
CONTEXT_NOTE = ("In parentheses, context computed by the suite on the same test samples and "
                "never ranked: the training split's majority class, and a logistic regression "
                "on the run's modalities (zeros for a missing one; L2 strength chosen on "
                f"validation; {LIBRARY}).")
_CELLS = ("Cells: mean ± population std over seeds (the mean alone for one seed), in percent; "
          "best per row in bold, second underlined. " + CONTEXT_NOTE)


def _label(line: str) -> str:
    return f"({line})"


def _context(ac: ArtefactCells, metric: str) -> dict[str, dict[str, float]]:
    """Context lines of an artefact's combinations (``bench.rendering.context``)."""
    cells = pd.DataFrame([{"dataset": c.dataset, "data_options": c.data_options,
                           "split_seed": c.split_seed, "combo": c.combo} for c in ac.cells])
    return context_metric(cells.drop_duplicates("combo"), metric) if len(cells) else {}


def metric_view(ac: ArtefactCells, df: pd.DataFrame, profile: str) -> TableView:
    """Tables 1, 2, 7–10: rows combinations, columns models; published and Δ panels."""
    art = ac.artefact
    sweep = art.sweeps[0]
    frame = runs(ac, df)
    frame["label"] = frame["model"].map(model_label)
    stats = summarise(frame, ["combo", "label"], art.metric, 100.0)
    rows, cols = list(sweep.combos), [model_label(m) for m in sweep.models]
    mean = _grid(stats, rows, cols, "mean").rename_axis(index="combo", columns=None)
    std = _grid(stats, rows, cols, "std").rename_axis(index="combo", columns=None)
    notes = _grid(stats, rows, cols, "note").fillna("").rename_axis(index="combo", columns=None)
    context = _context(ac, art.metric)
    for line in CONTEXT:
        mean[_label(line)] = [context.get(c, {}).get(line, np.nan) * 100.0 for c in rows]
    panels = [Panel("Reproduced", mean, std, notes,
                    unranked=tuple(_label(line) for line in CONTEXT))]
    paper = published(art.paper_file)
    paper["column"] = paper["model"].map({p: lbl for lbl, p in MODEL_LABELS.values() if p})
    p_mean = paper.pivot(index="combo", columns="column", values="mean").reindex(
        index=rows, columns=cols).rename_axis(index="combo", columns=None)
    p_std = paper.pivot(index="combo", columns="column", values="std").reindex(
        index=rows, columns=cols).rename_axis(index="combo", columns=None)
    in_paper = {lbl for lbl, p in MODEL_LABELS.values() if p}
    p_notes = pd.DataFrame({c: "" if c in in_paper else NOT_IN_PAPER for c in cols}, index=rows)
    panels.append(Panel("Published", p_mean, p_std, p_notes.rename_axis(index="combo")))
    if ac.dataset.real:
        panels.append(Panel("Δ reproduced − published", mean[cols] - p_mean, rank=None,
                            formats=dict.fromkeys(cols, "+.2f")))
    name = art.id.replace("table", "Table ")
    return TableView(art.id, name, f"{art.title} on {ac.dataset.name}",
                     caption(ac, frame, profile, _CELLS), panels)


def ablation_view(ac: ArtefactCells, df: pd.DataFrame, profile: str) -> TableView:
    """Table 3: Flex-MoE and its variants on IGCB, ACC and F1 beside the published ones."""
    frame = runs(ac, df)
    labels = list(ABLATIONS.values())
    paper = published(ac.artefact.paper_file).set_index("variant").reindex(labels)
    mean, std, notes = {}, {}, {}
    for metric, col in (("test_acc", "ACC"), ("test_f1", "F1")):
        stats = summarise(frame, ["model"], metric, 100.0).reindex(list(ABLATIONS))
        stats.index = labels
        mean[col], std[col], notes[col] = stats["mean"], stats["std"], stats["note"]
    mean = pd.DataFrame({**mean, "paper ACC": paper["acc"], "paper F1": paper["f1"]})
    combo = ac.artefact.sweeps[0].combos[0]
    context = {col: _context(ac, metric).get(combo, {})
               for metric, col in (("test_acc", "ACC"), ("test_f1", "F1"))}
    for line in CONTEXT:
        mean.loc[_label(line)] = {col: ctx.get(line, np.nan) * 100.0
                                  for col, ctx in context.items()}
    std = pd.DataFrame(std).reindex(index=mean.index, columns=mean.columns)
    notes = pd.DataFrame(notes).reindex(index=mean.index, columns=mean.columns, fill_value="")
    notes = notes.fillna("")
    for frame_ in (mean, std, notes):
        frame_.index.name = "variant"
    panels = [Panel("Reproduced and published", mean, std, notes, rank="column",
                    unranked=tuple(_label(line) for line in CONTEXT))]
    if ac.dataset.real:
        delta = pd.DataFrame({"Δ ACC": mean["ACC"] - mean["paper ACC"],
                              "Δ F1": mean["F1"] - mean["paper F1"]}).loc[labels]
        panels.append(Panel("Δ reproduced − published", delta, rank=None,
                            formats={"Δ ACC": "+.2f", "Δ F1": "+.2f"}))
    extra = ("Mean ± population std over seeds, in percent (the paper prints means only); "
             "best per column in bold, second underlined. " + CONTEXT_NOTE)
    return TableView("table3", "Table 3", f"{ac.artefact.title} on {ac.dataset.name}",
                     caption(ac, frame, profile, extra), panels)


#: Table 4 columns: header → (store column, scale, format); fvcore only where stored.
_COST = {
    "ms / step": ("ms_per_iter_median", 1.0, ".1f"),
    "s / epoch": ("s_per_epoch", 1.0, ".2f"),
    "GFLOPs (MACs, fvcore)": ("fvcore_flops_per_sample", 1e-9, ".3f"),
    "GFLOP (FlopCounter)": ("flops_per_sample", 1e-9, ".3f"),
    "params": ("params", 1.0, ",.0f"),
    "ACC": ("test_acc", 100.0, ".2f"),
}
_PAPER_COST = {"paper time (s)": ("mean_time_s", ".2f"), "paper GFLOPs": ("gflops", ".2f"),
               "paper params": ("params", ",.0f"), "paper ACC": ("acc_mean", ".2f")}

COST_NOTE = (
    "Time: median milliseconds per training step (forward, backward and Adam step; the first "
    "10 steps excluded) and mean seconds per epoch; the paper's time column (12–39 s) is most "
    "likely per epoch. GFLOPs (MACs, fvcore): fvcore's count, one multiply-add = one FLOP, the "
    "paper's convention; GFLOP (FlopCounter): torch.utils.flop_counter, 2 FLOPs per "
    "multiply-add, along the real MoE routing; both per sample of one forward pass. Params: "
    "trainable parameters (the paper's totals are not reproducible from the released "
    "encoders). ACC: mean ± population std over seeds, %.")


def complexity_view(ac: ArtefactCells, df: pd.DataFrame, profile: str) -> TableView:
    """Table 4: per combination and model, time, FLOPs, parameters and accuracy, with the
    published figures beside (the fvcore column only when the store has it)."""
    frame = runs(ac, df)
    frame["label"] = frame["model"].map(model_label)
    sweep = ac.artefact.sweeps[0]
    index = pd.MultiIndex.from_tuples(
        [(c, model_label(m)) for c in sweep.combos for m in sweep.models],
        names=["combo", "model"])
    mean, std, notes, formats = {}, {}, {}, {}
    for header, (column, scale, fmt) in _COST.items():
        if column not in df.columns:
            continue
        stats = summarise(frame, ["combo", "label"], column, scale).reindex(index)
        mean[header], notes[header], formats[header] = stats["mean"], stats["note"], fmt
        if header in _TIMED:
            notes[header] = _with_contention(frame, stats["note"])
        std[header] = stats["std"] if header == "ACC" else pd.Series(np.nan, index=index)
    paper = published(ac.artefact.paper_file)
    paper.index = pd.MultiIndex.from_arrays([paper["combo"], paper["model"]])
    paper = paper.reindex(index)
    for header, (column, fmt) in _PAPER_COST.items():
        mean[header], formats[header] = paper[column], fmt
        std[header] = paper["acc_std"] if header == "paper ACC" else pd.Series(np.nan, index)
    order = [h for h in ("ms / step", "s / epoch", "paper time (s)", "GFLOPs (MACs, fvcore)",
                         "GFLOP (FlopCounter)", "paper GFLOPs", "params", "paper params",
                         "ACC", "paper ACC") if h in mean]
    mean, std = pd.DataFrame(mean)[order], pd.DataFrame(std)[order]
    context = _context(ac, "test_acc")
    for combo in sweep.combos:
        for line in CONTEXT:
            mean.loc[(combo, _label(line)), :] = np.nan
            mean.loc[(combo, _label(line)), "ACC"] = context.get(combo, {}).get(line,
                                                                               np.nan) * 100.0
    mean = mean.reindex(pd.MultiIndex.from_tuples(
        [(c, m) for c in sweep.combos for m in [model_label(x) for x in sweep.models]
         + [_label(line) for line in CONTEXT]], names=["combo", "model"]))
    std = std.reindex(index=mean.index)
    notes = pd.DataFrame(notes).reindex(index=mean.index, columns=order).astype(object)
    notes = notes.where(notes.notna(), "")
    panels = [Panel("Reproduced and published", mean, std, notes, rank=None, formats=formats)]
    if ac.dataset.real:
        delta = pd.DataFrame({"Δ ACC": panels[0].mean["ACC"] - panels[0].mean["paper ACC"]})
        panels.append(Panel("Δ reproduced − published", delta, rank=None,
                            formats={"Δ ACC": "+.2f"}))
    return TableView("table4", "Table 4", f"{ac.artefact.title} on {ac.dataset.name}",
                     caption(ac, frame, profile, f"{COST_NOTE} {CONTEXT_NOTE}"), panels)


#: Table 4's columns measured in time: a run timed on a busy machine is footnoted there.
_TIMED = ("ms / step", "s / epoch")


def _with_contention(frame: pd.DataFrame, notes: pd.Series) -> pd.Series:
    """``notes`` (by combination and model) with, where a finished run was timed on a busy
    machine (:func:`bench.training.run.contention`), that said too."""
    ok = frame[frame["status"] == "ok"]
    busy = {}
    for (combo, label), group in ok.groupby(["combo", "label"], sort=False):
        said = [contention(r) for _, r in group.iterrows()]
        said = [t for t in said if t]
        if said:
            busy[(combo, label)] = (said[0] if len(said) == 1 and len(group) == 1
                                    else f"{len(said)} of {len(group)} seeds {said[0]}")
    return pd.Series({k: "; ".join(t for t in (note if isinstance(note, str) else "",
                                               busy.get(k, "")) if t)
                      for k, note in notes.items()}, dtype=object).reindex(notes.index)


def sensitivity_data(ac: ArtefactCells, df: pd.DataFrame) -> pd.DataFrame:
    """Figure 6: ``axis, value, mean, std, n, note`` — test accuracy (%) per setting."""
    frame = runs(ac, df)
    stats = summarise(frame, ["sweep"], "test_acc", 100.0)
    meta = pd.DataFrame([{"sweep": i, "axis": s.axis, "value": s.value}
                         for i, (s, _) in enumerate(ac.sweeps)]).set_index("sweep")
    out = meta.join(stats)
    out["note"] = [ac.skipped.get(i) or (n if isinstance(n, str) else "")
                   for i, n in zip(out.index, out["note"])]
    return out.reset_index(drop=True)


def modalities_data(ac: ArtefactCells, df: pd.DataFrame) -> pd.DataFrame:
    """``model, modalities, mean, std, n``: test accuracy (%) over the combinations of each
    size and their seeds, per model (finished runs only)."""
    frame = runs(ac, df)
    ok = frame[frame["status"] == "ok"].assign(
        modalities=lambda f: f["combo"].str.len(), acc=lambda f: f["test_acc"] * 100.0)
    out = ok.groupby(["model", "modalities"], sort=False)["acc"].agg(
        mean="mean", std=lambda v: float(np.std(v, ddof=0)), n="count").reset_index()
    out["model"] = out["model"].map(model_label)
    return out


def cost_data(ac: ArtefactCells, df: pd.DataFrame) -> pd.DataFrame:
    """``model, combo, acc, gflop, params``: per model and combination, means over seeds."""
    frame = runs(ac, df)
    ok = frame[frame["status"] == "ok"]
    out = ok.groupby(["model", "combo"], sort=False).agg(
        acc=("test_acc", "mean"), gflop=("flops_per_sample", "mean"),
        params=("params", "mean")).reset_index()
    out["acc"] *= 100.0
    out["gflop"] *= 1e-9
    out["model"] = out["model"].map(model_label)
    return out
