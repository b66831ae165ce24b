"""Several coordinators on one store, and a killed coordinator's workers: each run is claimed
before it starts (a live lease is skipped, an expired or dead one taken over), leases are
renewed and released, two concurrent `run`s train every run once, and the pool workers of a
`kill -9`ed coordinator exit while what they finished is recovered from their receipts."""

from __future__ import annotations

import contextlib
import logging
import os
import re
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from bench.cli.main import main
from bench.execution.grid import run_grid
from bench.identity.config import build_grid
from bench.results.claims import Coordinator, machine_id, status_report
from bench.results.schema import CLAIM_COLUMNS, Claim
from bench.results.store import ResultStore

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--models", "tf", "--dataset", "synthetic-adni", "--data-option", "scale=0.1"]


def _cell(key: str, combo: str = "IG", seed: int = 0) -> SimpleNamespace:
    return SimpleNamespace(key=key, model="tf", dataset="toy", combo=combo, seed=seed,
                           profile="quick")


def _foreign(key: str, expires: float, host: str = "othernode", pid: int = 4242,
             machine: str | None = "othernode/boot/pid:[1]") -> Claim:
    return Claim(key, "someone-else", host, pid, machine, time.time() - 5, expires, "tf",
                 "synthetic-adni", "IG", 0, "quick")


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def _claims(path: Path) -> list[tuple]:
    with contextlib.closing(sqlite3.connect(path)) as conn:
        return conn.execute("SELECT key, owner, host, pid FROM claims ORDER BY key").fetchall()


# -- the store's claims ----------------------------------------------------------------------

def test_claims_table_is_created_and_added_to_older_stores(tmp_path):
    with ResultStore(tmp_path / "new.sqlite") as store:
        assert store.claims() == []
    with contextlib.closing(sqlite3.connect(tmp_path / "new.sqlite")) as conn:
        assert {r[1] for r in conn.execute("PRAGMA table_info(claims)")} == set(CLAIM_COLUMNS)
    old = tmp_path / "old.sqlite"
    with contextlib.closing(sqlite3.connect(old)) as conn, conn:  # before claims existed
        conn.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT)")
        conn.execute("INSERT INTO meta VALUES ('schema_version', '1')")
        conn.execute("CREATE TABLE runs (key TEXT PRIMARY KEY, status TEXT)")
    with ResultStore(old, readonly=True) as store:  # read in place: no claims, nothing added
        assert store.claims() == []
    with contextlib.closing(sqlite3.connect(old)) as conn:
        assert "claims" not in {r[0] for r in conn.execute("SELECT name FROM sqlite_master")}
    with ResultStore(old) as store, Coordinator(store) as me:
        assert me.claim(_cell("k"))[0] == "claimed"
        assert [c.holder for c in store.claims()] == [f"{me.host}:{os.getpid()}"]
    assert _claims(old) == []  # released on exit


def test_claim_outcomes(tmp_path):
    path = tmp_path / "r.sqlite"
    with ResultStore(path) as store:
        store.write({"key": "k2", "status": "failed", "created_at": "2020-01-01T00:00:00"})
    with ResultStore(path) as store, Coordinator(store) as a, Coordinator(store) as b:
        assert a.claim(_cell("k1")) == ("claimed", store.claims()[0])
        outcome, theirs = b.claim(_cell("k1"))  # a live lease (a runs: this very process)
        assert outcome == "held" and theirs.owner == a.owner and theirs.pid == os.getpid()
        assert a.claim(_cell("k1"))[0] == "claimed"  # claiming one's own run again is fine
        a.finish({"key": "k1", "status": "ok", "created_at": "2020-01-01T00:00:00+00:00"})
        assert _claims(path) == []  # released with the row, in its transaction
        assert b.claim(_cell("k1")) == ("done", None)
        # a failed row b found when it started is retried; one written since is not
        assert b.claim(_cell("k2"))[0] == "claimed"
        store.write({"key": "k3", "status": "failed", "created_at": "2030-01-01T00:00:00"})
        assert b.claim(_cell("k3")) == ("done", None)
        # another node: live until its lease expires, whatever its pid
        gone = _dead_pid()
        store.claim(_foreign("k4", time.time() + 600, pid=gone))
        assert b.claim(_cell("k4"))[0] == "held"
        store.claim(_foreign("k5", time.time() - 1))
        assert b.claim(_cell("k5"))[0] == "claimed"
        # this machine: a gone process frees its lease at once
        if machine_id() is not None:
            store.claim(_foreign("k6", time.time() + 600, host=a.host, pid=_dead_pid(),
                                 machine=machine_id()))
            assert b.claim(_cell("k6"))[0] == "claimed"
    assert _claims(path) == [("k4", "someone-else", "othernode", gone)]


