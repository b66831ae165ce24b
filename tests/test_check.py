"""run_bench.py check: reference files, exact and tolerant comparison, --update, the CLI."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from bench.artefacts import reference, reference_files
from bench.cli.main import main

GRID = {"synthetic-adni": ("IG",)}
MODELS = ["tf"]


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny grid trained once; every test reuses its runs (a store never recomputes)."""
    path = tmp_path_factory.mktemp("check") / "runs.sqlite"
    reference.run_cells(reference.ci_cells(MODELS, GRID), path, jobs=2, progress=False)
    return path


@pytest.fixture
def refs(tmp_path: Path, store: Path) -> Path:
    folder = tmp_path / "reference"
    out, passed = reference.run_check(store, update_refs=True, folder=folder, models=MODELS,
                                  grid=GRID)
    assert passed and "synthetic-adni.json" in out
    return folder


def _check(store: Path, folder: Path, fmt: str = "text") -> tuple[str, bool]:
    return reference.run_check(store, fmt=fmt, folder=folder, models=MODELS, grid=GRID)


def _edit(folder: Path, edit) -> None:
    path = folder / "synthetic-adni.json"
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(reference_files.Reference(data["dataset"], data["environment"],
                                              data["runs"]).text())


def _runs(data: dict) -> list[dict]:
    """The model runs of a reference file (the context lines aside)."""
    return [line for line in data["runs"] if not line["model"].startswith("(")]


def test_reference_file_is_one_line_per_run_with_its_environment(refs: Path):
    text = (refs / "synthetic-adni.json").read_text()
    data = json.loads(text)
    assert [(r["model"], r["combo"], r["seed"]) for r in data["runs"]] == [
        ("(logistic regression)", "IG", 0), ("(majority class)", "IG", 0),
        ("tf", "IG", 0), ("tf", "IG", 1)]  # the context lines are guarded like a model
    for line in data["runs"]:  # each run is exactly one line of the file
        assert json.dumps(line, sort_keys=True) in [ln.rstrip(",") for ln in text.splitlines()]
        assert 0 < line["test_acc"] <= 1 and line["n_test"] > 50
    for line in _runs(data):
        assert line["params"] > 0
        assert isinstance(line["params"], int) and isinstance(line["best_epoch"], int)
    env = data["environment"]
    assert env["threads"] == 1 and env["device"] == "cpu" and env["torch"] and env[
        "cpu_capability"] and env["cpu_isa"] == reference_files.cpu_isa()
    assert "max(1 / n_test" in data["tolerance"]["other_environment"]


def test_an_unchanged_tree_passes_and_update_changes_no_byte(store: Path, refs: Path):
    before = (refs / "synthetic-adni.json").read_bytes()
    out, passed = _check(store, refs)
    assert passed and "check passed" in out and "same environment" in out
    out, passed = reference.run_check(store, update_refs=True, folder=refs, models=MODELS,
                                  grid=GRID)
    assert passed and "none (no number moved)" in out
    assert (refs / "synthetic-adni.json").read_bytes() == before


def test_one_perturbed_number_fails_naming_its_run(store: Path, refs: Path):
    def bump(data: dict) -> None:
        _runs(data)[1]["test_f1"] += 1e-6

    _edit(refs, bump)
    out, passed = _check(store, refs)
    assert not passed
    failing = [ln for ln in out.splitlines() if ln.rstrip(" |").endswith("FAIL")]
    assert len(failing) == 1 and "synthetic-adni tf IG seed 1" in failing[0]
    assert "test_f1" in failing[0] and "check FAILED: 1 of" in out


def test_missing_or_removed_model_lines_fail_with_the_update_hint(store: Path, refs: Path):
    keep = json.loads((refs / "synthetic-adni.json").read_text())
    _edit(refs, lambda d: d.update(runs=[]))
    out, passed = _check(store, refs)
    assert not passed and "not in the reference" in out and "check --update" in out

    def ghost(data: dict) -> None:
        data["runs"] = keep["runs"] + [{**keep["runs"][0], "model": "retired-model"}]

    _edit(refs, ghost)
    out, passed = _check(store, refs)
    assert not passed and "retired-model" in out and "removed?" in out
    (refs / "synthetic-adni.json").unlink()
    out, passed = _check(store, refs)
    assert not passed and "reference file" in out and "check --update" in out


def test_another_environment_compares_means_within_the_seeds_spread(store: Path, refs: Path):
    _edit(refs, lambda d: d["environment"].update(cpu_capability="SOMETHING-ELSE"))
    out, passed = _check(store, refs)
    assert passed and "environment differs" in out and "test_acc (mean of 2)" in out
    data = json.loads((refs / "synthetic-adni.json").read_text())
    runs = _runs(data)
    n_test = runs[0]["n_test"]
    spread = abs(runs[0]["test_acc"] - runs[1]["test_acc"]) / 2 ** 0.5
    far = max(1 / n_test, reference_files.K_SIGMA * spread) + 0.01

    def move(d: dict) -> None:
        for line in _runs(d):
            line["test_acc"] -= far

    _edit(refs, move)
    out, passed = _check(store, refs)
    assert not passed and "test_acc (mean of 2)" in out.split("FAIL")[0].splitlines()[-1]


def test_counts_are_exact_in_any_environment(store: Path, refs: Path):
    def change(d: dict) -> None:
        d["environment"]["torch"] = "0.0"
        _runs(d)[0]["fvcore_flops_per_sample"] += 1

    _edit(refs, change)
    out, passed = _check(store, refs)
    assert not passed and "fvcore_flops_per_sample" in out and "environment differs" in out


def test_a_damaged_reference_file_is_named(store: Path, refs: Path):
    (refs / "synthetic-adni.json").write_text("{not json")
    with pytest.raises(ValueError, match="synthetic-adni.json is not a reference file"):
        _check(store, refs)


def test_cli_exit_codes_and_json(store: Path, refs: Path, monkeypatch, capsys):
    monkeypatch.setattr(reference, "reference_dir", lambda: refs)
    monkeypatch.setattr(reference, "CI_GRID", GRID)
    monkeypatch.setattr(reference.registry, "list_models", lambda variants=True: MODELS)
    assert main(["check", "--store", str(store), "--format", "json"]) == 0
    report = json.loads(capsys.readouterr().out)
    # 7 per line (3 metrics, best_epoch, 3 exact counts): two runs and two context lines
    assert report["ok"] and report["same_environment"] and len(report["comparisons"]) == 4 * 7
    shutil.copy(refs / "synthetic-adni.json", refs.parent / "kept.json")
    _edit(refs, lambda d: _runs(d)[0].update(params=_runs(d)[0]["params"] + 1))
    assert main(["check", "--store", str(store)]) == 1
    assert "FAIL" in capsys.readouterr().out
    assert main(["check", "--jobs", "0"]) == 2


def test_against_paper_without_real_data_says_so_and_passes(store: Path, capsys):
    assert main(["check", "--against-paper", "--store", str(store)]) == 0
    assert "no runs on the real data sets (adni, mimic)" in capsys.readouterr().out
