"""Result tables: mean ± std over seeds, paper row order, one column per model setting."""

from __future__ import annotations

import io

import pandas as pd
import pytest

from bench.artefacts.catalogue import ARTEFACTS
from bench.artefacts.spec import ABLATIONS, ADNI_COMBOS, ArtefactCells, DatasetChoice
from bench.artefacts.views import ablation_view, complexity_view, metric_view
from bench.identity.config import RunConfig as Cell
from bench.rendering.tables import pivot, select_runs, to_csv, to_html, to_latex, to_markdown


def test_table_splits_a_model_only_for_settings_that_differ_on_one_combination():
    rows = [
        {"model": "tf", "combo": "IG", "seed": s, "test_acc": 0.5 + s / 100,
         "hparams": {"subnet_dim": 128, "lr": 1e-4}} for s in (0, 1)] + [
        {"model": "tf", "combo": "IGCB", "seed": 0, "test_acc": 0.6,
         "hparams": {"subnet_dim": 16, "lr": 1e-4}},
        {"model": "tf", "combo": "IGCB", "seed": 0, "test_acc": 0.7,
         "hparams": {"subnet_dim": 16, "lr": 1e-3}}]
    table = pivot(pd.DataFrame(rows))
    assert list(table.columns) == ["tf (lr=0.0001)", "tf (lr=0.001)"]
    assert list(table.index) == ["IG", "IGCB"]
    assert table.loc["IG", "tf (lr=0.0001)"] == "50.50 ± 0.50"  # population std over seeds
    assert table.loc["IG", "tf (lr=0.001)"] == "–"
    same = pivot(pd.DataFrame(rows[:3]))
    assert list(same.columns) == ["tf"]


def test_a_table_shows_one_set_of_data_options(caplog):
    """Runs of one cell on different data (another missingness, another scale) are never
    averaged: the latest run's data options by default, ``data_options`` to pick others."""
    base = {"eval": "complete", "scale": 0.1, "seed": 0, "split_file": None}
    mcar = {**base, "missing": "mcar", "missing_rate": 0.2, "missing_seed": 0}
    rows = pd.DataFrame([
        {"key": k, "status": "ok", "dataset": "synthetic-adni", "profile": "quick",
         "model": "tf", "combo": "IG", "seed": 0, "test_acc": acc, "hparams": {},
         "data_options": {**opts, "split_file": where}}
        for k, acc, opts, where in (("a", 0.5, base, None), ("b", 0.7, mcar, None),
                                    ("c", 0.6, base, "/data/split.csv"))])
    with caplog.at_level("WARNING"):
        latest, _, _ = select_runs(rows)
    assert latest["key"].tolist() == ["a", "c"]  # where the data live does not split them
    assert "1 synthetic-adni quick run(s) under other data options" in caplog.text
    assert "missing=mcar, missing_rate=0.2, missing_seed=0" in caplog.text
    assert pivot(latest).loc["IG", "tf"] == "55.00 ± 5.00"
    picked, _, _ = select_runs(rows, data_options={"scale": 0.1, "missing": "mcar",
                                                   "missing_rate": 0.2})
    assert picked["key"].tolist() == ["b"]
    with pytest.raises(ValueError, match="no successful 'synthetic-adni' quick run with the "
                                         "data options eval=complete, missing=mnar"):
        select_runs(rows, data_options={"scale": 0.1, "missing": "mnar"})


# --- paper tables rendered from fake store rows --------------------------------------------

def _cells(artefact_id: str, unregistered: tuple[str, ...] = (), real: bool = False,
           seeds: tuple[int, ...] = (0, 1)) -> ArtefactCells:
    art = ARTEFACTS[artefact_id]
    sweeps = [(s, [Cell(m, "adni" if real else "synthetic-adni", c, seed, {"epochs": 3},
                        data_options={} if real else {"scale": 0.1})
                   for m in s.models if m not in unregistered for c in s.combos
                   for seed in seeds]) for s in art.sweeps]
    return ArtefactCells(art, DatasetChoice("adni" if real else "synthetic-adni", real,
                                            "" if real else "synthetic stand-in"),
                         sweeps, unregistered)


