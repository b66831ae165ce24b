"""The real ADNI / MIMIC-IV readers, on tiny folders in the official layout."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch

from bench.registry import create_dataset

PTIDS = [f"0{i:02d}_S_{i:04d}" for i in range(40)]


def _adni(root, with_split=True):
    rng = np.random.default_rng(0)
    pd.DataFrame({"PTID": PTIDS, "DIAGNOSIS": [1 + i % 3 for i in range(40)]}).to_csv(
        root / "label.csv", index=False)
    (root / "image").mkdir()
    scans = [f"{p}_scan_2010-01-0{1 + k}" for p in PTIDS[:30] for k in range(2)]
    np.save(root / "image" / "ADNI_G.npy", rng.normal(size=(len(scans), 50)))
    (root / "image" / "ADNI_subj.txt").write_text("\n".join(scans))
    (root / "genomic").mkdir()
    snps = pd.DataFrame(rng.integers(0, 3, size=(25, 12)).astype(float), index=PTIDS[10:35])
    snps.iloc[0, 0] = np.nan
    snps.to_csv(root / "genomic" / "genomic_merged.csv")
    (root / "clinical").mkdir()
    pd.DataFrame({"AGE": rng.normal(size=40), "PTADDX_1": 1.0, "MMSE": rng.normal(size=40)},
                 index=PTIDS).to_csv(root / "clinical" / "clinical_merged_mean.csv")
    if with_split:
        split = {"training": PTIDS[:28], "validation": PTIDS[28:34], "testing": PTIDS[34:]}
        (root / "PTID_splits.json").write_text(json.dumps(split))


def test_adni_official_layout(tmp_path, monkeypatch):
    _adni(tmp_path)
    data = create_dataset("adni", root=str(tmp_path))
    assert data.letters == "IGC"  # biospecimen absent: the modalities found
    assert [m.shape for m in data.modalities] == [(50,), (12,), (2,)]  # PTADDX_1 dropped
    obs = data.observed.numpy()
    assert obs[:30, 0].all() and not obs[30:, 0].any()
    assert obs[10:35, 1].all() and obs[:, 2].all()
    assert data.labels.tolist()[:3] == [0, 1, 2]
    g = data.features["G"][10:35]
    assert float(g.min()) == -1.0 and float(g.max()) == 1.0  # NaN → mode, then [−1, 1]
    assert data.splits["val"].tolist() == list(range(28, 34))
    # the image row is the latest of each patient's two scans, standardised over the array
    raw = np.load(tmp_path / "image" / "ADNI_G.npy")
    expected = (raw[1] - raw.mean()) / raw.std()
    np.testing.assert_allclose(data.features["I"][0].numpy(), expected, rtol=1e-5)
    monkeypatch.setenv("FLEXMOE_BENCH_ADNI", str(tmp_path))
    from bench.data.sources import real_data_configured

    assert real_data_configured("adni") and create_dataset("adni").letters == "IGC"


def test_adni_without_official_split_draws_the_suite_split(tmp_path):
    _adni(tmp_path, with_split=False)
    data = create_dataset("adni", root=str(tmp_path))
    assert sum(int(v.numel()) for v in data.splits.values()) == 40


def test_adni_errors_name_what_is_missing(tmp_path, monkeypatch):
    monkeypatch.delenv("FLEXMOE_BENCH_ADNI", raising=False)
    with pytest.raises(FileNotFoundError, match="FLEXMOE_BENCH_ADNI"):
        create_dataset("adni")
    with pytest.raises(FileNotFoundError, match="label.csv is missing"):
        create_dataset("adni", root=str(tmp_path))
    _adni(tmp_path)
    (tmp_path / "PTID_splits.json").write_text("{}")
    with pytest.raises(ValueError, match="'training', 'validation' and 'testing'"):
        create_dataset("adni", root=str(tmp_path))


def test_mimic_official_layout(tmp_path):
    n = 30
    pd.DataFrame({"subject_id": range(100, 100 + n),
                  "one_year_mortality": [i % 4 == 0 for i in range(n)]}).astype(int).to_csv(
        tmp_path / "labels.csv", index=False)
    labs = torch.randn(n, 6)
    labs[0] = float("nan")  # an all-NaN row: labs missing
    labs[1, 2] = float("nan")  # one NaN entry of an observed row: 0
    notes = torch.randn(n, 8)
    notes[2:5] = 0.0
    codes = torch.ones(n, 4)
    codes[5] = -2.0
    for stem, t in (("lab_x", labs), ("note_x", notes), ("code_x", codes)):
        torch.save(t, tmp_path / f"{stem}.pt")
    data = create_dataset("mimic", root=str(tmp_path))
    assert data.letters == "LNC" and data.class_weights == (0.25, 0.75)
    obs = data.observed
    assert not obs[0, 0] and obs[1, 0] and data.features["L"][1, 2] == 0.0
    assert not obs[2:5, 1].any() and not obs[5, 2] and int(obs.sum()) == 3 * n - 5
    torch.save(torch.randn(n + 1, 3), tmp_path / "code_x.pt")
    with pytest.raises(ValueError, match=r"code_x.pt: expected a \[30, F\] tensor"):
        create_dataset("mimic", root=str(tmp_path))
