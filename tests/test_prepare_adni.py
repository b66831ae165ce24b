"""``prepare adni`` on generated raw downloads: the folder loads, trains, and says what it did."""

from __future__ import annotations

import json
import re
import shutil

import numpy as np
import pandas as pd
import pytest

from bench.cli.main import main
from bench.data.prepare import genomic, output
from bench.data.prepare.adni import prepare_adni
from bench.data.prepare.raw import RawInputError
from bench.registry import create_dataset
from tests.raw_adni import CHAIN, write_raw


@pytest.fixture(scope="module")
def raw(tmp_path_factory):
    return write_raw(tmp_path_factory.mktemp("adni") / "raw")


@pytest.fixture(scope="module")
def prepared(raw, tmp_path_factory):
    out = tmp_path_factory.mktemp("prepared") / "adni"
    return out, prepare_adni(raw.root, out, chain=raw.chain)


def _prepare(raw, tmp_path, name="out", **kwargs):
    out = tmp_path / name
    return out, prepare_adni(raw.root, out, chain=raw.chain, **kwargs)


def test_the_prepared_folder_loads_with_every_modality_and_the_written_split(raw, prepared):
    out, manifest = prepared
    data = create_dataset("adni", root=str(out))
    assert data.letters == "IGCB"
    ids = data.ids.tolist()
    # released label rules: a row without diagnosis drops the participant, a diagnosis
    # that changes leaves them unlabelled; DXSUM's order of first appearance
    assert ids == [p for p in raw.ptids if p in raw.diagnosis]
    assert data.labels.tolist() == [int(raw.diagnosis[p]) - 1 for p in ids]
    obs = pd.DataFrame(data.observed.numpy(), index=ids, columns=list("IGCB"))
    # image: the first 120 participants' scans; biospecimen: APOERES's 130 (outer merge)
    assert obs["I"].sum() == 120 and obs["B"].sum() == 130 and obs["C"].all()
    split = json.loads((out / "PTID_splits.json").read_text())
    assert sorted(data.ids[data.splits["test"].numpy()]) == sorted(split["testing"])
    assert manifest["split"]["sizes"] == {k: len(v) for k, v in split.items()}
    assert manifest["data_digest"] == data.content_digest
    assert {i["path"] for i in manifest["inputs"]} >= {
        "diagnosis/DXSUM_PDXCONV_22Apr2024.csv", "genomic/ADNI_GO_2_Forward_Bin.bed",
        "image/ADNI_G.npy", "chain/test.over.chain"}
    assert all(q["here"] == "reproduced" for q in manifest["quirks"].values())
    assert {o["path"] for o in manifest["outputs"]} >= {"label.csv", "genomic/genomic_merged.h5ad"}


def test_one_run_trains_on_the_prepared_folder(prepared, tmp_path, capsys):
    out, _ = prepared
    assert main(["run", "--models", "tf", "--dataset", "adni", "--data-option",
                 f"root={out}", "--combos", "IGCB", "--seeds", "0", "--set", "epochs=1",
                 "--store", str(tmp_path / "s.sqlite")]) == 0
    assert "1 run(s) written" in capsys.readouterr().out


def test_clinical_follows_the_released_encoding(raw, prepared):
    out, _ = prepared
    mean = pd.read_csv(out / "clinical" / "clinical_merged_mean.csv", index_col=0)
    unfilled = pd.read_csv(out / "clinical" / "clinical_merged.csv", index_col=0)
    # columns every table has are dropped; one two tables share is kept once
    assert not {"RID", "VISCODE", "PHASE", "SITEID", "USERDATE", "UPDATE_STAMP"} & set(mean)
    assert list(mean.columns).count("EXAMWEIGHT") == 1
    assert {"MEDKIND_No", "MEDKIND_Yes", "MEDFLAG_0.0", "MEDDATE_BIN0"} <= set(mean.columns)
    numeric = ["MEDSCORE", "NEUSCORE", "VITLEVEL"]
    np.testing.assert_allclose(mean[numeric].min(), -1)
    np.testing.assert_allclose(mean[numeric].max(), 1)
    assert set(np.unique(mean[["MEDKIND_No", "MEDKIND_Yes"]])) == {-1, 1}
    # converters are in the tables (the released label_set), the NaN-diagnosis ones are not
    assert set(raw.converters) <= set(mean.index) and not set(raw.nan_rows) & set(mean.index)
    assert unfilled["MEDSCORE"].isna().any() and not mean.isna().any().any()


