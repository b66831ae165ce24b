"""The cost estimate of `run --dry-run` / `reproduce --dry-run`: steps from the resolved data,
time per step from matching runs in the store (batch size and architecture equal, epochs and
learning rate free), else a short probe here; only what the store lacks is counted."""

from __future__ import annotations

import json
import math
import os

import pytest
import torch

from bench.artefacts.catalogue import select
from bench.artefacts.reproduce import plan
from bench.cli.main import main
from bench.data.load import load_data
from bench.execution.estimate import estimate, render
from bench.identity.config import KEY_VERSION, build_grid
from bench.results.store import ResultStore

TINY = {"scale": 0.05}


def _row(key, cell, device="cpu", hparams=None, **timing):
    return {"key": key, "key_version": KEY_VERSION, "status": "ok", "model": cell.model,
            "dataset": cell.dataset, "combo": cell.combo, "seed": 9, "profile": cell.profile,
            "hparams": hparams or cell.hparams, "device": device,
            "created_at": "2026-01-01T00:00:00+00:00", **timing}


def _steps(cell) -> int:
    data = load_data(cell.dataset, cell.data_options, cell.split_seed).restrict(cell.combo)
    return cell.hparams["epochs"] * math.ceil(data.splits["train"].numel() /
                                              cell.hparams["batch_size"])


def test_estimate_from_matching_runs_in_the_store(tmp_path):
    cells = build_grid(["tf"], "synthetic-adni", ["IG", "IGCB"], [0, 1],
                       overrides={"epochs": 2}, data_options=TINY)
    ig0, ig1, igcb0, igcb1 = cells
    path = tmp_path / "r.sqlite"
    with ResultStore(path) as store:
        store.write(_row(ig0.key, ig0, ms_per_iter_median=20.0))  # stored: not counted again
        for i, ms in enumerate((10.0, 30.0, 20.0)):  # other epochs and lr: a step costs the same
            store.write(_row(f"h{i}", ig0, hparams={**ig0.hparams, "epochs": 7, "lr": 0.1},
                             ms_per_iter_median=ms))
        store.write(_row("bigger-batch", ig0, hparams={**ig0.hparams, "batch_size": 16},
                         ms_per_iter_median=1000.0))
        store.write(_row("on-gpu", ig0, device="cuda", ms_per_iter_median=1.0))
        store.write(_row("failed", ig0, ms_per_iter_median=1000.0) | {"status": "failed"})
        # no step time stored: seconds per epoch over that run's steps per epoch (80 / 8)
        store.write(_row("epoch-only", igcb0, s_per_epoch=0.5, n_train=80))
    est = estimate(cells, path, "cpu")
    assert est.stored == 1 and est.probes == 0 and est.device == "cpu"
    (tf,) = est.models
    assert tf.runs == 3 and tf.sources == {"store": 3} and tf.unknown == 0
    assert sorted(tf.steps) == sorted([_steps(ig1), _steps(igcb0), _steps(igcb1)])
    assert tf.step_ms == [20.0, 50.0, 50.0]
    expected = (_steps(ig1) * 20.0 + 2 * _steps(igcb0) * 50.0) / 3.6e6
    assert tf.hours == pytest.approx(expected)
    text = render(est)
    assert f"3 run(s) to train, 1 already in {path}" in text
    assert _table(text, "tf")[5] == "store" and "| CPU-hours" in text
    total = _table(text, "total")
    assert total[1] == "3" and float(total[4]) == pytest.approx(expected, rel=0.05)
    if not torch.cuda.is_available():  # GPU runs only, and no GPU here to probe IGCB on
        gpu = estimate(cells, path, "cuda")
        assert gpu.models[0].sources == {"store": 1, "none": 2}
        assert _table(render(gpu), "tf")[4] == f"{_steps(ig1) / 3.6e6:.1e} (+2 unknown)"
        assert "GPU-hours" in render(gpu)


def _table(text: str, first: str) -> list[str]:
    """The cells of the table row that starts with ``first``."""
    line = next(ln for ln in text.splitlines() if ln.startswith(f"| {first} "))
    return [c.strip() for c in line.strip("|").split("|")]


def test_dry_run_probes_a_model_without_history_and_stores_nothing(tmp_path, capsys):
    path = tmp_path / "r.sqlite"
    threads = torch.get_num_threads()
    assert main(["run", "--models", "venugopalan2021", "--combos", "IG", "--set", "epochs=2",
                 "--data-option", "scale=0.05", "--jobs", "2", "--dry-run", "--store",
                 str(path)]) == 0
    out = capsys.readouterr().out
    # probed as a pool worker of two would run: with its share of the cores
    per_run = max(1, (os.cpu_count() or 1) // 2)
    assert f"Cost estimate on cpu ({per_run} torch thread(s) per run): 1 run(s)" in out
    assert torch.get_num_threads() == threads
    (record,) = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    cells = _table(out, "venugopalan2021")
    assert cells[1] == "1" and cells[2] == str(_steps(build_grid(
        ["venugopalan2021"], "synthetic-adni", ["IG"], [0], overrides={"epochs": 2},
        data_options=TINY)[0]))
    assert float(cells[3]) > 0 and float(cells[4]) > 0 and cells[5] == "probe"
    assert "1 probe(s) took" in out and record["model"] == "venugopalan2021"
    assert not path.exists()


def test_reproduce_dry_run_estimates_the_tables_runs_and_trains_nothing(tmp_path, capsys):
    path = tmp_path / "r.sqlite"
    (table3,) = plan(select("3"), "quick")
    with ResultStore(path) as store:
        for i, cell in enumerate(table3.cells):
            store.write(_row(f"earlier-{i}", cell, ms_per_iter_median=12.0))
    assert main(["reproduce", "--table", "3", "--profile", "quick", "--dry-run", "--store",
                 str(path)]) == 0
    out = capsys.readouterr().out
    assert f"{len(table3.cells)} run(s) to train, 0 already in {path}" in out
    lines = [ln for ln in out.splitlines() if ln.startswith("| flexmoe")]
    assert len(lines) == 6 and all("| 12.0 " in ln and "| store " in ln for ln in lines)
    assert not (tmp_path / "reproduce").exists()
    with ResultStore(path) as store:
        assert len(store.load()) == len(table3.cells)


def test_the_progress_bar_weighs_runs_by_their_stored_step_times(tmp_path):
    """The ETA follows cost, not epochs: a run's epoch weighs its expected seconds, from the
    store's earlier step times (a run without one: the median step of those with one)."""
    from bench.execution.estimate import epoch_seconds
    from bench.execution.grid import run_grid
    from bench.identity.config import build_grid
    from bench.results.store import ResultStore

    small = {"scale": 0.1}
    first = build_grid(["tf"], "synthetic-adni", ["IG"], [0], "smoke", data_options=small)
    later = build_grid(["tf", "mag"], "synthetic-adni", ["IG"], [1], "smoke",
                       data_options=small)
    path = tmp_path / "runs.sqlite"
    assert epoch_seconds(later, path, "cpu") is None  # nothing timed yet: epochs
    with ResultStore(path) as store:
        (row,) = run_grid(first, store, progress=False)
    seconds = epoch_seconds(later, path, "cpu")
    steps = -(-row["n_train"] // later[0].hparams["batch_size"])
    assert seconds[later[0].key] == pytest.approx(row["ms_per_iter_median"] * steps / 1e3)
    mag_steps = -(-row["n_train"] // later[1].hparams["batch_size"])
    assert seconds[later[1].key] == pytest.approx(row["ms_per_iter_median"] * mag_steps / 1e3)
