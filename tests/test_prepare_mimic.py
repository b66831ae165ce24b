"""``prepare_mimic`` on a small download in MIMIC-IV's layout, generated here."""

from __future__ import annotations

import json
import shutil
import sys
import types
from datetime import datetime, timedelta

import numpy as np
import pandas as pd
import pytest
import torch

from bench.data.prepare import mimic, mimic_tables, notes
from bench.data.prepare.raw import RawInputError
from bench.registry import create_dataset

N = 200
ITEMS = {50912: "Creatinine", 50971: "Potassium", 51221: "Hematocrit", 50983: "Sodium",
         51301: "White Blood Cells", 50931: "Glucose", 51265: "Platelet Count",
         50882: "Bicarbonate", 50902: "Chloride", 51006: "Urea Nitrogen", 50868: "Anion Gap",
         50960: "Magnesium"}
PRESENCE = np.linspace(0.97, 0.3, len(ITEMS))
ICD9 = ["0389", "4019", "25000", "V5861", "E8497", "2724", "4280", "5849", "41401", "42731"]
RARE = ["0010", "0020"]  # each in fewer than min_code_count patients
WORDS = ("patient admitted chest pain fever cough discharged home stable follow".split()
         + [f"term{a}{b}" for a in "abcdefgh" for b in "abcdefgh"])
GRIM = "metastatic hospice palliative sepsis".split()
OPTIONS = {"lab_items": 8, "note_dim": 16, "min_code_count": 5}
STEPS = {"cohort", "labs", "codes", "notes-found", "split", "notes-embedding", "tensors"}