def _gap_rows(out, column):
    unfilled = pd.read_csv(out / "clinical" / "clinical_merged.csv", index_col=0)
    return unfilled.index[unfilled[column].isna()]


def test_mean_fill_quirk_uses_the_first_columns_mean_unless_fixed(raw, prepared, tmp_path):
    out, _ = prepared
    fixed, _ = _prepare(raw, tmp_path, fixes=["mean-fill"])
    gaps = _gap_rows(out, "NEUSCORE")
    assert len(gaps)
    for folder, expected in ((out, "first"), (fixed, "own")):
        unfilled = pd.read_csv(folder / "clinical" / "clinical_merged.csv", index_col=0)
        mean = pd.read_csv(folder / "clinical" / "clinical_merged_mean.csv", index_col=0)
        source = unfilled.columns[0] if expected == "first" else "NEUSCORE"
        np.testing.assert_allclose(mean.loc[gaps, "NEUSCORE"], unfilled[source].mean())
    # nothing else moves
    a = pd.read_csv(out / "clinical" / "clinical_merged.csv", index_col=0)
    b = pd.read_csv(fixed / "clinical" / "clinical_merged.csv", index_col=0)
    pd.testing.assert_frame_equal(a, b)


def test_unfilled_categoricals_quirk_changes_only_the_unfilled_file(raw, prepared, tmp_path):
    out, _ = prepared
    fixed, _ = _prepare(raw, tmp_path, fixes=["unfilled-categoricals"])
    kind = ["MEDKIND_No", "MEDKIND_Unknown", "MEDKIND_Yes"]
    released = pd.read_csv(out / "clinical" / "clinical_merged.csv", index_col=0)
    corrected = pd.read_csv(fixed / "clinical" / "clinical_merged.csv", index_col=0)
    assert not released[kind].isna().any().any()  # the released "unfilled" file is filled
    gaps = corrected.index[corrected[kind].isna().all(1)]
    assert len(gaps) and corrected.loc[gaps, kind].isna().all().all()
    numerical = [c for c in released if c.endswith(("SCORE", "LEVEL", "WEIGHT"))]
    pd.testing.assert_frame_equal(corrected[numerical], released[numerical])
    for name in ("clinical/clinical_merged_mean.csv", "biospecimen/biospecimen_merged_mean.csv"):
        assert (out / name).read_bytes() == (fixed / name).read_bytes()


def test_gap_quirk_one_hot_encodes_a_text_number_column_unless_fixed(raw, prepared, tmp_path):
    out, _ = prepared
    fixed, _ = _prepare(raw, tmp_path, fixes=["gap-makes-categorical"])
    released = pd.read_csv(out / "biospecimen" / "biospecimen_merged_mean.csv", index_col=0)
    corrected = pd.read_csv(fixed / "biospecimen" / "biospecimen_merged_mean.csv", index_col=0)
    assert "ABETA40_>1700" in released and "ABETA40" not in released
    assert "ABETA40" in corrected and corrected["ABETA40"].between(-1, 1).all()


