"""Runs and grids: determinism under a seed, resume, failure rows, executors agree."""

from __future__ import annotations

import os

import pytest

from bench.errors import UserError
from bench.execution.executors import ProcessExecutor
from bench.execution.grid import run_grid
from bench.execution.options import parse_options
from bench.hparams import SettingError
from bench.identity.config import build_grid
from bench.results.store import ResultStore
from bench.training.run import execute
from flexmoe.model import FlexMoE

SMALL = {"scale": 0.2}
FAST = {"epochs": 2}
TIMING = ("ms_per_iter", "ms_per_iter_median", "ms_per_iter_epochs", "s_per_epoch",
          "train_seconds", "created_at", "threads", "cpu_share", "load_avg")


def _grid(**kw):
    args = {"models": ["tf"], "dataset": "synthetic-adni", "combos": ["IG"], "seeds": [0],
            "overrides": FAST, "data_options": SMALL}
    args.update(kw)
    return build_grid(**args)


def test_cells_are_keyed_by_their_resolved_configuration():
    cells = _grid(combos=["IG", "IGCB"], seeds=[0, 1])
    assert len({c.key for c in cells}) == 4
    assert [c.key for c in cells] == [c.key for c in _grid(combos=["IG", "IGCB"], seeds=[0, 1])]
    other = _grid(overrides={**FAST, "lr": 1e-3})
    assert other[0].key != cells[0].key
    assert cells[0].hparams["epochs"] == 2 and cells[0].hparams["batch_size"] == 8


def test_unknown_hyper_parameter_fails_before_training():
    with pytest.raises(UserError, match="no hyper-parameter 'num_expertz'"):
        _grid(overrides={"num_expertz": 4})


def test_a_run_is_deterministic_under_its_seed():
    cell = _grid()[0]
    a, b = execute(cell), execute(cell)
    assert a["status"] == "ok", a.get("error")
    # both FLOP conventions are stored: fvcore's multiply-adds are half of torch's FLOPs for TF
    assert a["fvcore_flops_per_sample"] == a["flops_per_sample"] / 2 > 0
    for k in a:
        if k not in TIMING:
            assert a[k] == b[k], k
    other = execute(_grid(seeds=[1])[0])
    assert other["test_auc"] != a["test_auc"]


def test_a_setting_the_model_refuses_fails_before_training():
    with pytest.raises(SettingError, match="refuses its settings: num_experts=2 must exceed"):
        _grid(models=["flexmoe"], overrides={**FAST, "num_experts": 2})


def test_grid_resumes_and_records_failures(tmp_path, monkeypatch):
    # a run that breaks while training: a failed row, retried later
    def breaks(self, batch):
        raise RuntimeError("the model broke at its first batch")

    monkeypatch.setattr(FlexMoE, "forward", breaks)
    cells = _grid(seeds=[0, 1]) + _grid(models=["flexmoe"], overrides=FAST)
    with ResultStore(tmp_path / "r.sqlite") as store:
        rows = run_grid(cells, store, progress=False)
        assert [r["status"] for r in rows] == ["ok", "ok", "failed"]
        assert "the model broke" in rows[2]["error"]
        again = run_grid(cells, store, progress=False)
        assert [r["key"] for r in again] == [cells[2].key]  # only the failed run is retried
        assert len(store.load()) == 3


def test_process_pool_gives_the_same_rows(tmp_path):
    """Rows agree for the same thread count: one per run, in this process and in a pool;
    the pool's workers report each epoch for the progress bar."""
    cells = _grid(seeds=[0, 1], overrides={"epochs": 2})
    with ResultStore(tmp_path / "a.sqlite") as a, ResultStore(tmp_path / "b.sqlite") as b:
        serial = {r["key"]: r for r in run_grid(cells, a, progress=False)}
        expected = (os.environ.get("OMP_WAIT_POLICY") or "PASSIVE").upper()
        ticks: list[str] = []
        with ProcessExecutor(b, "cpu", jobs=2, threads=1, on_epoch=ticks.append) as pool:
            pool.submit([(cell, None) for cell in cells])
            pooled = {row["key"]: row for _ in cells for _, row in pool.wait()}
        # every epoch is heard of by the time its run's row is back
        assert sorted(ticks) == sorted(c.key for c in cells for _ in range(2))
    assert {r["threads"] for r in [*serial.values(), *pooled.values()]} == {1}
    # one-thread workers sleep when they wait (unless a policy was set before)
    assert {r["omp_wait_policy"] for r in pooled.values()} == {expected}
    # how busy the machine was while each run timed itself
    assert all(r["cpu_share"] > 0 and r["load_avg"] >= 0 for r in pooled.values())
    assert serial.keys() == pooled.keys()
    for key, row in serial.items():
        for k in ("test_acc", "test_f1", "test_auc", "val_acc_curve", "params", "best_epoch"):
            assert row[k] == pooled[key][k], k


