"""Executors: one small grid through local, process, SLURM (submitit's local executor: real
job processes, no mock) and Ray (a local instance) gives the same metrics; a detached SLURM
job is collected by `status` and a later `run` without any run trained twice; a missing
extra or a bad option is one clear error before anything is stored."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from bench.cli.main import main
from bench.execution.grid import run_grid
from bench.execution.options import DEFAULT_THREADS, parse_options, slurm_minutes
from bench.identity.config import build_grid
from bench.results.store import ResultStore

ROOT = Path(__file__).resolve().parents[1]
#: Torch threads of a run, in this process, a pool worker, a SLURM or a Ray task alike.
THREADS = DEFAULT_THREADS
SAME = ("test_acc", "test_f1", "test_auc", "val_acc", "val_acc_curve", "best_epoch", "params")
GRID = ["--models", "tf", "--dataset", "synthetic-adni", "--combos", "IG,IGCB", "--seeds", "0",
        "--set", "epochs=1", "--data-option", "scale=0.05"]


def _cells():
    return build_grid(["tf"], "synthetic-adni", ["IG", "IGCB"], [0], overrides={"epochs": 1},
                      data_options={"scale": 0.05})


@pytest.fixture(autouse=True)
def importable(monkeypatch):
    """Job processes import this checkout whether or not it is installed."""
    monkeypatch.setenv("PYTHONPATH", str(ROOT))


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> dict[str, dict]:
    """The grid trained in this process (at the default thread count, as every executor)."""
    threads = torch.get_num_threads()
    with ResultStore(tmp_path_factory.mktemp("local") / "r.sqlite") as store:
        rows = run_grid(_cells(), store, progress=False)
    assert torch.get_num_threads() == threads  # this process's own setting is restored
    assert [r["status"] for r in rows] == ["ok", "ok"]
    assert [r["threads"] for r in rows] == [THREADS, THREADS]
    return {r["key"]: r for r in rows}


@pytest.fixture(scope="module")
def ray_instance():
    """One small local Ray instance for the module (workers find this checkout)."""
    ray = pytest.importorskip("ray")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PYTHONPATH", str(ROOT))
        ray.init(num_cpus=2 * THREADS, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


def _same_rows(rows, reference: dict[str, dict]) -> None:
    got = {r["key"]: r for r in rows}
    assert got.keys() == reference.keys()
    for key, row in got.items():
        assert row["status"] == "ok", row.get("error")
        for k in SAME:
            assert row[k] == reference[key][k], k


@pytest.mark.parametrize("kind", ["process", "slurm", "ray"])
def test_every_executor_gives_the_rows_of_the_local_one(kind, reference, tmp_path, request):
    if kind == "slurm":
        pytest.importorskip("submitit")
        options = parse_options("slurm", slurm={"cluster": "local", "cpus_per_task": THREADS,
                                                "time": "10"})
    elif kind == "ray":
        request.getfixturevalue("ray_instance")
        options = parse_options("ray", ray={"cpus_per_task": THREADS})
    else:
        options = parse_options(jobs=2)
    path = tmp_path / "r.sqlite"
    with ResultStore(path) as store:
        rows = run_grid(_cells(), store, "cpu", progress=False, executor=options)
        _same_rows(rows, reference)
        assert [r["threads"] for r in rows] == [THREADS, THREADS]
        assert store.done_keys() == set(reference) and store.claims() == []
        assert not store.pending_receipts()  # taken in as they arrived
        again = run_grid(_cells(), store, "cpu", progress=False, executor=options)
        assert again == []
    if kind == "slurm":  # the job logs sit beside the store
        assert list((tmp_path / "r.sqlite.slurm").glob("*_log.out"))


def _wait_for_receipts(path: Path, n: int, timeout: float = 240) -> None:
    receipts = path.with_name(path.name + ".receipts")
    deadline = time.monotonic() + timeout
    while len(list(receipts.glob("*.json"))) < n:
        assert time.monotonic() < deadline, "the detached job left no receipts"
        time.sleep(0.5)


def test_detached_slurm_job_is_collected_and_nothing_trains_twice(reference, tmp_path, capsys):
    pytest.importorskip("submitit")
    path = tmp_path / "r.sqlite"
    slurm = ["--executor", "slurm", "--slurm-cluster", "local",
             "--slurm-cpus-per-task", str(THREADS)]
    assert main(["run", *GRID, *slurm, "--detach", "--store", str(path)]) == 0
    out = capsys.readouterr().out
    assert "2 run(s) submitted as local job(s)" in out and "(detached;" in out
    assert f"run_bench.py status --store {path}" in out
    with ResultStore(path) as store:  # the job holds its runs: a run meanwhile trains none
        assert {c.key for c in store.claims()} == set(reference)
        rows = run_grid(_cells(), store, progress=False)
        assert rows == [] and set(rows.claimed) | store.done_keys() == set(reference)
    _wait_for_receipts(path, 2)
    assert main(["status", "--store", str(path)]) == 0
    out = capsys.readouterr().out
    assert "2 finished run(s) taken in from receipts" in out
    assert re.search(r"\| tf +\| synthetic-adni \| quick +\| +2 \| +0 \| +0 \|", out), out
    with ResultStore(path) as store:
        _same_rows([r for _, r in store.load().iterrows()], reference)
        assert not store.pending_receipts()
    assert main(["run", *GRID, "--store", str(path)]) == 0  # the same grid again: trains none
    out = capsys.readouterr().out
    assert "0 run(s) written" in out and "2 already there" in out


def test_detached_ray_tasks_outlive_the_coordinator(reference, ray_instance, tmp_path):
    path = tmp_path / "r.sqlite"
    address = ray_instance.get_runtime_context().gcs_address
    done = subprocess.run(  # a coordinator that joins the running instance, submits, leaves
        [sys.executable, str(ROOT / "run_bench.py"), "run", *GRID, "--executor", "ray",
         "--ray-address", address, "--ray-cpus-per-task", str(THREADS), "--detach", "--store",
         str(path)], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"2 run(s) submitted to the Ray cluster at {address}" in done.stdout
    _wait_for_receipts(path, 2)
    with ResultStore(path) as store:  # the next run takes them in and trains nothing
        assert run_grid(_cells(), store, progress=False) == []
        _same_rows([r for _, r in store.load().iterrows()], reference)


@pytest.mark.parametrize("module, kind", [("submitit", "slurm"), ("ray", "ray")])
def test_a_missing_extra_is_one_clear_error(module, kind, monkeypatch, tmp_path, capsys):
    monkeypatch.setitem(sys.modules, module, None)  # import fails as if not installed
    path = tmp_path / "r.sqlite"
    assert main(["run", *GRID, "--executor", kind, "--store", str(path)]) == 2
    assert capsys.readouterr().err == (
        f"error: --executor {kind} needs the {module!r} package, which is not installed: "
        f'pip install "flexmoe-bench[{kind}]"\n')
    assert not path.exists()


@pytest.mark.parametrize("args, message", [
    (["--executor", "slurm", "--slurm-time", "soon"], "--slurm-time expects minutes, H:MM:SS"),
    (["--executor", "slurm", "--slurm-time", "0"], "--slurm-time must be positive, got '0'"),
    (["--executor", "slurm", "--slurm-extra", "mem"], "--slurm-extra expects KEY=VALUE"),
    (["--executor", "slurm", "--slurm-extra", "partition=gpu"],
     "--slurm-extra does not take partition: use --slurm-partition"),
    (["--executor", "slurm", "--slurm-cpus-per-task", "0"],
     "--slurm-cpus-per-task must be at least 1, got 0"),
    (["--slurm-partition", "gpu"], "--slurm-partition needs --executor slurm\n"),
    (["--executor", "local", "--slurm-partition", "gpu"],
     "--slurm-partition needs --executor slurm (got --executor local)"),
    (["--threads", "0"], "--threads must be at least 1, got 0"),
    (["--executor", "ray", "--threads", "2"], "--threads sets the threads of a run on this "
                                              "machine; a ray task runs one thread per CPU"),
    (["--executor", "local", "--jobs", "2"], "--jobs sizes the local process pool"),
    (["--executor", "ray", "--slurm-time", "10"], "--slurm-time needs --executor slurm"),
    (["--executor", "slurm", "--jobs", "2"], "--jobs sizes the local process pool"),
    (["--jobs", "2", "--detach"], "--detach needs --executor slurm or ray"),
    (["--executor", "ray", "--detach"], "--detach with Ray needs --ray-address"),
    (["--executor", "ray", "--ray-cpus-per-task", "0"], "--ray-cpus-per-task must be positive"),
])
def test_a_bad_executor_option_is_one_clear_error(args, message, tmp_path, capsys):
    path = tmp_path / "r.sqlite"
    assert main(["run", *GRID, *args, "--store", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and err.count("\n") == 1, err
    assert not path.exists()


@pytest.mark.skipif(shutil.which("sbatch") is not None, reason="SLURM is installed here")
def test_slurm_without_sbatch_is_one_clear_error_and_claims_nothing(tmp_path, capsys):
    pytest.importorskip("submitit")
    path = tmp_path / "r.sqlite"
    assert main(["run", *GRID, "--executor", "slurm", "--store", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --executor slurm submits with sbatch, which is not on this "
                          "machine's PATH") and "--slurm-cluster local" in err
    with ResultStore(path) as store:
        assert store.claims() == [] and store.load().empty


def test_slurm_time_takes_slurms_formats():
    assert [slurm_minutes(t) for t in ("90", "1:30:00", "30:30", "2-00:00:00", "1-12",
                                       "0-0:0:1")] == [90, 90, 31, 2880, 2160, 1]