def test_rid_mapping_fix_keeps_measurements_from_another_phase(raw, prepared, tmp_path):
    out, manifest = prepared
    fixed, fixed_manifest = _prepare(raw, tmp_path, fixes=["rid-mapping"])
    assert manifest["details"]["biospecimen"]["upenn_rows_without_ptid"] == len(raw.other_phase)
    assert fixed_manifest["details"]["biospecimen"]["upenn_rows_without_ptid"] == 0
    before = pd.read_csv(out / "biospecimen" / "biospecimen_merged.csv", index_col=0)
    after = pd.read_csv(fixed / "biospecimen" / "biospecimen_merged.csv", index_col=0)
    assert before.loc[raw.other_phase, "PTAU"].isna().all()
    assert after.loc[raw.other_phase, "PTAU"].notna().all()


def _read_h5ad(folder):
    import anndata

    return anndata.read_h5ad(folder / "genomic" / "genomic_merged.h5ad").to_df()


def test_allele_filter_quirk_shifts_genotypes_unless_fixed(raw, prepared, tmp_path):
    out, _ = prepared
    fixed, _ = _prepare(raw, tmp_path, fixes=["allele-filter"])
    name = "ADNI_GO_2_Forward_Bin"
    truth = raw.genotypes[name].loc[raw.ptids[90:140]]  # only in this set
    a2 = (2 - truth.astype(float)).where(truth != -127)  # the count of the second allele
    for folder, shift in ((out, 1), (fixed, 0)):
        got = _read_h5ad(folder).loc[raw.ptids[90:140]]
        snps = [s for s in got.columns if int(s[2:]) - 1000 > 5]  # after the dropped SNP
        for s in snps[:5]:
            expected = a2[a2.columns[a2.columns.get_loc(s) - shift]].to_numpy()
            # PLINK's merge makes the minor allele A1, so the count may be the other one's
            assert any(np.array_equal(got[s].to_numpy(), e, equal_nan=True)
                       for e in (expected, 2 - expected)), s


def test_liftover_positions_released_and_fixed(tmp_path):
    bim = pd.DataFrame({"chrom": ["1", "1", "1", "2", "26"], "snp": list("abcde"),
                        "cm": "0", "pos": [10, 500, 1000, 30, 5], "a1": "A", "a2": "G"})
    chain = tmp_path / "t.chain"
    chain.write_text(CHAIN)
    rows, _, released = genomic.lift(bim, chain, one_based=False)
    rows_fixed, chroms, fixed = genomic.lift(bim, chain, one_based=True)
    assert rows.tolist() == [0, 1, 3] and released.tolist() == [110, 700, 30]
    assert rows_fixed.tolist() == [0, 1, 2, 3] and fixed.tolist() == [110, 600, 1200, 30]
    assert chroms.tolist() == [1, 1, 1, 2]


def test_a_second_prepare_reuses_every_step(raw, prepared, monkeypatch, capsys):
    out, manifest = prepared

    def refuse(*args, **kwargs):
        raise AssertionError("a cached step was rebuilt")

    monkeypatch.setattr(genomic, "build_genomic", refuse)
    assert main(["prepare", "adni", "--raw", str(raw.root), "--out", str(out),
                 "--chain", str(raw.chain)]) == 0
    printed = capsys.readouterr().out
    assert "reused: labels, clinical, biospecimen, genomic, image" in printed
    again = json.loads((out / "manifest.json").read_text())
    assert again["data_digest"] == manifest["data_digest"]


def test_two_users_with_the_same_download_get_the_same_folder(raw, prepared, tmp_path):
    out, manifest = prepared
    other, again = _prepare(raw, tmp_path)
    assert again["data_digest"] == manifest["data_digest"]
    assert (other / "PTID_splits.json").read_bytes() == (out / "PTID_splits.json").read_bytes()