def _write(frame: pd.DataFrame, path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    frame.to_csv(path, index=False, compression="gzip" if path.name.endswith(".gz") else None)


def make_raw(root) -> dict:
    """A download of N patients in MIMIC-IV's layout; returns what the test expects."""
    rng = np.random.default_rng(7)
    risk = rng.normal(size=N)
    subjects = 10_000_000 + 7 * np.arange(N)
    no_lab, no_note, no_code = set(range(10, 16)), set(range(20, 26)), set(range(30, 36))
    in_hospital = set(range(40, 48))
    patients, admissions, labs, codes, texts = [], [], [], [], []
    hadm = 20_000_000
    expected = {}
    for i, subject in enumerate(subjects):
        start = datetime(2150, 1, 1) + timedelta(days=int(rng.integers(0, 3000)))
        stays = []
        for _ in range(int(rng.integers(1, 4))):
            admit = start + timedelta(hours=int(rng.integers(0, 24)))
            disch = admit + timedelta(days=int(rng.integers(1, 10)), hours=3)
            hadm += 3
            stays.append((hadm, admit, disch))
            start = disch + timedelta(days=int(rng.integers(30, 200)))
        last_hadm, _, last_disch = stays[-1]
        died_inside = i in in_hospital
        dod = None
        if died_inside:
            dod = last_disch.date()
        elif i == 50:
            dod = last_disch.date() + timedelta(days=365)  # on the horizon: positive
        elif i == 51:
            dod = last_disch.date() + timedelta(days=366)  # one day past it: negative
        elif rng.random() < 1 / (1 + np.exp(-(2.5 * risk[i] - 1.2))):
            dod = last_disch.date() + timedelta(days=int(rng.integers(1, 360)))
        elif rng.random() < 0.2:
            dod = last_disch.date() + timedelta(days=int(rng.integers(400, 900)))
        patients.append({"subject_id": subject, "gender": "F", "dod": dod})
        for k, (h, admit, disch) in enumerate(stays):
            last = k == len(stays) - 1
            admissions.append({"subject_id": subject, "hadm_id": h,
                               "admittime": admit.strftime("%Y-%m-%d %H:%M:%S"),
                               "dischtime": disch.strftime("%Y-%m-%d %H:%M:%S"),
                               "hospital_expire_flag": int(last and died_inside)})
            if not (last and i in no_lab):
                for j, item in enumerate(ITEMS):
                    if rng.random() > PRESENCE[j]:
                        continue
                    for _ in range(int(rng.integers(1, 4))):
                        t = admit + timedelta(minutes=int(rng.integers(0, 60 * 24)))
                        value = 1.0 + j + rng.normal() + (2 * risk[i] if j == 0 else 0)
                        labs.append({"labevent_id": len(labs), "subject_id": subject,
                                     "hadm_id": h, "itemid": item,
                                     "charttime": t.strftime("%Y-%m-%d %H:%M:%S"),
                                     "value": f"{value:.3f}", "valuenum": round(value, 3)})
                labs.append({"labevent_id": len(labs), "subject_id": subject, "hadm_id": h,
                             "itemid": 50912, "charttime": admit.strftime("%Y-%m-%d %H:%M:%S"),
                             "value": "see comment", "valuenum": None})
            if not (last and i in no_code):
                pool = ICD9[: 3 + i % 7] + (RARE if i in (1, 2) else [])
                for code in pool[:: 1 + (k % 2)]:
                    codes.append({"subject_id": subject, "hadm_id": h, "seq_num": 1,
                                  "icd_code": code, "icd_version": 9})
            else:
                codes.append({"subject_id": subject, "hadm_id": h, "seq_num": 1,
                              "icd_code": "I10", "icd_version": 10})
            if not (last and i in no_note):
                words = list(rng.choice(WORDS, 40)) + (list(GRIM) * 3 if risk[i] > 0.5 else [])
                for part in range(1 + int(i % 5 == 0)):
                    texts.append({"note_id": f"{subject}-DS-{len(texts)}",
                                  "subject_id": subject, "hadm_id": h, "note_type": "DS",
                                  "charttime": (disch + timedelta(minutes=part)).strftime(
                                      "%Y-%m-%d %H:%M:%S"),
                                  "text": f"Name: ___ Unit No: ___ part {part} "
                                          + " ".join(words)})
        if not died_inside:
            label = dod is not None and dod <= last_disch.date() + timedelta(days=365)
            expected[str(subject)] = {"label": int(label), "hadm": last_hadm, "L": i not in no_lab,
                                      "N": i not in no_note, "C": i not in no_code}
    for i in range(3):  # patients without an admission are not in the cohort
        patients.append({"subject_id": 9_000_000 + i, "gender": "M", "dod": None})
    admissions.append({"subject_id": 8_000_000, "hadm_id": 29_999_999,  # subject unknown
                       "admittime": "2160-01-01 00:00:00", "dischtime": "2160-01-02 00:00:00",
                       "hospital_expire_flag": 0})
    labs.append({"labevent_id": len(labs), "subject_id": subjects[0], "hadm_id": None,
                 "itemid": 50912, "charttime": "2150-01-01 00:00:00", "value": "1",
                 "valuenum": 1.0})  # an outpatient lab: no admission
    order = np.random.default_rng(1).permutation(len(admissions))
    _write(pd.DataFrame(patients), root / "hosp" / "patients.csv.gz")
    _write(pd.DataFrame(admissions).iloc[order], root / "hosp" / "admissions.csv")
    _write(pd.DataFrame(labs).astype({"hadm_id": "Int64"}), root / "hosp" / "labevents.csv.gz")
    _write(pd.DataFrame({"itemid": list(ITEMS), "label": list(ITEMS.values()),
                         "fluid": "Blood"}), root / "hosp" / "d_labitems.csv")
    _write(pd.DataFrame(codes), root / "hosp" / "diagnoses_icd.csv.gz")
    _write(pd.DataFrame(texts), root / "note" / "discharge.csv")
    return {"expected": expected, "labs": pd.DataFrame(labs), "codes": pd.DataFrame(codes)}


@pytest.fixture(scope="module")
def download(tmp_path_factory):
    root = tmp_path_factory.mktemp("raw")
    return root, make_raw(root)


@pytest.fixture(scope="module")
def prepared(download, tmp_path_factory):
    out = tmp_path_factory.mktemp("prepared") / "mimic"
    manifest = mimic.prepare_mimic(download[0], out, **OPTIONS)
    return out, manifest


def _copy(download, tmp_path):
    raw = tmp_path / "raw"
    shutil.copytree(download[0], raw)
    return raw


def test_prepared_folder_loads_with_the_expected_rows_labels_and_missing(download, prepared):
    out, manifest = prepared
    expected = download[1]["expected"]
    data = create_dataset("mimic", root=str(out))
    ids = list(data.ids)
    assert data.letters == "LNC" and len(ids) == len(expected) == N - 8
    assert ids == sorted(expected, key=int)  # rows by subject_id; in-hospital deaths excluded
    assert data.labels.tolist() == [expected[i]["label"] for i in ids]
    observed = data.observed.numpy()
    for j, letter in enumerate("LNC"):
        assert observed[:, j].tolist() == [expected[i][letter] for i in ids], letter
    split = json.loads((out / "PTID_splits_mimic.json").read_text())
    for part, key in (("train", "training"), ("val", "validation"), ("test", "testing")):
        assert [ids[k] for k in data.splits[part]] == sorted(split[key], key=int)
    assert observed[data.splits["test"]].all() and observed[data.splits["val"]].all()
    assert manifest["counts"]["patients"] == len(ids)
    assert manifest["counts"]["positives"] == sum(e["label"] for e in expected.values())
    assert manifest["data_digest"] == data.content_digest
    assert json.loads((out / "manifest.json").read_text())["data_digest"] == data.content_digest


def test_lab_columns_are_the_most_frequent_items_aggregated_and_standardised(download,
                                                                             prepared):
    out, _ = prepared
    expected, labs = download[1]["expected"], download[1]["labs"]
    last = {e["hadm"]: s for s, e in expected.items()}
    mine = labs[labs["hadm_id"].isin(list(last)) & labs["valuenum"].notna()]
    counts = mine.groupby("itemid")["hadm_id"].nunique()
    top = sorted(counts.index, key=lambda i: (-counts[i], i))[:OPTIONS["lab_items"]]
    columns = pd.read_csv(out / "lab_items.csv")
    assert columns["itemid"].drop_duplicates().tolist() == top
    assert columns["aggregate"].tolist()[:4] == list(mimic.AGGREGATES)
    x = torch.load(out / "lab_x.pt").numpy()
    ids = pd.read_csv(out / "labels.csv")["subject_id"].astype(str).tolist()
    subject = next(s for s in ids if expected[s]["L"])
    rows = mine[mine["hadm_id"] == expected[subject]["hadm"]]
    for item in top[:3]:
        values = rows[rows["itemid"] == item].sort_values("charttime", kind="mergesort")
        for agg, want in (("mean", values["valuenum"].mean()), ("min", values["valuenum"].min()),
                          ("last", values["valuenum"].iloc[-1] if len(values) else np.nan)):
            col = columns[(columns["itemid"] == item) & (columns["aggregate"] == agg)].iloc[0]
            got = x[ids.index(subject), col["column"]] * col["train_std"] + col["train_mean"]
            np.testing.assert_allclose(got, want, rtol=1e-4)
    missing = [k for k, s in enumerate(ids) if not expected[s]["L"]]
    assert np.isnan(x[missing]).all()


def test_code_vocabulary_keeps_icd9_codes_of_enough_patients(download, prepared):
    out, manifest = prepared
    expected, codes = download[1]["expected"], download[1]["codes"].astype({"icd_code": str})
    last = codes[codes["hadm_id"].isin([e["hadm"] for e in expected.values()])
                 & (codes["icd_version"] == 9)]
    per_code = last.groupby("icd_code")["subject_id"].nunique()
    want = sorted(c for c, n in per_code.items() if n >= OPTIONS["min_code_count"])
    vocab = pd.read_csv(out / "code_vocab.csv", dtype={"code": str})
    assert vocab["code"].tolist() == want and "0389" in want and not set(RARE) & set(want)
    assert manifest["choices"]["codes"]["vocabulary_size"] == len(want)
    assert torch.load(out / "code_x.pt").shape[1] == len(want)
    assert manifest["choices"]["notes"]["dimension"] == OPTIONS["note_dim"]


def test_a_run_trains_on_the_prepared_folder(prepared, tmp_path):
    from bench.cli.main import main

    out, _ = prepared
    assert main(["run", "--models", "tf", "--dataset", "mimic", "--data-option", f"root={out}",
                 "--combos", "LNC", "--seeds", "0", "--store", str(tmp_path / "s.sqlite"),
                 "--set", "epochs=1"]) == 0


def test_a_second_prepare_reuses_every_step(download, prepared, tmp_path, monkeypatch):
    out, first = prepared
    work = tmp_path / "again"
    shutil.copytree(out, work)

    def fail(*args, **kwargs):
        raise AssertionError("a step was rebuilt")

    for name in ("build_cohort", "build_labs", "build_codes", "write_split"):
        monkeypatch.setattr(mimic, name, fail)
    for name in ("join_notes", "embed"):
        monkeypatch.setattr(notes, name, fail)
    again = mimic.prepare_mimic(download[0], work, **OPTIONS)
    assert set(again["reused_steps"]) == STEPS and again["data_digest"] == first["data_digest"]


def test_preparing_twice_gives_the_same_bytes_whatever_the_chunk_size(download, prepared,
                                                                     tmp_path, monkeypatch):
    monkeypatch.setattr(mimic_tables, "CHUNK_ROWS", 500)  # several chunks of every table
    again = mimic.prepare_mimic(download[0], tmp_path / "other", **OPTIONS)
    assert again["reused_steps"] == []
    assert again["data_digest"] == prepared[1]["data_digest"]


def test_a_prepare_that_fails_midway_leaves_a_folder_the_loader_refuses(download, tmp_path,
                                                                       monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("killed")

    monkeypatch.setattr(notes, "embed", broken)
    out = tmp_path / "half"
    with pytest.raises(RuntimeError, match="killed"):
        mimic.prepare_mimic(download[0], out, **OPTIONS)
    assert not (out / "labels.csv").exists()
    with pytest.raises(FileNotFoundError, match="labels.csv is missing"):
        create_dataset("mimic", root=str(out))


def _drop_table(raw):
    (raw / "hosp" / "diagnoses_icd.csv.gz").unlink()


def _rename_column(raw):
    path = raw / "hosp" / "labevents.csv.gz"
    _write(pd.read_csv(path).rename(columns={"valuenum": "value_num"}), path)


def _empty_file(raw):
    (raw / "hosp" / "d_labitems.csv").write_text("")


def _header_only(raw):
    (raw / "note" / "discharge.csv").write_text("note_id,subject_id,hadm_id,charttime,text\n")


def _unknown_subjects(raw):
    path = raw / "hosp" / "admissions.csv"
    table = pd.read_csv(path)
    _write(table.assign(subject_id=table["subject_id"] + 1), path)


def _unknown_admissions(raw):
    path = raw / "hosp" / "diagnoses_icd.csv.gz"
    table = pd.read_csv(path)
    _write(table.assign(hadm_id=table["hadm_id"] + 1), path)


def _bad_dates(raw):
    path = raw / "hosp" / "admissions.csv"
    table = pd.read_csv(path)
    table.loc[3, "dischtime"] = "yesterday"
    _write(table, path)


def _everyone_died(raw):
    path = raw / "hosp" / "admissions.csv"
    _write(pd.read_csv(path).assign(hospital_expire_flag=1), path)


def _not_gzip(raw):
    (raw / "hosp" / "labevents.csv.gz").write_bytes(b"itemid,valuenum\n1,2\n")


@pytest.mark.parametrize("damage, file, column", [
    (_drop_table, "diagnoses_icd.csv", "icd_code"),
    (_rename_column, "labevents.csv.gz", "VALUENUM"),
    (_empty_file, "d_labitems.csv", "itemid, label"),
    (_header_only, "discharge.csv", "hadm_id, charttime, text"),
    (_unknown_subjects, "admissions.csv", "subject_id"),
    (_unknown_admissions, "diagnoses_icd.csv.gz", "hadm_id"),
    (_bad_dates, "admissions.csv", "dischtime"),
    (_everyone_died, "admissions.csv", "hospital_expire_flag"),
    (_not_gzip, "labevents.csv.gz", "hadm_id, itemid"),
])
def test_bad_raw_input_is_one_error_naming_the_file_and_column(download, tmp_path, damage,
                                                               file, column):
    raw = _copy(download, tmp_path)
    damage(raw)
    with pytest.raises(RawInputError) as caught:
        mimic.prepare_mimic(raw, tmp_path / "out", **OPTIONS)
    message = str(caught.value)
    assert file in message and column in message and "\n" not in message
    assert not (tmp_path / "out" / "labels.csv").exists()


@pytest.mark.parametrize("options, message", [
    ({"note_dim": 0}, "--note-dim must be an integer ≥ 1"),
    ({"lab_items": 2.5}, "--lab-items must be an integer ≥ 1"),
    ({"val_frac": 0.6, "test_frac": 0.5}, "sum to less than 1"),
    ({"in_hospital_deaths": "drop"}, "expected exclude or keep"),
    ({"embedder": "bert"}, "expected tfidf or sentence-transformers:NAME_OR_PATH"),
])
def test_bad_options_are_refused_before_any_work(download, tmp_path, options, message):
    with pytest.raises(ValueError, match=message):
        mimic.prepare_mimic(download[0], tmp_path / "out", **options)
    assert not (tmp_path / "out").exists()


def test_in_hospital_deaths_can_be_kept_with_label_one(download, tmp_path):
    manifest = mimic.prepare_mimic(download[0], tmp_path / "out", in_hospital_deaths="keep",
                                   **OPTIONS)
    labels = pd.read_csv(tmp_path / "out" / "labels.csv")
    assert len(labels) == N and manifest["counts"]["positives"] == sum(
        e["label"] for e in download[1]["expected"].values()) + 8


class FakeModel:
    max_seq_length = 128

    def __init__(self, name):
        self.name = name

    def encode(self, texts, batch_size, show_progress_bar, convert_to_numpy):
        return np.array([[len(t), t.count("hospice") + 1.0, 1.0] for t in texts])


def test_a_sentence_transformers_model_embeds_the_notes(download, prepared, tmp_path,
                                                        monkeypatch):
    fake = types.ModuleType("sentence_transformers")
    fake.SentenceTransformer = FakeModel
    monkeypatch.setitem(sys.modules, "sentence_transformers", fake)
    out = tmp_path / "st"
    shutil.copytree(prepared[0], out)  # the steps before the embedding are reused
    manifest = mimic.prepare_mimic(download[0], out, embedder="sentence-transformers:fake",
                                   **OPTIONS)
    assert {"cohort", "labs", "codes", "split"} <= set(manifest["reused_steps"])
    assert "notes-embedding" not in manifest["reused_steps"]
    x = torch.load(out / "note_x.pt")
    assert x.shape == (N - 8, 3) and manifest["choices"]["notes"]["dimension"] == 3
    assert manifest["choices"]["notes"]["model"] == "fake"
    assert manifest["choices"]["notes"]["max_seq_length"] == 128
    assert create_dataset("mimic", root=str(out)).observed.numpy()[:, 1].sum() == N - 8 - 6


def test_sentence_transformers_missing_is_a_clear_error(download, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "sentence_transformers", None)
    with pytest.raises(ImportError, match="pip install sentence-transformers"):
        mimic.prepare_mimic(download[0], tmp_path / "out", embedder="sentence-transformers:x")


def test_too_few_notes_for_the_requested_dimension_clamps_it(download, tmp_path, caplog):
    manifest = mimic.prepare_mimic(download[0], tmp_path / "out",
                                   **{**OPTIONS, "note_dim": 5000})
    notes_choice = manifest["choices"]["notes"]
    assert notes_choice["requested_dimension"] == 5000
    assert notes_choice["dimension"] < 5000
    assert torch.load(tmp_path / "out" / "note_x.pt").shape[1] == notes_choice["dimension"]
    assert "--note-dim 5000" in caplog.text



def test_the_command_line_prepares_and_prints_what_it_did(download, prepared, tmp_path, capsys):
    from bench.cli.main import main

    out, manifest = prepared
    args = [f"--{k.replace('_', '-')}={v}" for k, v in OPTIONS.items()]
    assert main(["prepare", "mimic", "--raw", str(download[0]), "--out", str(tmp_path / "o"),
                 "--in-hospital-deaths", "exclude", *args]) == 0
    printed = capsys.readouterr().out
    assert f"data digest {manifest['data_digest']}" in printed
    assert "next: python run_bench.py run --dataset mimic --data-option root=" in printed
    assert main(["prepare", "mimic", "--raw", str(tmp_path / "none"), "--out",
                 str(tmp_path / "o2")]) == 2
    assert "none" in capsys.readouterr().err
