"""The data interface: combination index, the paper's restrict protocol, splits, batches, errors."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from bench.data.core import MultimodalData, combinations
from bench.data.load import load_data
from bench.data.splits import make_split, read_split_file
from bench.errors import UserError
from bench.registry import create_dataset
from tests.conftest import toy_arrays

ADNI_COUNTS = {"IGCB": 1474, "C": 479, "ICB": 127, "GCB": 122, "IC": 157, "CB": 21}


def test_combination_index_matches_official_order():
    assert combinations("IGCB") == ("IGCB", "IGC", "IGB", "ICB", "GCB", "IG", "IC", "IB", "GC",
                                    "GB", "CB", "I", "G", "C", "B")
    assert combinations("LNC") == ("LNC", "LN", "LC", "NC", "L", "N", "C")


def test_combo_index_per_sample(toy_data):
    idx = toy_data.combo_index("AC")
    obs = toy_data.observed[:, [0, 2]]
    expected = torch.where(obs.all(1), 0, torch.where(obs[:, 0], 1, torch.where(obs[:, 1], 2, -1)))
    assert torch.equal(idx, expected)


def test_synthetic_adni_reproduces_paper_combination_counts(adni):
    assert adni.combo_counts() == ADNI_COUNTS
    assert len(adni.labels) == 2380


def test_restrict_follows_paper_protocol(adni):
    full_val = None
    for combo in ("IG", "IC", "GB", "IGC", "IGCB"):
        view = adni.restrict(combo)
        cols = [adni.letters.index(c) for c in combo]
        obs = adni.observed[:, cols]
        assert obs[view.splits["train"]].any(1).all()
        expected_train = adni.splits["train"][obs[adni.splits["train"]].any(1)]
        assert torch.equal(view.splits["train"], expected_train)
        for part in ("val", "test"):
            assert obs[view.splits[part]].all(1).all()
        assert (view.combo[view.splits["val"]] == 0).all()
        # val/test are drawn from fully observed samples: the same for every combination
        full_val = view.splits["val"] if full_val is None else full_val
        assert torch.equal(view.splits["val"], full_val)


def test_split_is_a_function_of_its_seed(adni):
    a = make_split(adni.observed.numpy(), adni.labels.numpy(), 0)
    b = make_split(adni.observed.numpy(), adni.labels.numpy(), 0)
    c = make_split(adni.observed.numpy(), adni.labels.numpy(), 1)
    for part in a:
        np.testing.assert_array_equal(a[part], b[part])
    assert not np.array_equal(a["val"], c["val"])
    together = np.concatenate([a["train"], a["val"], a["test"]])
    assert sorted(together.tolist()) == list(range(2380))
    assert len(a["val"]) == len(a["test"]) == 357
    assert adni.observed.numpy()[a["test"]].all()
    # stratified: the test label mix follows the fully observed pool's
    full = adni.observed.numpy().all(1)
    pool = np.bincount(adni.labels.numpy()[full], minlength=3) / full.sum()
    test = np.bincount(adni.labels.numpy()[a["test"]], minlength=3) / len(a["test"])
    assert np.abs(pool - test).max() < 0.02


def test_split_file_wins(tmp_path, toy_data):
    ids = toy_data.ids
    rows = [(i, "val" if k < 5 else "test" if k < 10 else "train") for k, i in enumerate(ids)]
    path = tmp_path / "split.csv"
    pd.DataFrame(rows, columns=["id", "split"]).to_csv(path, index=False)
    data = MultimodalData.from_arrays(toy_arrays(), "toy", "custom",
                                      splits=read_split_file(path, ids))
    assert data.splits["val"].tolist() == list(range(5))
    bad = tmp_path / "bad.csv"
    pd.DataFrame([("nope", "train")], columns=["id", "split"]).to_csv(bad, index=False)
    with pytest.raises(ValueError, match="not in data set"):
        read_split_file(bad, ids)
    pd.DataFrame([(ids[0], "holdout")], columns=["id", "split"]).to_csv(bad, index=False)
    with pytest.raises(ValueError, match="unknown split name"):
        read_split_file(bad, ids)


def test_unknown_letter_names_the_known_ones(adni):
    with pytest.raises(ValueError, match=r"unknown modality letter.*'X'.*IGCB"):
        adni.restrict("IX")
    with pytest.raises(ValueError, match="repeats"):
        adni.restrict("II")


def test_nan_features_are_refused_with_the_sample_named():
    raw = toy_arrays()
    raw.features["B"][int(np.flatnonzero(raw.observed[:, 1])[0]), 3] = np.nan
    with pytest.raises(ValueError, match=r"modality 'B'.*NaN.*s\d+"):
        MultimodalData.from_arrays(raw, "toy", "custom")


def test_wrong_shape_is_refused():
    raw = toy_arrays()
    raw.features["A"] = raw.features["A"][:, :5]
    with pytest.raises(ValueError, match=r"modality 'A'.*shape"):
        MultimodalData.from_arrays(raw, "toy", "custom")


def test_missing_rows_are_zero_whatever_the_source_left(toy_data):
    raw = toy_arrays()
    raw.features["C"][~raw.observed[:, 2]] = 7.0
    data = MultimodalData.from_arrays(raw, "toy", "custom")
    assert (data.features["C"][~data.observed[:, 2]] == 0).all()


def test_batches_are_slices_in_the_requested_order(toy_data):
    view = toy_data.restrict("ABC")
    seq = torch.cat([b.y for b in view.batches("train", 16)])
    assert torch.equal(seq, view.labels[view.splits["train"]])
    desc = view.order("train", "descending")
    counts = view.observed[desc].sum(1)
    assert (counts[:-1] >= counts[1:]).all()
    g = torch.Generator().manual_seed(0)
    e1, e2 = view.order("train", "shuffle", g), view.order("train", "shuffle", g)
    assert not torch.equal(e1, e2) and torch.equal(e1.sort().values, e2.sort().values)
    f1, f2 = view.order("train", "fixed-random", fixed_seed=3), view.order("train", "fixed-random",
                                                                              fixed_seed=3)
    assert torch.equal(f1, f2)
    batch = next(view.batches("train", 8))
    assert batch.x["A"].shape == (8, 20) and batch.observed.shape == (8, 3)


def test_mfeat_is_real_and_evaluates_on_full_views():
    data = load_data("mfeat")
    assert data.letters == "FAKPZM" and len(data.labels) == 2000 and data.num_classes == 10
    assert data.observed[data.splits["val"]].all() and data.observed[data.splits["test"]].all()
    train_obs = data.observed[data.splits["train"]]
    assert train_obs[:, 0].all()  # F plays ADNI's always-observed clinical role
    assert abs(train_obs.all(1).float().mean().item() - 1474 / 2380) < 0.01
    mcar = load_data("mfeat", {"missing": "mcar", "missing_rate": 0.3})
    rate = 1 - mcar.observed[mcar.splits["train"]].float().mean().item()
    assert 0.25 < rate < 0.32
    assert mcar.observed.any(1).all()


def _write_folder(root, labels=True):
    ids = [f"p{i}" for i in range(40)]
    if labels:
        pd.DataFrame({"id": ids, "label": ["a", "b"] * 20}).to_csv(root / "labels.csv",
                                                                   index=False)
    x = pd.DataFrame(np.arange(40 * 3).reshape(40, 3), columns=["f1", "f2", "f3"])
    x.insert(0, "id", ids)
    x.to_csv(root / "X_first.csv", index=False)
    x.iloc[:30].to_csv(root / "Y_second.csv", index=False)


def test_folder_data_set(tmp_path):
    _write_folder(tmp_path)
    data = create_dataset(f"folder:{tmp_path}")
    assert data.letters == "XY" and data.class_names == ("a", "b")
    assert int(data.observed[:, 1].sum()) == 30 and data.observed[:, 0].all()


def test_folder_errors_name_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        create_dataset(f"folder:{tmp_path / 'absent'}")
    _write_folder(tmp_path, labels=False)
    with pytest.raises(FileNotFoundError, match="labels.csv"):
        create_dataset(f"folder:{tmp_path}")
    _write_folder(tmp_path)
    (tmp_path / "Z_text.csv").write_text("id,word\np1,hello\n")
    with pytest.raises(ValueError, match=r"Z_text.csv: non-numeric"):
        create_dataset(f"folder:{tmp_path}")


def test_unknown_data_set_lists_known_ones():
    with pytest.raises(UserError, match="synthetic-adni"):
        create_dataset("adni-typo")
