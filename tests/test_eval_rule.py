"""``--data-option eval=all``: the released code's evaluation rule beside the suite's."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pandas as pd
import pytest

from bench.data.core import MultimodalData
from bench.data.load import load_data
from bench.identity.config import build_grid
from bench.training.run import execute
from tests.conftest import toy_arrays


def _data() -> MultimodalData:
    raw = toy_arrays(n=120)
    rows = np.arange(120)
    splits = {"train": rows[:80], "val": rows[80:100], "test": rows[100:]}  # partial samples
    return MultimodalData.from_arrays(raw, "toy", "custom", splits=splits)


def test_complete_rule_scores_only_samples_with_every_modality():
    data = _data()
    run = data.restrict("AB")
    obs = data.observed[:, :2]
    assert bool(obs[run.splits["test"]].all()) and run.excluded == {}
    assert run.splits["test"].numel() == int(obs[100:].all(1).sum())


def test_all_rule_scores_every_sample_with_one_modality_and_counts_the_rest():
    data = replace(_data(), eval_rule="all")
    run = data.restrict("AB")
    obs = data.observed[:, :2]
    for part, rows in (("val", slice(80, 100)), ("test", slice(100, 120))):
        assert run.splits[part].numel() == int(obs[rows].any(1).sum())
        assert run.excluded[part] == int((~obs[rows].any(1)).sum())
    assert bool(obs[run.splits["test"]].any(1).all())
    assert not bool(obs[run.splits["test"]].all(1).all())  # partial samples are scored


def test_an_unknown_rule_is_refused():
    with pytest.raises(ValueError, match="unknown evaluation rule 'some'"):
        replace(_data(), eval_rule="some").restrict("AB")


def _folder(root):
    root.mkdir()
    rng = np.random.default_rng(0)
    ids = [f"p{i}" for i in range(90)]
    pd.DataFrame({"id": ids, "label": [i % 2 for i in range(90)]}).to_csv(
        root / "labels.csv", index=False)
    for name, rows in (("A_a", ids), ("B_b", ids[:45] + ids[60:])):  # p45..p59 lack B
        x = pd.DataFrame(rng.normal(size=(len(rows), 3)), columns=["f0", "f1", "f2"])
        x.insert(0, "id", rows)
        x.to_csv(root / f"{name}.csv", index=False)
    split = ["train"] * 40 + ["test"] * 20 + ["val"] * 10 + ["train"] * 20
    pd.DataFrame({"id": ids, "split": split}).to_csv(root / "split.csv", index=False)
    return root


def test_eval_all_is_part_of_the_key_and_scores_through_the_missing_path(tmp_path):
    root = _folder(tmp_path / "study")
    (complete,) = build_grid(["tf"], f"folder:{root}", ["AB"], [0], overrides={"epochs": 1})
    (every,) = build_grid(["tf"], f"folder:{root}", ["AB"], [0], overrides={"epochs": 1},
                          data_options={"eval": "all"})
    assert complete.data_options["eval"] == "complete" and complete.key != every.key
    n_complete = load_data(f"folder:{root}").restrict("AB").splits["test"].numel()
    row = execute(every)
    assert row["status"] == "ok" and row["n_test"] == 20 > n_complete == 5
    with pytest.raises(ValueError, match="eval='none' is not valid"):
        load_data(f"folder:{root}", {"eval": "none"})
