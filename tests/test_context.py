"""Context lines (majority class, logistic regression), one-seed cells and the one-class
flag: what makes a results table readable at a glance."""

from __future__ import annotations

import numpy as np
import pandas as pd

from bench.artefacts.views import metric_view
from bench.cli.main import main
from bench.data.load import load_data
from bench.rendering.context import C_GRID, LOGREG, MAJORITY, context_metric, context_scores
from bench.rendering.tables import ONE_CLASS, ONE_CLASS_MARK, pivot, to_markdown
from bench.results.store import load_results
from tests.test_tables import _cells, _rows

SMALL = {"scale": 0.1}


def test_majority_line_is_the_training_majority_scored_on_test():
    run = load_data("synthetic-adni", SMALL).restrict("IGCB")
    train_y = run.labels[run.splits["train"]].numpy()
    test_y = run.labels[run.splits["test"]].numpy()
    majority = np.bincount(train_y).argmax()
    scores = context_scores("synthetic-adni", SMALL, 0, "IGCB")
    assert scores[MAJORITY]["acc"] == float((test_y == majority).mean())
    assert scores[MAJORITY]["auc"] == 0.5


def test_logistic_regression_line_is_selected_on_validation():
    from sklearn.linear_model import LogisticRegression

    run = load_data("synthetic-adni", SMALL).restrict("IG")

    def xy(split):
        idx = run.splits[split]
        return (np.concatenate([run.features[c][idx].numpy() for c in "IG"], 1),
                run.labels[idx].numpy())

    (xt, yt), (xv, yv), (xs, ys) = xy("train"), xy("val"), xy("test")
    fits = [LogisticRegression(C=c, max_iter=5000).fit(xt, yt) for c in C_GRID]
    best = max(fits, key=lambda m: (m.score(xv, yv), -m.C))  # first best (smallest C)
    got = context_scores("synthetic-adni", SMALL, 0, "IG")[LOGREG]["acc"]
    assert abs(got - best.score(xs, ys)) <= 1.0 / len(ys) + 1e-9


def test_context_metric_reads_each_combination_of_the_runs():
    rows = pd.DataFrame([{"dataset": "synthetic-adni", "data_options": SMALL, "split_seed": 0,
                          "combo": c} for c in ("IG", "IGCB")])
    out = context_metric(rows, "test_f1")
    assert set(out) == {"IG", "IGCB"} and set(out["IG"]) == {MAJORITY, LOGREG}
    assert context_metric(rows, "val_acc") == {}  # context is scored on test samples only


def _runs(one_class: bool = False, seeds=(0,)) -> pd.DataFrame:
    return pd.DataFrame([{"model": "tf", "combo": "IG", "seed": s, "test_acc": 0.5 + 0.01 * s,
                          "hparams": {}, "test_pred_counts": [0, 36, 0] if one_class
                          else [10, 20, 6]} for s in seeds])


def test_one_seed_prints_the_mean_alone_and_several_print_the_spread():
    assert pivot(_runs()).loc["IG", "tf"] == "50.00"
    assert pivot(_runs(seeds=(0, 1))).loc["IG", "tf"] == "50.50 ± 0.50"


def test_a_run_predicting_one_class_is_marked():
    assert pivot(_runs(one_class=True)).loc["IG", "tf"] == f"50.00 {ONE_CLASS_MARK}"
    table = pivot(_runs(), context={"IG": {MAJORITY: 0.4, LOGREG: 0.55}})
    assert list(table.columns) == ["tf", f"({MAJORITY})", f"({LOGREG})"]
    assert table.loc["IG", f"({LOGREG})"] == "55.00"


def test_paper_tables_footnote_one_class_runs_and_print_one_seed_means():
    ac = _cells("table1", unregistered=("i2moe",), seeds=(0,))
    rows = _rows(ac)
    rows["test_pred_counts"] = [[0, 5, 0] if m == "tf" else [1, 3, 1] for m in rows["model"]]
    md = to_markdown(metric_view(ac, rows, "quick"))
    assert ONE_CLASS in md and "±" not in md.split("*Published*")[0].split("*Reproduced*")[1]


def test_table_command_shows_context_and_the_one_class_mark(tmp_path, capsys):
    store = tmp_path / "r.sqlite"
    assert main(["run", "--models", "tf", "--combos", "IG", "--set", "epochs=1",
                 "--store", str(store)]) == 0
    out = capsys.readouterr().out
    assert f"({MAJORITY})" in out and f"({LOGREG})" in out and "±" not in out
    counts = load_results(store)["test_pred_counts"].iloc[0]
    assert isinstance(counts, list) and sum(counts) == load_results(store)["n_test"].iloc[0]

