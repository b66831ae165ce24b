"""A store that is damaged loses nothing: a backup after every grid, the rows written since
kept as receipts, and ``run_bench.py recover`` to rebuild the store from both.

After each grid that wrote rows, the store is copied with SQLite's online backup to
``<store>.bak`` (atomically replaced). Each row the grid writes is also kept as a JSON
receipt in ``<store>.receipts/kept/`` until the next backup holds it. A store whose pages
are damaged (a disk fault, a copy cut short, another program writing into it) can then be
rebuilt: the damaged file is moved aside, the backup restored, the rows still readable in
the damaged file and the kept receipts written back on top.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import shutil
import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.results import receipts
from bench.results.schema import COLUMNS, JSON_COLUMNS
from bench.results.store import ResultStore

logger = logging.getLogger(__name__)


def backup_path(store: Path) -> Path:
    """Where the backup of the store at ``store`` lies."""
    return store.with_name(store.name + ".bak")


def take_backup(store: ResultStore) -> Path:
    """Copy ``store`` to its backup (SQLite's online backup, so a consistent copy even while
    others write), then drop the kept receipts it now holds."""
    target = backup_path(store.path)
    tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}")
    started = dt.datetime.now(dt.timezone.utc).timestamp()
    try:
        with sqlite3.connect(tmp) as copy:
            store.backup_to(copy)
        copy.close()
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)
    for path in receipts.pending(receipts.kept_dir(store.path)):
        try:
            if path.stat().st_mtime < started:  # one written meanwhile waits for the next
                path.unlink()
        except FileNotFoundError:
            continue
    return target


@dataclass
class Recovery:
    """What :func:`recover` did: where the damaged file went and where the rows came from."""

    damaged: Path
    from_backup: int
    salvaged: int
    from_receipts: int
    total: int


def _salvage(path: Path) -> list[dict[str, Any]]:
    """The rows of the damaged file that can still be read, row by row."""
    rows: list[dict[str, Any]] = []
    try:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    except sqlite3.DatabaseError:
        return rows
    try:
        top = conn.execute("SELECT max(rowid) FROM runs").fetchone()[0] or 0
        names = [r[1] for r in conn.execute("PRAGMA table_info(runs)")]
    except sqlite3.DatabaseError:
        conn.close()
        return rows
    for rowid in range(1, top + 1):
        try:
            found = conn.execute("SELECT * FROM runs WHERE rowid = ?", (rowid,)).fetchone()
        except sqlite3.DatabaseError:
            continue
        if found is not None:
            row = {k: v for k, v in zip(names, found) if k in COLUMNS}
            for c in JSON_COLUMNS:
                if isinstance(row.get(c), str):
                    row[c] = json.loads(row[c])
            rows.append(row)
    conn.close()
    return rows


def recover(path: Path) -> Recovery:
    """Rebuild the store at ``path``: the damaged file moves to ``<path>.damaged-<time>``,
    the backup (if any) becomes the store, then the rows still readable in the damaged file
    and the kept receipts are written on top (a row present twice: the later one wins, as
    in any write). Ends with a fresh backup."""
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    damaged = path.with_name(f"{path.name}.damaged-{stamp}")
    os.replace(path, damaged)
    bak = backup_path(path)
    if bak.is_file():
        shutil.copyfile(bak, path)
    with ResultStore(path) as store:
        from_backup = len(store.keys())
        salvaged = 0
        for row in _salvage(damaged):
            salvaged += store.write(row)
        kept = receipts.pending(receipts.kept_dir(path))
        from_receipts = receipts.ingest(kept, store.write, receipts.kept_dir(path))
        total = len(store.keys())
        take_backup(store)
    logger.info("recovered %s: %d run(s) from the backup, %d readable in the damaged file, "
                "%d from kept receipts", path, from_backup, salvaged, from_receipts)
    return Recovery(damaged, from_backup, salvaged, from_receipts, total)