def test_a_run_that_kills_its_worker_fails_alone_and_the_others_finish(tmp_path):
    """A dead worker breaks the pool and every run in flight: those rerun one at a time, so
    only the run that kills its worker is stored as failed."""
    import tests.plugin_dying  # noqa: F401  (registers always-dies here and in the workers)

    cells = _grid(models=["tf", "always-dies"], seeds=[0, 1], plugins=["tests.plugin_dying"])
    with ResultStore(tmp_path / "r.sqlite") as store:
        rows = run_grid(cells, store, jobs=2, progress=False)
        stored = store.load()
    status = {(r["model"], r["seed"]): r["status"] for r in rows}
    assert status == {("tf", 0): "ok", ("tf", 1): "ok", ("always-dies", 0): "failed",
                      ("always-dies", 1): "failed"}
    for r in rows:
        if r["status"] == "failed":
            assert "worker process died while it trained" in r["error"]
    assert len(stored) == 4


def test_a_pool_found_broken_at_submit_restarts_and_runs_the_batch(tmp_path):
    """A worker can die between a wait and the next submit: the pool refuses the batch, so
    the executor starts a fresh one and runs those cells (one at a time) instead of raising."""
    from concurrent.futures.process import BrokenProcessPool

    class Broken:
        def submit(self, *args, **kwargs):
            raise BrokenProcessPool("a child process terminated abruptly")

        def shutdown(self, **kwargs):
            pass

    cells = _grid(seeds=[0, 1])
    with ResultStore(tmp_path / "r.sqlite") as store:
        with ProcessExecutor(store, "cpu", jobs=2, threads=1) as pool:
            pool._pool.shutdown()
            pool._pool = Broken()
            pool.submit([(cell, None) for cell in cells])
            assert pool.in_flight() == 2 and pool.room() == 0
            rows = [row for _ in cells for _, row in pool.wait()]
    assert sorted(r["seed"] for r in rows) == [0, 1]
    assert all(r["status"] == "ok" for r in rows)


def test_the_default_executor_trains_one_thread_runs_one_per_usable_core(monkeypatch):
    """No --executor, --jobs or --threads: on the CPU a pool of one-thread runs, one per
    usable core and no more than the runs or the memory holds (one run: this process); on
    a GPU this process. An explicit choice stays as given."""
    from bench import machine

    monkeypatch.setattr(machine, "usable_cpus", lambda: 8)
    monkeypatch.setattr(machine, "available_memory", lambda: 64 * 2**30)
    auto = parse_options()
    assert (auto.kind, auto.threads) == ("auto", 1)
    plans = {(runs, dev): (o.kind, o.jobs, o.threads) for runs in (1, 3, 40)
             for dev in ("cpu", "cuda") for o in [auto.for_grid(runs, dev)]}
    assert plans == {(1, "cpu"): ("local", 1, 1), (3, "cpu"): ("process", 3, 1),
                     (40, "cpu"): ("process", 8, 1), (1, "cuda"): ("local", 1, 1),
                     (3, "cuda"): ("local", 1, 1), (40, "cuda"): ("local", 1, 1)}
    assert parse_options(threads=2).for_grid(40, "cpu").jobs == 4
    monkeypatch.setattr(machine, "available_memory", lambda: 3 * machine.WORKER_BYTES + 1)
    assert auto.for_grid(40, "cpu").jobs == 3
    assert parse_options("process").for_grid(40, "cpu").jobs == 3
    assert parse_options(jobs=1).for_grid(40, "cpu").kind == "local"
    assert parse_options(jobs=5).for_grid(40, "cpu").jobs == 5


def test_progress_counts_epochs_and_names_the_current_run(tmp_path, capsys):
    cells = _grid(overrides={"epochs": 3})
    seen = []
    row = execute(cells[0], on_epoch=seen.append)
    assert row["status"] == "ok" and seen == [0, 1, 2]
    # each epoch's median step time is stored: a step that slows over a run shows
    assert len(row["ms_per_iter_epochs"]) == 3 and min(row["ms_per_iter_epochs"]) > 0
    with ResultStore(tmp_path / "r.sqlite") as store:
        run_grid(_grid(seeds=[0, 1]), store, progress=True)
    err = capsys.readouterr().err
    assert "epoch" in err and "run 2/2: tf IG seed 1" in err


def test_a_grid_piped_to_a_file_logs_its_progress_at_a_steady_interval(tmp_path, monkeypatch,
                                                                       caplog):
    """Off a terminal the bar cannot redraw: its state is logged every LOG_EVERY seconds."""
    from bench.execution import grid

    monkeypatch.setattr(grid, "LOG_EVERY", 0.05)
    monkeypatch.setattr(grid.sys.stderr, "isatty", lambda: False, raising=False)
    with caplog.at_level("INFO", "bench.execution.grid"), \
            ResultStore(tmp_path / "r.sqlite") as store:
        run_grid(_grid(), store, progress=True)
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("progress:")]
    assert len(lines) >= 2 and "run(s)" in lines[0] and "epoch" in lines[-1]
