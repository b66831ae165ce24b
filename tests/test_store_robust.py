"""The results store under stress: concurrent first opens, read-only media, foreign files,
bad worker receipts and unwritable places. Every test here failed before the store was
hardened; the read-only ones are meaningful as root too (they check that nothing was
written, not only that writing was refused)."""

from __future__ import annotations

import contextlib
import json
import logging
import multiprocessing
import os
import sqlite3
import stat
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest

from bench.identity.config import KEY_VERSION
from bench.results.receipts import write_receipt
from bench.results.schema import COLUMNS, JSON_COLUMNS
from bench.results.store import ResultStore, StoreError, load_results

#: The ``runs`` columns of a store written by an earlier version (before key_version, config,
#: metric_notes and the fvcore columns existed).
OLD_COLUMNS = ("key", "created_at", "status", "error", "model", "dataset", "combo", "seed",
               "profile", "hparams", "test_acc")


def _old_store(path: Path) -> Path:
    """A store as an earlier version of flexmoe-bench wrote it, holding one run."""
    with contextlib.closing(sqlite3.connect(path)) as conn, conn:
        conn.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT)")
        conn.execute("INSERT INTO meta VALUES ('schema_version', '1')")
        conn.execute(f"CREATE TABLE runs ({', '.join(OLD_COLUMNS)})")
        conn.execute("INSERT INTO runs VALUES ('old', '2025-01-01', 'ok', NULL, 'tf', 'toy', "
                     "'AB', 0, 'quick', '{\"lr\": 0.01}', 0.75)")
    return path


def _snapshot(path: Path) -> tuple[bytes, int, list[str]]:
    """The store's bytes and mtime, and every file beside it (a journal would show here)."""
    return path.read_bytes(), path.stat().st_mtime_ns, sorted(os.listdir(path.parent))


@contextlib.contextmanager
def _read_only(*paths: Path) -> Iterator[None]:
    """Files 0o444 and directories 0o555 (root still writes: callers also check bytes)."""
    modes = {p: p.stat().st_mode for p in paths}
    try:
        for p in paths:
            p.chmod(0o555 if p.is_dir() else 0o444)
        yield
    finally:
        for p, mode in modes.items():
            p.chmod(stat.S_IMODE(mode))


@pytest.fixture
def unprivileged(monkeypatch):
    """``os.access`` as an ordinary user sees it, also when the tests run as root."""
    real = os.access

    def access(path, mode, *args, **kwargs):
        if mode & os.W_OK and os.path.exists(path) and not os.stat(path).st_mode & 0o222:
            return False
        return real(path, mode, *args, **kwargs)

    monkeypatch.setattr(os, "access", access)


# -- 1. concurrent first opens --------------------------------------------------------------

def _open_and_write(path: str, index: int, barrier, results) -> None:
    try:
        barrier.wait(timeout=120)  # all open at the same moment
        with ResultStore(path) as store:
            store.write({"key": f"p{index}", "status": "ok", "created_at": f"{index:02d}"})
        results.put("ok")
    except Exception as exc:  # reported to the parent, which asserts on it
        results.put(repr(exc))


@pytest.mark.parametrize("layout", ["new", "old"])
def test_twenty_processes_open_the_same_store_at_once(tmp_path, layout):
    path = tmp_path / "shared" / "r.sqlite"
    if layout == "old":  # twenty processes extend the same older layout at once
        path.parent.mkdir()
        _old_store(path)
    ctx = multiprocessing.get_context("spawn")
    n = 20
    barrier, results = ctx.Barrier(n), ctx.Queue()
    procs = [ctx.Process(target=_open_and_write, args=(str(path), i, barrier, results),
                         daemon=True) for i in range(n)]
    for p in procs:
        p.start()
    outcomes = [results.get(timeout=180) for _ in procs]
    for p in procs:
        p.join(timeout=60)
    assert outcomes == ["ok"] * n
    df = load_results(path)
    expected = {f"p{i}" for i in range(n)} | ({"old"} if layout == "old" else set())
    assert set(df["key"]) == expected
    with contextlib.closing(sqlite3.connect(path)) as conn:
        assert conn.execute("SELECT * FROM meta").fetchall() == [("schema_version", "1")]
        assert {r[1] for r in conn.execute("PRAGMA table_info(runs)")} == set(COLUMNS)


# -- 2. read-only media ----------------------------------------------------------------------

