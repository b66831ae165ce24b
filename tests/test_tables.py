"""Result tables: mean ± std over seeds, paper row order, one column per model setting."""

from __future__ import annotations

import pandas as pd

from bench.tables import pivot


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