def test_leases_are_renewed_lost_ones_reported_and_all_released_on_error(tmp_path, caplog):
    path = tmp_path / "r.sqlite"
    with ResultStore(path) as store:
        with pytest.raises(RuntimeError, match="boom"), \
                Coordinator(store, lease_s=30, renew_s=0.05) as me:
            me.claim(_cell("a"))
            me.claim(_cell("b"))
            first = {c.key: c.expires for c in store.claims()}

            def renewed() -> bool:  # polled: a loaded machine may delay the heartbeat
                now = {c.key: c.expires for c in store.claims()}
                return all(now[k] > first[k] for k in "ab")

            assert _wait_for(renewed, timeout=30)
            with caplog.at_level(logging.WARNING, "bench.results.claims"):  # b is taken over
                with contextlib.closing(sqlite3.connect(path)) as conn, conn:
                    conn.execute("UPDATE claims SET owner = 'thief' WHERE key = 'b'")
                assert _wait_for(lambda: "lost the lease on 1 run(s) (b)" in caplog.text,
                                 timeout=30)
            raise RuntimeError("boom")
        assert _claims(path) == [("b", "thief", me.host, os.getpid())]  # ours (a) released


# -- run_grid and `run` with claims ------------------------------------------------------------

def test_expired_lease_is_taken_over_and_a_live_one_skipped(tmp_path, caplog, capsys):
    path = tmp_path / "r.sqlite"
    ig, igcb = build_grid(["tf"], "synthetic-adni", ["IG", "IGCB"], [0], overrides={"epochs": 1},
                          data_options={"scale": 0.1})
    with ResultStore(path) as store:  # a dead node's claim and a live one, by hand
        store.claim(_foreign(ig.key, time.time() - 60, host="deadnode", pid=111))
        store.claim(_foreign(igcb.key, time.time() + 600, host="busynode", pid=222))
    args = ["run", *TINY, "--combos", "IG,IGCB", "--seeds", "0", "--set", "epochs=1",
            "--store", str(path)]
    with caplog.at_level(logging.INFO):
        assert main(args) == 0
    out = capsys.readouterr().out
    assert "1 run(s) written" in out and "0 already there, 1 claimed by another run" in out
    assert f"taking over run {ig.key} from deadnode:111 (lease expired)" in caplog.text
    assert f"skipping tf IGCB seed 0 ({igcb.key}): claimed by another run on busynode:222" \
        in caplog.text
    with ResultStore(path) as store:
        assert store.done_keys() == {ig.key}
        assert [(c.key, c.holder) for c in store.claims()] == [(igcb.key, "busynode:222")]
        store.release("someone-else")  # the busy node gives up: the next run trains it
        rows = run_grid([ig, igcb], store, progress=False)
        assert [r["key"] for r in rows] == [igcb.key] and rows.claimed == {}
        assert store.claims() == []


def _written(out: str) -> tuple[int, int, int]:
    m = re.search(r"(\d+) run\(s\) written to .*, (\d+) already there, (\d+) claimed by "
                  r"another run", out)
    assert m, out
    return int(m[1]), int(m[2]), int(m[3])


