"""The SQLite results store: one row per finished run, written as the run finishes.

Only the coordinating process writes, one transaction per row, with SQLite's default
rollback journal (WAL breaks on network file systems). Workers of a process pool also
leave an atomic JSON receipt beside the store, so a dead coordinator loses nothing: the
next run ingests leftover receipts first. The store is never deleted or rewritten; a file
that is not a results store is refused with a message, untouched.
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import tempfile
from pathlib import Path
from typing import Any

import pandas as pd

logger = logging.getLogger(__name__)

DEFAULT_STORE = Path("bench-results") / "runs.sqlite"
SCHEMA_VERSION = "1"

#: Column name → SQLite type. JSON columns hold dicts; metrics are fractions in [0, 1].
COLUMNS: dict[str, str] = {
    "key": "TEXT PRIMARY KEY", "created_at": "TEXT", "status": "TEXT", "error": "TEXT",
    "model": "TEXT", "dataset": "TEXT", "combo": "TEXT", "seed": "INTEGER", "profile": "TEXT",
    "split_seed": "INTEGER", "split_digest": "TEXT",
    "hparams": "TEXT", "data_options": "TEXT", "run_info": "TEXT",
    "val_acc": "REAL", "val_f1": "REAL", "val_auc": "REAL",
    "test_acc": "REAL", "test_f1": "REAL", "test_auc": "REAL",
    "best_epoch": "INTEGER", "epochs": "INTEGER", "val_acc_curve": "TEXT",
    "n_train": "INTEGER", "n_val": "INTEGER", "n_test": "INTEGER",
    "params": "INTEGER", "flops_per_sample": "REAL", "flops_batch": "REAL",
    "flops_batch_size": "INTEGER",
    "fvcore_flops_per_sample": "REAL", "fvcore_flops_batch": "REAL", "fvcore_skipped_ops": "TEXT",
    "ms_per_iter": "REAL", "ms_per_iter_median": "REAL", "s_per_epoch": "REAL",
    "train_seconds": "REAL",
    "device": "TEXT", "device_name": "TEXT", "threads": "INTEGER",
    "torch_version": "TEXT", "python_version": "TEXT", "code_version": "TEXT",
}
JSON_COLUMNS = ("hparams", "data_options", "run_info", "val_acc_curve", "fvcore_skipped_ops")


class StoreError(RuntimeError):
    """The results store cannot be used as it is; nothing was changed."""


def default_store_path() -> Path:
    """``$FLEXMOE_BENCH_STORE`` or ``bench-results/runs.sqlite`` under the working directory."""
    return Path(os.environ.get("FLEXMOE_BENCH_STORE", DEFAULT_STORE))


class ResultStore:
    """Open (or create) a store at ``path``."""

    def __init__(self, path: str | Path | None = None) -> None:
        self.path = Path(path) if path is not None else default_store_path()
        if self.path.exists() and not self.path.is_file():
            raise StoreError(f"results store {self.path} is not a file")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._conn = sqlite3.connect(self.path, timeout=60)
        try:
            self._init_schema()
        except sqlite3.DatabaseError as exc:
            self._conn.close()
            raise StoreError(
                f"{self.path} is not a readable flexmoe-bench results store ({exc}). It was left "
                "untouched: move it aside or pass another --store path") from exc

    @property
    def receipts_dir(self) -> Path:
        return self.path.with_name(self.path.name + ".receipts")

    def _init_schema(self) -> None:
        tables = {r[0] for r in self._conn.execute(
            "SELECT name FROM sqlite_master WHERE type='table'")}
        if tables and "runs" not in tables:
            raise StoreError(f"{self.path} is an SQLite file without a 'runs' table (tables: "
                             f"{sorted(tables)}); it is not a flexmoe-bench store. It was left "
                             "untouched: pass another --store path")
        with self._conn:
            self._conn.execute("CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT)")
            self._conn.execute("INSERT OR IGNORE INTO meta VALUES ('schema_version', ?)",
                               (SCHEMA_VERSION,))
            if "runs" not in tables:
                cols = ", ".join(f'"{c}" {t}' for c, t in COLUMNS.items())
                self._conn.execute(f"CREATE TABLE runs ({cols})")
            else:  # a store written by an older version: add columns, never drop
                have = {r[1] for r in self._conn.execute("PRAGMA table_info(runs)")}
                if "key" not in have:
                    raise StoreError(f"{self.path}: table 'runs' has no 'key' column; not a "
                                     "flexmoe-bench store")
                for c, t in COLUMNS.items():
                    if c not in have:
                        self._conn.execute(f'ALTER TABLE runs ADD COLUMN "{c}" {t}')

    def close(self) -> None:
        self._conn.close()

    def __enter__(self) -> ResultStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def done_keys(self) -> set[str]:
        """Keys of runs that finished successfully (failed runs are retried)."""
        return {r[0] for r in self._conn.execute("SELECT key FROM runs WHERE status = 'ok'")}

    def write(self, row: dict[str, Any]) -> None:
        """Insert or replace one run, in its own transaction."""
        unknown = set(row) - set(COLUMNS)
        if unknown:
            raise ValueError(f"unknown result column(s) {sorted(unknown)}")
        values = {k: json.dumps(v, sort_keys=True) if k in JSON_COLUMNS and v is not None else v
                  for k, v in row.items()}
        cols = ", ".join(f'"{c}"' for c in values)
        marks = ", ".join("?" for _ in values)
        with self._conn:
            self._conn.execute(f"INSERT OR REPLACE INTO runs ({cols}) VALUES ({marks})",
                               list(values.values()))

    def write_receipt(self, row: dict[str, Any]) -> Path:
        """Atomically leave ``row`` as JSON beside the store (a worker's safety copy)."""
        return write_receipt(self.receipts_dir, row)

    def ingest_receipts(self) -> int:
        """Move leftover worker receipts into the store; return how many."""
        if not self.receipts_dir.is_dir():
            return 0
        n = 0
        for path in sorted(self.receipts_dir.glob("*.json")):
            try:
                row = json.loads(path.read_text())
            except (OSError, json.JSONDecodeError) as exc:
                logger.warning("skipping unreadable receipt %s: %s", path, exc)
                continue
            self.write(row)
            path.unlink()
            n += 1
        return n

    def load(self) -> pd.DataFrame:
        """All runs as a DataFrame, JSON columns decoded and hyper-parameters as columns."""
        df = pd.read_sql_query("SELECT * FROM runs ORDER BY created_at", self._conn)
        for c in JSON_COLUMNS:
            df[c] = [json.loads(v) if isinstance(v, str) else {} for v in df[c]]
        hp = pd.json_normalize(df["hparams"].tolist()) if len(df) else pd.DataFrame()
        hp.columns = [f"hp_{c}" if c in df.columns else c for c in hp.columns]
        return pd.concat([df, hp.set_index(df.index)], axis=1)


def write_receipt(folder: Path, row: dict[str, Any]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / f"{row['key']}.json"
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".tmp-", suffix=".json")
    with os.fdopen(fd, "w") as fh:
        json.dump(row, fh, sort_keys=True)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, target)
    return target


def load_results(path: str | Path | None = None) -> pd.DataFrame:
    """The store at ``path`` (default: :func:`default_store_path`) as a DataFrame."""
    path = Path(path) if path is not None else default_store_path()
    if not path.is_file():
        raise FileNotFoundError(f"no results store at {path}; run a grid first "
                                "(run_bench.py run) or pass --store")
    with ResultStore(path) as store:
        return store.load()
