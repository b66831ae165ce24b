"""`run_bench.py status`: per grid, runs done, running (holder host:pid), failed (first line
of the error) and time spent, from a hand-made store, read without writing."""

from __future__ import annotations

import contextlib
import os
import sqlite3
import time

from bench.cli.main import main
from bench.identity.config import KEY_VERSION
from bench.results.schema import Claim
from bench.results.store import ResultStore


def _row(key, model="tf", combo="IG", seed=0, status="ok", seconds=30.0, **extra):
    return {"key": key, "key_version": KEY_VERSION, "status": status, "model": model,
            "dataset": "synthetic-adni", "combo": combo, "seed": seed, "profile": "quick",
            "created_at": "2026-01-01T00:00:00+00:00", "train_seconds": seconds, **extra}


def _claim(key, model, combo, seed, host, pid, expires):
    return Claim(key, f"owner-{host}", host, pid, f"{host}/boot/ns", time.time() - 60, expires,
                 model, "synthetic-adni", combo, seed, "quick")


def test_status_shows_done_running_failed_and_time_per_grid(tmp_path, capsys):
    path = tmp_path / "r.sqlite"
    now = time.time()
    with ResultStore(path) as store:
        store.write(_row("a", seconds=3000.0))
        store.write(_row("b", combo="IGCB", seconds=700.0))
        store.write(_row("c", seed=1, status="failed", seconds=5.0,
                         error="RuntimeError: CUDA out of memory\n  (details)"))
        store.write(_row("d", model="flexmoe", combo="IGCB", seconds=60.0))
        store.write(_row("e", model="tf", profile="paper", key_version=KEY_VERSION - 1))
        store.write(_row("n", model="mag", status="failed", seconds=None, error=None))
        store.claim(_claim("r1", "tf", "IGCB", 1, "node7", 4242, now + 300))
        store.claim(_claim("r2", "flexmoe", "IG", 0, "node8", 99, now + 300))
        store.claim(_claim("old", "flexmoe", "IG", 1, "node9", 7, now - 5))  # expired
        store.claim(_claim("a", "tf", "IG", 0, "node7", 4242, now + 300))  # already done
    before = path.read_bytes()
    assert main(["status", "--store", str(path)]) == 0
    out = capsys.readouterr().out
    assert path.read_bytes() == before and not os.path.exists(f"{path}-journal")
    table = {tuple(c.strip() for c in line.strip("|").split("|")[:3]): [
        c.strip() for c in line.strip("|").split("|")[3:]]
        for line in out.splitlines() if line.startswith("| ") and "model" not in line}
    # time spent: the stored runs' training time plus the minute each running run has run
    # (a second or two more on a slow machine)
    epochs = {grid: cells.pop() for grid, cells in table.items()}
    spent = {grid: cells.pop() for grid, cells in table.items()}
    assert table == {("flexmoe", "synthetic-adni", "quick"): ["1", "1", "0", "0"],
                     ("mag", "synthetic-adni", "quick"): ["0", "0", "0", "1"],
                     ("tf", "synthetic-adni", "quick"): ["2", "1", "0", "1"]}
    assert set(epochs.values()) == {""}  # no run stored its per-epoch step times
    assert spent[("flexmoe", "synthetic-adni", "quick")].startswith("0:02:0")
    assert spent[("mag", "synthetic-adni", "quick")] == "0:00:00"
    assert spent[("tf", "synthetic-adni", "quick")][:6] in ("1:02:4", "1:02:5")
    assert "  running  IGCB seed 1: node7:4242 (for 0:01:0" in out
    assert "  running  IG seed 0: node8:99" in out
    assert "  stale    IG seed 1: node9:7 (lease expired" in out
    assert "  failed   IG seed 1: RuntimeError: CUDA out of memory\n" in out
    assert "details" not in out and "IG seed 0: node7:4242" not in out  # a's row is written
    assert "  failed   IG seed 0: (no error recorded)" in out
    assert "(1 row(s) of an older key version not counted)" in out


def test_status_lists_a_live_grids_queued_runs_and_the_epochs_step_times(tmp_path, capsys):
    """A coordinator records its grid when it starts: `status` counts the runs it has yet to
    start (not another's, nor those done or running), and they go when it exits; the done
    runs' first and last epochs' step times show a step that slows over a run."""
    from types import SimpleNamespace

    from bench.results.claims import Coordinator

    path = tmp_path / "r.sqlite"
    cells = [SimpleNamespace(key=f"k{i}", model="flexmoe", dataset="synthetic-adni",
                             combo="IGCB", seed=i, profile="quick") for i in range(5)]
    with ResultStore(path) as store:
        store.write(_row("k0", model="flexmoe", combo="IGCB", ms_per_iter_epochs=[15.0, 17.0]))
        store.write(_row("x", model="flexmoe", combo="IGCB", seed=9,
                         ms_per_iter_epochs=[16.0, 20.0, 19.0]))
        with Coordinator(store) as ours, Coordinator(store) as theirs:
            ours.enqueue(cells[1:])
            assert ours.claim(cells[1])[0] == "claimed"
            assert theirs.claim(cells[2])[0] == "claimed"  # a queued run binds nobody
            assert main(["status", "--store", str(path)]) == 0
            out = capsys.readouterr().out
            row = next(line for line in out.splitlines() if line.startswith("| flexmoe"))
            assert [c.strip() for c in row.strip("|").split("|")] [3:6] == ["2", "2", "2"]
            assert row.rstrip(" |").endswith("15.5 → 18.0")
            assert f"  queued   2 run(s) by {ours.host}:{ours.pid}" in out
        assert main(["status", "--store", str(path)]) == 0
        row = next(line for line in capsys.readouterr().out.splitlines()
                   if line.startswith("| flexmoe"))
        assert [c.strip() for c in row.strip("|").split("|")][3:6] == ["2", "0", "0"]
        assert store.claims() == []


def test_status_of_an_empty_an_older_and_a_missing_store(tmp_path, capsys):
    empty = tmp_path / "empty.sqlite"
    ResultStore(empty).close()
    assert main(["status", "--store", str(empty)]) == 0
    assert capsys.readouterr().out.strip() == f"{empty}: no runs yet"
    old = tmp_path / "old.sqlite"  # no claims table, no key_version: read in place
    with contextlib.closing(sqlite3.connect(old)) as conn, conn:
        conn.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT)")
        conn.execute("INSERT INTO meta VALUES ('schema_version', '1')")
        conn.execute("CREATE TABLE runs (key TEXT PRIMARY KEY, status TEXT, model TEXT)")
        conn.execute("INSERT INTO runs VALUES ('k', 'ok', 'tf')")
    before = old.read_bytes()
    assert main(["status", "--store", str(old)]) == 0
    assert "no runs yet (1 of an older key version)" in capsys.readouterr().out
    assert old.read_bytes() == before
    assert main(["status", "--store", str(tmp_path / "absent.sqlite")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: no results store at") and err.count("\n") == 1