def _rows(ac: ArtefactCells, failed: set[tuple[str, str]] = frozenset(),
          fvcore: bool = False) -> pd.DataFrame:
    """One stored row per cell: accuracy rises with the model's position, +0.2 % per seed."""
    order = {m: i for i, m in enumerate(dict.fromkeys(m for s in ac.artefact.sweeps
                                                      for m in s.models))}
    rows = []
    for c in ac.cells:
        acc = 0.40 + 0.01 * order[c.model] + 0.002 * c.seed
        row = {"key": c.key, "model": c.model, "combo": c.combo, "seed": c.seed,
               "status": "ok", "error": None, "test_acc": acc, "test_f1": acc - 0.05,
               "test_auc": acc + 0.2, "ms_per_iter_median": 30.0, "s_per_epoch": 6.0,
               "flops_per_sample": 2.0e8, "params": 1_000_000 + order[c.model],
               "device": "cpu", "device_name": "x86_64", "threads": 2, "epochs": 3,
               "code_version": "0.1.0+abc"}
        if fvcore:
            row["fvcore_flops_per_sample"] = 1.0e8
        if (c.model, c.combo) in failed:
            row.update(status="failed", error="RuntimeError: boom", test_acc=None)
        rows.append(row)
    return pd.DataFrame(rows)


def _line(markdown: str, first: str) -> str:
    return next(ln for ln in markdown.splitlines()
                if ln.startswith("|") and ln.split("|")[1].strip() == first)


def test_metric_table_shape_order_bold_and_paper_numbers():
    ac = _cells("table1", unregistered=("i2moe",))
    view = metric_view(ac, _rows(ac, failed={("mag", "IG")}), "quick")
    repro, paper = view.panels
    assert [p.name for p in view.panels] == ["Reproduced", "Published"]  # no Δ on synthetic
    assert paper.mean.shape == (11, 11) and repro.mean.shape == (11, 13)
    assert list(repro.mean.index) == list(ADNI_COMBOS)
    assert list(repro.mean.columns)[0] == "[59] Venugopalan"
    assert list(repro.mean.columns)[-4:] == ["Flex-MoE", "I2MoE", "(majority class)",
                                             "(logistic regression)"]
    majority = repro.mean["(majority class)"]
    assert majority.between(30, 50).all() and repro.mean["(logistic regression)"].notna().all()
    assert not repro.ranks()[["(majority class)", "(logistic regression)"]].any().any()
    md = to_markdown(view)
    first, second = md.index("*Reproduced*"), md.index("*Published*")
    ig = _line(md[first:second], "IG")
    assert "**49.10 ± 0.10**" in ig and "<u>48.10 ± 0.10</u>" in ig  # Flex-MoE, FuseMoE
    notes = view.footnotes()
    assert notes == ["run failed: RuntimeError: boom", "model not registered",
                     "not in the paper"]
    cells = [c.strip() for c in ig.split("|")[1:-1]]
    assert cells[7] == "–¹" and cells[11] == "–²"  # MAG failed, I2MoE not registered
    published_ig = [c.strip() for c in _line(md[second:], "IG").split("|")[1:-1]]
    assert published_ig[10] == "**61.08 ± 0.78**" and published_ig[9] == "<u>60.41 ± 0.87</u>"
    assert published_ig[11] == "–³"
    assert "¹ run failed: RuntimeError: boom" in md and "synthetic stand-in" in view.caption
    assert "seeds 0, 1" in view.caption and "code 0.1.0+abc" in view.caption


def test_real_data_adds_the_difference_panel():
    ac = _cells("table1", unregistered=("i2moe",), real=True)
    view = metric_view(ac, _rows(ac), "paper")
    delta = view.panels[2]
    assert delta.name.startswith("Δ")
    assert delta.mean.loc["IG", "Flex-MoE"] == pytest.approx(49.10 - 61.08)
    assert "-11.98" in _line(to_markdown(view).split("*Δ")[1], "IG")


def test_latex_html_and_csv_carry_the_same_cells():
    ac = _cells("table2", unregistered=("i2moe", "limoe"))
    view = metric_view(ac, _rows(ac), "quick")
    tex = to_latex(view)
    for token in (r"\toprule", r"\midrule", r"\bottomrule", r"\textbf{45.10 $\pm$ 0.10}",
                  r"\underline{44.10 $\pm$ 0.10}", r"--\textsuperscript{1}"):
        assert token in tex
    page = to_html(view)
    assert "<b>45.10 ± 0.10</b>" in page and "<sup>1</sup> model not registered" in page
    long = pd.read_csv(io.StringIO(to_csv(view)), keep_default_na=False)
    assert set(long["panel"]) == {"Reproduced", "Published"}
    assert len(long) == 4 * (7 + 2) + 4 * 7  # the reproduced panel adds two context lines
    best = long[(long["panel"] == "Reproduced") & (long["rank"] == 1)]
    assert set(best["column"]) == {"Flex-MoE"}
    limoe = long[long["column"] == "LIMoE"].groupby("panel")["note"].unique()
    assert list(limoe["Reproduced"]) == ["model not registered"]
    assert list(limoe["Published"]) == [""]