def test_old_layout_on_read_only_media_loads_and_is_not_touched(tmp_path):
    path = _old_store(tmp_path / "r.sqlite")
    before = _snapshot(path)
    with _read_only(path, tmp_path):
        df = load_results(path)
    assert _snapshot(path) == before  # no column added, no journal left
    assert df["key"].tolist() == ["old"] and df.loc[0, "lr"] == 0.01
    assert set(COLUMNS) <= set(df.columns)
    assert df["config"].tolist() == [{}] and df["metric_notes"].tolist() == [{}]
    assert df["fvcore_flops_batch"].isna().all() and df["key_version"].isna().all()
    for c in JSON_COLUMNS:
        assert all(isinstance(v, dict) for v in df[c])


def test_table_command_reads_a_read_only_store(tmp_path, capsys):
    from bench.cli.main import main

    path = tmp_path / "r.sqlite"
    with ResultStore(path) as store:
        for seed in (0, 1):
            store.write({"key": f"k{seed}", "key_version": KEY_VERSION, "status": "ok",
                         "model": "tf", "dataset": "toy",
                         "combo": "AB", "seed": seed, "profile": "quick", "hparams": {},
                         "created_at": f"2026-01-0{seed + 1}", "test_acc": 0.5 + seed / 10})
    before = _snapshot(path)
    with _read_only(path, tmp_path):
        assert main(["table", "--store", str(path)]) == 0
    assert "55.0" in capsys.readouterr().out
    assert _snapshot(path) == before


def test_crashed_writers_journal_on_read_only_media_is_read_not_rolled_back(tmp_path, caplog):
    path = tmp_path / "r.sqlite"
    with ResultStore(path) as store:
        for i in range(20):
            store.write({"key": f"k{i}", "status": "ok", "created_at": f"{i:02d}",
                         "error": "e" * 2000})
    crash = textwrap.dedent(f"""
        import os, sqlite3
        conn = sqlite3.connect({str(path)!r}, isolation_level=None)
        conn.execute("PRAGMA cache_size=1")  # spill into the file before the commit
        conn.execute("BEGIN IMMEDIATE")
        conn.execute("UPDATE runs SET error = 'half-written'")
        os._exit(3)
    """)
    assert subprocess.run([sys.executable, "-c", crash]).returncode == 3
    journal = path.with_name(path.name + "-journal")
    assert journal.is_file()  # a hot journal: reading normally would roll it back
    before, journal_bytes = _snapshot(path), journal.read_bytes()
    with _read_only(path, journal, tmp_path), \
            caplog.at_level(logging.WARNING, "bench.results.store"):
        df = load_results(path)
    assert len(df) == 20
    assert "reading it as immutable" in caplog.text and str(path) in caplog.text
    assert _snapshot(path) == before and journal.read_bytes() == journal_bytes
    with ResultStore(path) as store:  # a writer rolls the unfinished transaction back
        assert set(store.load()["error"]) == {"e" * 2000}


def test_read_only_mode_creates_nothing(tmp_path):
    path = tmp_path / "absent" / "r.sqlite"
    with pytest.raises(FileNotFoundError, match="no results store"):
        ResultStore(path, readonly=True)
    assert not path.parent.exists()
    empty = tmp_path / "empty.sqlite"
    empty.touch()
    with ResultStore(empty, readonly=True) as store:
        assert store.load().empty
        with pytest.raises(StoreError, match="read-only"):
            store.write({"key": "x"})
    assert empty.read_bytes() == b""


# -- 3. foreign SQLite files -----------------------------------------------------------------

FOREIGN = {
    "runs without meta": ["CREATE TABLE runs (key TEXT, x REAL)",
                          "INSERT INTO runs VALUES ('a', 1.0)"],
    "meta without schema_version": ["CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT)",
                                    "INSERT INTO meta VALUES ('owner', 'someone else')",
                                    "CREATE TABLE runs (key TEXT)"],
    "meta of another shape": ["CREATE TABLE meta (name TEXT, version INTEGER)",
                              "CREATE TABLE runs (key TEXT)"],
    "runs without key": ["CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT)",
                         "INSERT INTO meta VALUES ('schema_version', '1')",
                         "CREATE TABLE runs (id INTEGER, status TEXT)"],
    "other tables": ["CREATE TABLE users (name TEXT)"],
}


