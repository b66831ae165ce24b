"""Reproduced vs published: a store's paper-profile runs on the real data sets against the
paper's cells, through a real store of rows shaped like the runner's."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
from scipy.stats import ttest_ind_from_stats

from bench.artefacts.paper import (
    NO_PAPER_RUNS,
    NO_REAL_DATA,
    RULE,
    UNTESTED_ONE_SEED,
    UNTESTED_ZERO_STD,
    against_paper,
    format_comparison,
)
from bench.identity.config import KEY_VERSION
from bench.results.store import ResultStore, load_results

HPARAMS = {"lr": 1e-4, "batch_size": 8, "epochs": 50, "weight_decay": 0.0}


def _row(model: str, combo: str, seed: int, acc: float | str | None, *, dataset: str = "adni",
         profile: str = "paper", status: str = "ok", key_version: int | None = KEY_VERSION,
         hparams: dict | None = None, tag: str = "", options: dict | None = None) -> dict:
    """A stored run as the runner writes it (only the columns the comparison reads filled)."""
    return {"key": f"{dataset}-{profile}-{model}-{combo}-{seed}-{key_version}{tag}",
            "key_version": key_version, "status": status, "model": model, "dataset": dataset,
            "combo": combo, "seed": seed, "profile": profile, "split_seed": 0,
            "hparams": hparams or HPARAMS,
            "data_options": {"eval": "complete", "root": "data/adni", "split_file": None,
                             **(options or {})},
            "test_acc": acc, "test_f1": acc, "test_auc": acc,
            "created_at": f"2026-01-01T00:00:0{seed}+00:00"}


AGREE = (0.655, 0.662, 0.668)  # Flex-MoE IGCB; published 66.11 ± 1.14
DISAGREE = (0.50, 0.51, 0.52)  # Flex-MoE IG; published 61.08 ± 0.78


def _store(path, rows: list[dict]):
    with ResultStore(path) as store:
        for row in rows:
            store.write(row)
    return load_results(path)


@pytest.fixture(scope="module")
def result(tmp_path_factory):
    rows = [_row("flexmoe", "IGCB", s, v) for s, v in enumerate(AGREE)]
    rows += [_row("flexmoe", "IG", s, v) for s, v in enumerate(DISAGREE)]
    rows += [_row("mmformer", "IGCB", 0, 0.60)]  # one seed
    rows += [_row("limoe", "CB", s, 0.4398) for s in range(3)]  # 43.98 ± 0.00 in the paper
    rows += [_row("i2moe", "IGCB", 0, 0.7)]  # no published numbers
    rows += [_row("flexmoe", "IGCB", 0, 0.1, profile="quick"),  # neither is compared
             _row("flexmoe", "IGCB", 1, 0.1, key_version=KEY_VERSION - 1),
             _row("flexmoe", "IGCB", 2, None, status="failed", tag="f"),
             _row("flexmoe", "IGCB", 0, 0.1, dataset="synthetic-adni"),
             _row("flexmoe", "IGCB", 0, 0.1, tag="m",  # on other data: imposed missingness
                  options={"missing": "mcar", "missing_rate": 0.4, "missing_seed": 0})]
    return against_paper(_store(tmp_path_factory.mktemp("paper") / "r.sqlite", rows))


def _cell(result, table: str, model: str, combo: str):
    (cell,) = [c for c in result.cells
               if (c.table, c.model, c.combo) == (table, model, combo)]
    return cell


def test_a_close_cell_agrees_and_a_distant_one_disagrees(result):
    agree = _cell(result, "Table 1", "flexmoe", "IGCB")
    assert agree.verdict == "agrees" and agree.agrees and agree.p >= 0.05
    assert agree.n == 3 and agree.paper_n == 3 and agree.label == "Flex-MoE"
    assert agree.mean == pytest.approx(np.mean(AGREE) * 100)
    assert agree.std == pytest.approx(np.std(AGREE) * 100)  # population std, as printed
    assert agree.delta == pytest.approx(np.mean(AGREE) * 100 - 66.11)
    worse = _cell(result, "Table 1", "flexmoe", "IG")
    assert worse.verdict == "disagrees" and worse.agrees is False and worse.p < 0.001
    assert worse.delta == pytest.approx(51.0 - 61.08) and worse.delta < 0


def test_welch_test_on_sample_stds_of_both_sides(result):
    """Both sides print population stds; the test takes sample stds (ddof=1)."""
    cell = _cell(result, "Table 1", "flexmoe", "IG")
    values = np.array(DISAGREE) * 100
    expected = ttest_ind_from_stats(values.mean(), values.std(ddof=1), 3, 61.08,
                                    0.78 * math.sqrt(3 / 2), 3, equal_var=False).pvalue
    assert cell.p == pytest.approx(expected)


def test_one_seed_and_zero_std_on_both_sides_are_untested(result):
    one = _cell(result, "Table 1", "mmformer", "IGCB")
    assert one.verdict == UNTESTED_ONE_SEED == "untested: 1 seed"
    assert one.p is None and one.agrees is None and one.n == 1
    assert one.delta == pytest.approx(60.0 - 58.92)
    flat = _cell(result, "Table 1", "limoe", "CB")
    assert flat.verdict == UNTESTED_ZERO_STD and flat.p is None


def test_summary_counts_and_missing_cells(result):
    (t1,) = [s for s in result.summaries if s.table == "Table 1"]
    assert (t1.published, t1.compared, t1.agree, t1.disagree, t1.untested, t1.missing) == \
        (110, 4, 1, 1, 2, 106)
    assert [s.table for s in result.summaries] == ["Table 1", "Table 7", "Table 8"]  # no MIMIC
    assert result.counts()["missing"] == 3 * 106 == len(result.missing)
    assert ("Table 1", "adni", "acc", "IG", "tf") in {
        (m.table, m.dataset, m.metric, m.combo, m.model) for m in result.missing}
    assert result.ok  # disagreement is information, not a failure


def test_rows_left_out_are_explained(result):
    notes = " ".join(result.notes)
    assert "1 failed paper-profile run" in notes
    assert "1 run(s) keyed by an older version" in notes
    assert "1 run(s) of other profiles (quick)" in notes
    assert "i2moe IGCB" in notes  # no published numbers: not compared
    assert "no successful paper-profile runs on mimic: Tables 2, 9, 10 not compared" in notes


def test_text_output_has_the_table_summary_and_rule(result):
    text = format_comparison(result)
    header = next(line for line in text.splitlines() if line.startswith("| table"))
    assert [h.strip() for h in header.strip("|").split("|")] == [
        "table", "data set", "metric", "combination", "model", "reproduced", "published", "Δ",
        "p", "verdict"]
    assert "66.17 ± 0.53 (n=3)" in text and "66.11 ± 1.14 (n=3)" in text
    assert "-10.08" in text and "untested: 1 seed" in text
    assert "Table 1 (adni, acc): 1 of 4 agree, 1 disagree, 2 untested; 106 of 110" in text
    assert RULE in text and "little power" in RULE and "no evidence of a difference" in RULE


def test_json_output(result):
    out = json.loads(format_comparison(result, fmt="json"))
    assert out["ok"] is True and out["message"] is None and out["rule"] == RULE
    cell = next(c for c in out["cells"] if (c["table"], c["model"], c["combo"]) ==
                ("Table 1", "flexmoe", "IG"))
    assert cell["verdict"] == "disagrees" and cell["delta"] == pytest.approx(-10.08)
    one = next(c for c in out["cells"] if c["model"] == "mmformer")
    assert one["std"] is None and one["p"] is None  # NaN is written as null
    assert out["summary"]["total"]["compared"] == 12 and len(out["missing"]) == 318
    assert [t["agree"] for t in out["summary"]["tables"]][0] == 1
    with pytest.raises(ValueError, match="unknown format 'html'"):
        format_comparison(result, fmt="html")


def test_without_real_data_there_is_nothing_to_compare(tmp_path):
    df = _store(tmp_path / "r.sqlite", [_row("tf", "IG", 0, 0.5, dataset="synthetic-adni")])
    result = against_paper(df)
    assert result.message == NO_REAL_DATA and result.ok and not result.cells
    assert format_comparison(result).strip() == NO_REAL_DATA
    assert json.loads(format_comparison(result, "json"))["message"] == NO_REAL_DATA
    assert against_paper(_store(tmp_path / "empty.sqlite", [])).message == NO_REAL_DATA


def test_real_data_runs_of_other_profiles_only_are_not_compared(tmp_path):
    df = _store(tmp_path / "r.sqlite", [_row("tf", "IG", 0, 0.5, profile="quick")])
    result = against_paper(df)
    assert result.message == NO_PAPER_RUNS and not result.cells and result.ok
    assert "other profiles (quick)" in format_comparison(result)


def test_runs_under_other_settings_are_compared_apart(tmp_path):
    rows = [_row("flexmoe", "GC", s, 0.6) for s in range(2)]
    rows += [_row("flexmoe", "GC", s, 0.3, hparams={**HPARAMS, "epochs": 20}, tag="e20")
             for s in range(2)]
    result = against_paper(_store(tmp_path / "r.sqlite", rows))
    cells = [c for c in result.cells if c.table == "Table 1"]
    assert sorted((c.label, c.mean) for c in cells) == [
        ("Flex-MoE (epochs=20)", pytest.approx(30.0)), ("Flex-MoE (epochs=50)",
                                                        pytest.approx(60.0))]
    assert next(c for c in cells if c.mean < 50).verdict == "disagrees"  # 30 vs 60.60 ± 0.26


def test_unreadable_rows_make_the_result_not_ok(tmp_path):
    rows = [_row("flexmoe", "IGCB", s, v) for s, v in enumerate(AGREE)]
    rows.append(_row("tf", "IGCB", 0, "n/a"))
    result = against_paper(_store(tmp_path / "r.sqlite", rows))
    assert not result.ok and len(result.unreadable) == 1 and "tf adni IGCB" in \
        result.unreadable[0]
    assert _cell(result, "Table 1", "flexmoe", "IGCB").verdict == "agrees"
    assert "could not be read" in format_comparison(result)


def test_rows_that_are_not_a_store_are_refused():
    with pytest.raises(ValueError, match="lack column"):
        against_paper(pd.DataFrame({"dataset": ["adni"]}))