def test_ablation_table_ranks_per_column_beside_the_paper():
    ac = _cells("table3")
    view = ablation_view(ac, _rows(ac), "quick")
    (panel,) = view.panels
    assert list(panel.mean.columns) == ["ACC", "F1", "paper ACC", "paper F1"]
    context = ["(majority class)", "(logistic regression)"]
    assert list(panel.mean.index) == list(ABLATIONS.values()) + context
    assert panel.mean.loc[context, ["ACC", "F1"]].notna().all().all()
    assert panel.ranks().loc["Flex-MoE", "paper ACC"] == 1
    ranks = panel.ranks()["ACC"]  # the fake accuracy rises down the rows
    assert ranks["sorting: ascending"] == 1 and ranks["sorting: random"] == 2
    assert ranks.drop(["sorting: ascending", "sorting: random"]).eq(0).all()


@pytest.mark.parametrize("fvcore", [False, True])
def test_complexity_table_shows_fvcore_only_when_stored(fvcore):
    ac = _cells("table4", unregistered=("fusemoe",))
    view = complexity_view(ac, _rows(ac, fvcore=fvcore), "quick")
    (panel,) = view.panels
    assert list(panel.mean.index.get_level_values(0)[:6]) == ["IG"] * 6
    assert list(panel.mean.index.get_level_values(1)[:8]) == [
        "TF", "MulT", "MAG", "LIMoE", "FuseMoE", "Flex-MoE", "(majority class)",
        "(logistic regression)"]
    assert panel.mean.loc[("IG", "(logistic regression)"), "ACC"] > 30
    assert ("GFLOPs (MACs, fvcore)" in panel.mean.columns) is fvcore
    assert {"ms / step", "s / epoch", "paper time (s)", "params", "ACC"} <= set(
        panel.mean.columns)
    md = to_markdown(view)
    assert "1,000,005" in md and "36,516,807" in md and "most likely per epoch" in md
    fuse = next(r for r in (ln.split("|")[1:-1] for ln in md.splitlines() if ln[:1] == "|")
                if [c.strip() for c in r[:2]] == ["IG", "FuseMoE"])
    assert fuse[2].strip() == "–¹" and fuse[-1].strip() == "60.41 ± 0.87"


def test_a_timing_taken_on_a_busy_machine_is_footnoted_in_table4():
    """A run whose process got little of its threads' CPU time (stored with it) is marked
    where Table 4 shows its time, and only there; one that got its share is not."""
    ac = _cells("table4")
    rows = _rows(ac)
    rows["cpu_share"], rows["load_avg"] = 0.97, 0.4
    busy = (rows["model"] == "flexmoe") & (rows["combo"] == "IG")
    rows.loc[busy, ["cpu_share", "load_avg"]] = [0.31, 6.8]
    (panel,) = complexity_view(ac, rows, "quick").panels
    note = panel.notes.loc[("IG", "Flex-MoE"), "ms / step"]
    assert "timed on a busy machine: the run got 31% of its threads' CPU time" in note
    assert "load average 6.8" in note and panel.notes.loc[("IG", "Flex-MoE"), "ACC"] == ""
    assert panel.notes.loc[("IG", "TF"), "ms / step"] == ""


def test_contention_reads_the_cpu_share_of_a_run():
    from bench.training.run import contention

    assert contention({"cpu_share": 0.95, "load_avg": 1.0}) == ""
    assert contention({"cpu_share": None}) == "" and contention({}) == ""
    assert "40%" in contention({"cpu_share": 0.4, "load_avg": 3.0})


def test_a_note_over_several_combinations_counts_runs_not_seeds():
    from bench.artefacts.views import _note

    one_combo = pd.DataFrame({"combo": ["IG"] * 3, "status": ["ok", "ok", "failed"],
                              "error": [None, None, "RuntimeError: boom"],
                              "registered": [True] * 3})
    assert _note(one_combo).startswith("2 of 3 seeds")
    several = one_combo.assign(combo=["IG", "IGC", "IGCB"])
    assert _note(several).startswith("2 of 3 runs")