def test_an_interrupted_placement_leaves_no_folder_a_loader_accepts(raw, tmp_path, monkeypatch):
    out, _ = _prepare(raw, tmp_path)
    assert create_dataset("adni", root=str(out)).letters == "IGCB"
    calls = []
    real = output._link_atomic

    def dies_midway(source, target):
        calls.append(target)
        if len(calls) == 3:
            raise KeyboardInterrupt
        real(source, target)

    monkeypatch.setattr(output, "_link_atomic", dies_midway)
    with pytest.raises(KeyboardInterrupt):
        prepare_adni(raw.root, out, chain=raw.chain, fixes=["mean-fill"])
    with pytest.raises(FileNotFoundError, match="label.csv"):
        create_dataset("adni", root=str(out))
    monkeypatch.setattr(output, "_link_atomic", real)
    prepare_adni(raw.root, out, chain=raw.chain, fixes=["mean-fill"])
    assert create_dataset("adni", root=str(out)).letters == "IGCB"
    assert not [p for p in out.rglob("*") if ".tmp-" in p.name or ".partial-" in p.name]


def test_a_failing_step_leaves_the_previous_folder_intact(raw, prepared, tmp_path, monkeypatch):
    out, _ = _prepare(raw, tmp_path)
    before = (out / "label.csv").read_bytes()

    def broken(*args, **kwargs):
        raise RawInputError("boom")

    monkeypatch.setattr(genomic, "build_genomic", broken)
    with pytest.raises(RawInputError):
        prepare_adni(raw.root, out, chain=raw.chain, fixes=["allele-filter"])
    assert (out / "label.csv").read_bytes() == before
    assert create_dataset("adni", root=str(out)).letters == "IGCB"


def test_a_modality_without_raw_files_is_left_out(tmp_path):
    raw = write_raw(tmp_path / "raw", genomic=False, image=False)
    out = tmp_path / "out"
    manifest = prepare_adni(raw.root, out, skip=["biospecimen"])
    assert create_dataset("adni", root=str(out)).letters == "C"
    assert manifest["options"]["skip"] == ["biospecimen"]


def test_ravens_maps_become_the_image_rows(tmp_path):
    import nibabel

    raw = write_raw(tmp_path / "raw", genomic=False, image=False)
    atlas = np.zeros((4, 4, 4))
    atlas[1:3, 1:3, 1:3] = 150
    atlas[0, 0, :] = 250
    nibabel.save(nibabel.Nifti1Image(atlas, np.eye(4)),
                 raw.root / "BLSA_SPGR+MPRAGE_averagetemplate_muse_seg_DS222.nii.gz")
    maps = {}
    for k, p in enumerate(raw.ptids[:60]):
        subject = f"{p}_2012-01-{1 + k % 28:02d}"
        (raw.root / "ravens" / subject).mkdir(parents=True)
        volume = np.full((4, 4, 4), float(k))
        maps[p] = volume[atlas == 150]
        nibabel.save(nibabel.Nifti1Image(volume, np.eye(4)), raw.root / "ravens" / subject /
                     f"{subject}_T1_LPS_N4_brain_muse-ss_Mean_fastbc_muse_seg_dramms-0.3"
                     "_RAVENS_150_s2_DS.nii.gz")
    out = tmp_path / "out"
    prepare_adni(raw.root, out, val_frac=0.1, test_frac=0.1)
    rows = np.load(out / "image" / "ADNI_G.npy")
    names = (out / "image" / "ADNI_subj.txt").read_text().split()
    assert rows.shape == (60, 8)
    for row, name in zip(rows, names):
        np.testing.assert_array_equal(row, maps["_".join(name.split("_")[:3])])


