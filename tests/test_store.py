"""The results store: rows survive crashes, corrupt files are refused untouched."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import textwrap

import pytest

from bench.results.receipts import write_receipt
from bench.results.store import ResultStore, StoreError, load_results


def _row(key="k1", status="ok", **extra):
    return {"key": key, "status": status, "model": "tf", "dataset": "toy", "combo": "AB",
            "seed": 0, "profile": "quick", "created_at": "2026-01-01T00:00:00+00:00",
            "hparams": {"lr": 0.001, "subnet_dim": 16}, "test_acc": 0.5, **extra}


def test_rows_round_trip_with_parameters_as_columns(tmp_path):
    with ResultStore(tmp_path / "r.sqlite") as store:
        store.write(_row("a"))
        store.write(_row("b", status="failed", error="boom"))
        assert store.done_keys() == {"a"}
        df = store.load()
    assert list(df["key"]) == ["a", "b"]
    assert df.loc[0, "lr"] == 0.001 and df.loc[0, "subnet_dim"] == 16
    assert df.loc[0, "hparams"] == {"lr": 0.001, "subnet_dim": 16}


def test_unknown_column_is_refused(tmp_path):
    with ResultStore(tmp_path / "r.sqlite") as store, pytest.raises(ValueError, match="column"):
        store.write(_row(bogus=1))


def test_corrupt_store_is_refused_and_left_untouched(tmp_path):
    path = tmp_path / "r.sqlite"
    path.write_bytes(b"this is not a database" * 100)
    before = path.read_bytes()
    with pytest.raises(StoreError, match=r"r.sqlite.*not a readable flexmoe-bench results store"):
        ResultStore(path)
    assert path.read_bytes() == before


def test_foreign_sqlite_file_is_refused_and_left_untouched(tmp_path):
    path = tmp_path / "other.sqlite"
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE users (name TEXT)")
    before = path.read_bytes()
    with pytest.raises(StoreError, match=r"not a flexmoe-bench results store: found tables"):
        ResultStore(path)
    assert path.read_bytes() == before


def test_row_survives_a_crash_right_after_commit(tmp_path):
    path = tmp_path / "r.sqlite"
    code = textwrap.dedent(f"""
        import os
        from bench.results.store import ResultStore
        store = ResultStore({str(path)!r})
        store.write({{"key": "survivor", "status": "ok", "created_at": "x"}})
        os._exit(9)  # no close, no cleanup
    """)
    proc = subprocess.run([sys.executable, "-c", code])
    assert proc.returncode == 9
    assert load_results(path)["key"].tolist() == ["survivor"]


def test_receipts_left_by_a_dead_coordinator_are_ingested(tmp_path):
    path = tmp_path / "r.sqlite"
    with ResultStore(path) as store:
        write_receipt(store.receipts_dir, _row("from-worker"))
        assert store.ingest_receipts() == 1
        assert store.done_keys() == {"from-worker"}
        assert not list(store.receipts_dir.glob("*.json"))


def test_missing_store_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="no results store"):
        load_results(tmp_path / "absent.sqlite")

