"""End to end through the command line: run, resume, table, list, plug-ins, errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from bench.cli.main import main
from bench.results.store import load_results

ROOT = Path(__file__).resolve().parents[1]
QUICK = ["--set", "epochs=1", "--data-option", "scale=0.2"]


def test_run_writes_rows_once_and_table_prints_them(tmp_path, capsys):
    store = str(tmp_path / "r.sqlite")
    args = ["run", "--models", "tf", "--dataset", "synthetic-adni", "--combos", "IG,IGCB",
            "--seeds", "0,1", "--store", store, *QUICK]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "4 run(s) written" in out and "| IG " in out.replace("|  IG", "| IG ")
    assert len(load_results(store)) == 4
    assert main(args) == 0
    assert "0 run(s) written" in capsys.readouterr().out
    assert len(load_results(store)) == 4
    assert main(["table", "--store", store, "--metric", "test_f1"]) == 0
    table = capsys.readouterr().out
    lines = [ln for ln in table.splitlines() if ln.startswith("|")]
    assert "tf" in lines[0] and len(lines) == 4  # header, rule, IG, IGCB
    assert lines[2].split("|")[1].strip() == "IG" and lines[3].split("|")[1].strip() == "IGCB"
    assert "±" in lines[2]


def test_list_models_and_datasets(capsys):
    assert main(["list", "models"]) == 0
    assert "tf:" in capsys.readouterr().out
    assert main(["list", "datasets"]) == 0
    out = capsys.readouterr().out
    for name in ("synthetic-adni", "synthetic-mimic", "mfeat", "folder:PATH"):
        assert name in out


@pytest.mark.parametrize("args, message", [
    (["run", "--models", "nope"], "unknown model 'nope'; registered models: "),
    (["run", "--models", "tf", "--combos", "IX"], "unknown modality letter"),
    (["run", "--models", "tf", "--dataset", "nowhere"], "unknown data set 'nowhere'"),
    (["run", "--models", "tf", "--set", "lr"], "expects KEY=VALUE"),
    (["run", "--models", "tf", "--plugin", "no_such_module"], "could not import plug-in"),
])
def test_bad_input_gets_one_clear_message(args, message, capsys, tmp_path):
    try:
        code = main([*args, "--store", str(tmp_path / "r.sqlite")])
    except SystemExit as exc:
        code = exc.code
        err = str(exc)
    else:
        err = capsys.readouterr().err
    assert code not in (0, None)
    assert message in err


def test_corrupt_store_is_reported_and_kept(tmp_path, capsys):
    store = tmp_path / "r.sqlite"
    store.write_text("garbage")
    assert main(["run", "--models", "tf", "--store", str(store), *QUICK]) == 2
    assert "not a readable flexmoe-bench results store" in capsys.readouterr().err
    assert store.read_text() == "garbage"


def test_plugin_file_adds_a_model_to_the_grid(tmp_path, capsys):
    store = str(tmp_path / "r.sqlite")
    plugin = str(ROOT / "examples" / "late_fusion.py")
    assert main(["run", "--plugin", plugin, "--models", "late-fusion,tf", "--combos", "IGCB",
                 "--store", store, *QUICK]) == 0
    assert set(load_results(store)["model"]) == {"late-fusion", "tf"}


def test_killed_grid_resumes_without_loss(tmp_path):
    store = tmp_path / "r.sqlite"
    env = {**os.environ, "FMB_DIE_FLAG": str(tmp_path / "died"), "PYTHONPATH": str(ROOT)}
    # in this process (--jobs 1), so the run that dies takes the whole grid with it
    cmd = [sys.executable, str(ROOT / "run_bench.py"), "run", "--plugin", "tests.plugin_dying",
           "--models", "tf,dies-once", "--combos", "IG", "--seeds", "0,1", "--store",
           str(store), "--jobs", "1", *QUICK]
    first = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=tmp_path)
    assert first.returncode == 3, first.stderr
    kept = load_results(store)
    assert sorted(kept["model"]) == ["tf", "tf"]
    second = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=tmp_path)
    assert second.returncode == 0, second.stderr
    assert "2 run(s) written" in second.stdout and "2 already there" in second.stdout
    final = load_results(store)
    assert sorted(final["model"]) == ["dies-once", "dies-once", "tf", "tf"]
    tf_rows = final[final["model"] == "tf"].set_index("key")
    assert tf_rows["created_at"].to_dict() == kept.set_index("key")["created_at"].to_dict()


def _dry_run(capsys, *args: str) -> dict:
    assert main(["run", "--models", "tf", "--combos", "IG", "--dry-run", *args]) == 0
    out = capsys.readouterr().out  # configurations (JSON lines), then the cost estimate
    (record,) = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    return record


def test_quick_run_uses_the_whole_synthetic_cohort_unless_told(capsys):
    # the quick profile takes every patient: with a test set under ~100 one patient is a point
    assert _dry_run(capsys)["data_options"] == {"scale": 1.0, "seed": 0, "split_file": None,
                                                "eval": "complete"}
    assert _dry_run(capsys, "--data-option", "scale=0.2")["data_options"]["scale"] == 0.2