@pytest.mark.parametrize("damage, message", [
    (lambda r: (r / "diagnosis" / "DXSUM_PDXCONV_22Apr2024.csv").unlink(),
     r"no file matches DXSUM_PDXCONV\.csv"),
    (lambda r: _rename_column(r / "clinical" / "VITALS_09May2024.csv", "PTID", "PATIENT"),
     r"VITALS_09May2024\.csv: no column PTID"),
    (lambda r: _rename_column(r / "biospecimen" / "APOERES_09May2024.csv", "Phase", "STAGE"),
     r"APOERES_09May2024\.csv: no column PHASE/COLPROT"),
    (lambda r: (r / "clinical" / "NEUROEXM_09May2024.csv").write_text(""),
     r"NEUROEXM_09May2024\.csv is empty"),
    (lambda r: (r / "clinical" / "MEDHIST_09May2024.csv").unlink(),
     r"clinical modality needs .*missing MEDHIST"),
    (lambda r: [_rename_values(r / "clinical" / f"{t}_09May2024.csv") for t in
                ("MEDHIST", "NEUROEXM", "PTDEMOG", "RECCMEDS", "VITALS")],
     r"clinical: no PTID of MEDHIST_09May2024\.csv.* matches a participant"),
    (lambda r: (r / "clinical" / "PTDEMOG_09May2024.csv").write_bytes(b"PTID,\xff\xfe\n1,2\n"),
     r"PTDEMOG_09May2024\.csv is not UTF-8"),
    (lambda r: (r / "genomic" / "ADNI_GO_2_Forward_Bin.fam").unlink(),
     r"ADNI_GO_2_Forward_Bin\.bed: no ADNI_GO_2_Forward_Bin\.fam beside it"),
])
def test_bad_raw_input_is_one_line_naming_file_and_column(tmp_path, capsys, damage, message):
    raw = write_raw(tmp_path / "raw", image=False)
    damage(raw.root)
    code = main(["prepare", "adni", "--raw", str(raw.root), "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1
    assert re.search(message, err), err
    assert not (tmp_path / "out" / "label.csv").exists()


def _rename_column(path, old, new):
    table = pd.read_csv(path)
    table.rename(columns={old: new}).to_csv(path, index=False)


def _rename_values(path):
    table = pd.read_csv(path)
    table["PTID"] = "999_S_" + table["PTID"].str[-4:]
    table.to_csv(path, index=False)


def test_options_are_checked_before_anything_runs(raw, tmp_path, capsys):
    for args, message in ((["--fix", "bogus"], "--fix: unknown name(s) ['bogus']"),
                          (["--skip", "eeg"], "--skip: unknown name(s) ['eeg']"),
                          (["--chain", str(tmp_path / "none.chain")], "--chain")):
        code = main(["prepare", "adni", "--raw", str(raw.root), "--out",
                     str(tmp_path / "out"), *args])
        assert code == 2 and message in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_without_plink_the_genomic_step_says_how_to_get_it(raw, tmp_path, monkeypatch, capsys):
    fake = tmp_path / "plink"
    fake.write_text("#!/bin/sh\necho 'PLINK v2.00a'\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PLINK", str(fake))
    code = main(["prepare", "adni", "--raw", str(raw.root), "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 2 and "apt install plink1.9" in err and "--skip genomic" in err


def test_sets_with_conflicting_alleles_merge_without_them(raw, tmp_path):
    from bed_reader import to_bed

    copy = tmp_path / "raw"
    shutil.copytree(raw.root, copy)
    bim = genomic.read_bim(copy / "genomic" / "ADNI_GO_2_Forward_Bin")
    fam = genomic.read_fam(copy / "genomic" / "ADNI_GO_2_Forward_Bin")
    bim.loc[10, "a2"] = "C"  # rs1010 is A/G in the other set: three alleles
    g = raw.genotypes["ADNI_GO_2_Forward_Bin"].to_numpy()
    to_bed(copy / "genomic" / "ADNI_GO_2_Forward_Bin.bed", g, count_A1=True, properties={
        "iid": fam["iid"].tolist(), "fid": fam["fid"].tolist(), "sex": [1] * len(fam),
        "chromosome": bim["chrom"].tolist(), "sid": bim["snp"].tolist(),
        "bp_position": bim["pos"].astype(int).tolist(), "allele_1": bim["a1"].tolist(),
        "allele_2": bim["a2"].tolist()})
    manifest = prepare_adni(copy, tmp_path / "out", skip=["clinical", "biospecimen", "image"])
    assert manifest["details"]["genomic"]["missnp_excluded"] == 1
    assert "rs1010" not in _read_h5ad(tmp_path / "out").columns