@pytest.mark.parametrize("readonly", [False, True], ids=["write", "read"])
@pytest.mark.parametrize("kind", list(FOREIGN))
def test_foreign_sqlite_file_is_refused_untouched(tmp_path, kind, readonly):
    path = tmp_path / "theirs.sqlite"
    with contextlib.closing(sqlite3.connect(path)) as conn, conn:
        for sql in FOREIGN[kind]:
            conn.execute(sql)
    before = _snapshot(path)
    with pytest.raises(StoreError) as err:
        ResultStore(path, readonly=readonly)
    message = str(err.value)
    assert str(path) in message and "not a flexmoe-bench results store" in message
    assert "found" in message and "--store" in message
    assert _snapshot(path) == before


def test_store_of_a_newer_schema_is_refused_untouched(tmp_path):
    path = tmp_path / "r.sqlite"
    with contextlib.closing(sqlite3.connect(path)) as conn, conn:
        conn.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT)")
        conn.execute("INSERT INTO meta VALUES ('schema_version', '2')")
        conn.execute("CREATE TABLE runs (key TEXT PRIMARY KEY)")
    before = _snapshot(path)
    with pytest.raises(StoreError, match="schema_version '2'"):
        ResultStore(path)
    assert _snapshot(path) == before


def test_older_store_and_empty_file_are_ours(tmp_path):
    old = _old_store(tmp_path / "old.sqlite")
    with ResultStore(old) as store:  # extended in place, its run kept
        store.write({"key": "new", "status": "ok", "created_at": "2026", "config": {"a": 1}})
        df = store.load()
    assert df["key"].tolist() == ["old", "new"] and df.loc[1, "config"] == {"a": 1}
    empty = tmp_path / "empty.sqlite"
    empty.touch()
    with ResultStore(empty) as store:
        store.write({"key": "k", "status": "ok"})
        assert store.done_keys() == {"k"}


# -- 4. bad worker receipts ------------------------------------------------------------------

def test_bad_receipts_are_skipped_kept_and_named(tmp_path, caplog):
    with ResultStore(tmp_path / "r.sqlite") as store:
        folder = store.receipts_dir
        write_receipt(folder, {"key": "a", "status": "ok", "created_at": "1"})
        write_receipt(folder, {"key": "z", "status": "ok", "created_at": "2"})
        bad = {"unknown-column": {"key": "u", "status": "ok", "not_a_column": 1},
               "no-key": {"status": "ok"}, "null-key": {"key": None},
               "a-list": [1, 2], "a-dict-in-a-text-column": {"key": "d", "model": {"x": 1}}}
        for name, content in bad.items():
            (folder / f"{name}.json").write_text(json.dumps(content))
        (folder / "not-json.json").write_text("{truncated")
        in_progress = folder / ".tmp-abc.json"  # a worker still writing it
        in_progress.write_text("{")
        with caplog.at_level(logging.WARNING, "bench.results.receipts"):
            assert store.ingest_receipts() == 2
        assert store.done_keys() == {"a", "z"}
        for name in [*bad, "not-json"]:
            assert str(folder / f"{name}.json") in caplog.text
            assert (folder / f"{name}.json.rejected").is_file()
        assert in_progress.read_text() == "{"
        assert sorted(p.name for p in folder.glob("*.json")) == [".tmp-abc.json"]
        caplog.clear()
        with caplog.at_level(logging.WARNING, "bench.results.receipts"):
            assert store.ingest_receipts() == 0  # rejected ones are not retried every run
        assert not caplog.text


# -- 5. unwritable places --------------------------------------------------------------------

@pytest.mark.parametrize("below", ["r.sqlite", "sub/r.sqlite"])
def test_store_under_a_file_is_a_clear_error(tmp_path, below):
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("x")
    with pytest.raises(StoreError, match=r"cannot create results store at .*not-a-dir.*--store"):
        ResultStore(blocker / below)
    assert blocker.read_text() == "x"


def test_store_in_a_read_only_directory_is_a_clear_error(tmp_path, unprivileged):
    folder = tmp_path / "ro"
    folder.mkdir()
    with _read_only(folder):
        with pytest.raises(StoreError, match=r"cannot create results store at .*ro.*--store"):
            ResultStore(folder / "r.sqlite")
        assert os.listdir(folder) == []


def test_writing_to_a_read_only_store_is_a_clear_error(tmp_path, unprivileged):
    path = _old_store(tmp_path / "r.sqlite")
    before = _snapshot(path)
    with _read_only(path, tmp_path):
        with pytest.raises(StoreError, match=r"r\.sqlite is read-only.*--store"):
            ResultStore(path)
        assert isinstance(load_results(path), pd.DataFrame)
    assert _snapshot(path) == before