def test_two_coordinators_on_one_store_train_each_run_once(tmp_path):
    path = tmp_path / "shared.sqlite"
    cmd = [sys.executable, str(ROOT / "run_bench.py"), "run", *TINY, "--combos", "IG,IGCB",
           "--seeds", "0,1", "--set", "epochs=3", "--store", str(path)]
    # one thread each: two coordinators on a small machine must not fight over its cores
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    procs = [subprocess.Popen(cmd, env=env, cwd=tmp_path, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outs = [p.communicate(timeout=600) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [err[-2000:] for _, err in outs]
    counts = [_written(out) for out, _ in outs]
    assert sum(written for written, _, _ in counts) == 4, counts  # no run trained twice
    for written, already, claimed in counts:
        assert written + already + claimed == 4
    with ResultStore(path) as store:
        df = store.load()
        assert len(df) == 4 and set(df["status"]) == {"ok"}
        assert store.claims() == []


# -- a killed coordinator's pool workers ------------------------------------------------------

def _children(pid: int) -> dict[int, str]:
    """Living (not zombie) processes whose parent is ``pid``: pid → command line."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        if fields[0] != "Z" and int(fields[1]) == pid:
            found[int(entry.name)] = cmdline
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def _started(pid: int) -> str | None:
    """The start time of ``pid`` (so a reused pid is never taken for it)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def _wait_for(what, timeout: float, step: float = 0.1):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = what()
        if value:
            return value
        time.sleep(step)
    return what()


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs /proc")
def test_killed_coordinator_leaves_no_workers_and_its_receipts_are_recovered(tmp_path):
    path = tmp_path / "r.sqlite"
    grid = ["--combos", "IG,IGCB", "--seeds", "0,1,2", "--set", "epochs=4"]
    coordinator = subprocess.Popen(
        [sys.executable, str(ROOT / "run_bench.py"), "run", *TINY, *grid, "--jobs", "2",
         "--store", str(path)], env={**os.environ, "PYTHONPATH": str(ROOT)}, cwd=tmp_path,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    workers: dict[int, str | None] | None = None  # pid → start time
    try:
        def pool_workers() -> dict[int, str | None] | None:
            found = {p: _started(p) for p, cmd in _children(coordinator.pid).items()
                     if "spawn_main" in cmd}
            return found if len(found) == 2 else None

        workers = _wait_for(pool_workers, 180)
        assert workers, f"no two pool workers under {coordinator.pid}"
        # the pool's threads in the coordinator hand the workers their runs just after
        # starting them: stopped before that, the workers would wait for work forever
        time.sleep(1.0)
        os.kill(coordinator.pid, signal.SIGSTOP)  # it writes nothing more; workers go on
        receipts = path.with_name(path.name + ".receipts")
        assert _wait_for(lambda: list(receipts.glob("*.json")), 300, step=0.5), \
            "no worker finished a run"
        os.kill(coordinator.pid, signal.SIGKILL)
        coordinator.wait(timeout=30)
        left = _wait_for(lambda: None if any(map(_alive, workers)) else "gone", 10)
        assert left == "gone", f"workers {[p for p in workers if _alive(p)]} outlived it"
    finally:  # never leave our processes behind, whatever failed (pids may be reused)
        with contextlib.suppress(ProcessLookupError):
            os.kill(coordinator.pid, signal.SIGKILL)
        coordinator.wait(timeout=30)
        for pid, started in (workers or {}).items():
            if _alive(pid) and _started(pid) == started:
                os.kill(pid, signal.SIGKILL)
    recovered = {p.stem for p in receipts.glob("*.json")}
    cells = build_grid(["tf"], "synthetic-adni", ["IG", "IGCB"], [0, 1, 2],
                       overrides={"epochs": 4}, data_options={"scale": 0.1})
    assert recovered <= {c.key for c in cells}
    with ResultStore(path) as store:  # the next run takes the receipts and trains nothing
        rows = run_grid([c for c in cells if c.key in recovered], store, progress=False)
        assert rows == [] and recovered <= store.done_keys()
        assert not list(receipts.glob("*.json"))
        dead = [c for c in store.claims() if c.key not in recovered]
    assert all(c.pid == coordinator.pid for c in dead)
    if machine_id() is not None:  # its leases are stale at once on this machine
        report = status_report(path)
        assert "  running  " not in report and "  queued   " not in report
        assert ("  stale    " in report) == any(not c.queued for c in dead)
