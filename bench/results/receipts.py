"""Worker receipts: a finished run's row as a JSON file in ``<store>.receipts/``.

A worker (a process pool's, a SLURM array's, Ray's) leaves its row here, written atomically,
before its coordinator takes it into the store, so a dead or detached coordinator loses
nothing: the next run or ``status`` ingests what is waiting. A receipt that cannot become a
row is kept as ``*.rejected`` for a person to fix, never retried and never blocking the rest.
Once its row is in the store a receipt moves to ``kept/`` (:func:`kept_dir`), where it stays
until the next backup of the store holds the row (:mod:`bench.results.backup`).
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)


def receipts_dir(store: Path) -> Path:
    """The receipts folder of the store at ``store``."""
    return store.with_name(store.name + ".receipts")


def receipt_path(folder: Path, key: str) -> Path:
    """Where the receipt of run ``key`` lies in ``folder``."""
    return folder / f"{key}.json"


def kept_dir(store: Path) -> Path:
    """Where the rows written to the store at ``store`` since its last backup are kept."""
    return receipts_dir(store) / "kept"


def write_receipt(folder: Path, row: dict[str, Any]) -> Path:
    """Write ``row`` to its receipt in ``folder`` via a temporary file, so no reader sees
    half; a failed write (a full disk) leaves no temporary file behind."""
    folder.mkdir(parents=True, exist_ok=True)
    target = receipt_path(folder, row["key"])  # before the temporary file: no key, no orphan
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".tmp-", suffix=".json")
    try:
        with os.fdopen(fd, "w") as fh:
            json.dump(row, fh, sort_keys=True)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return target


def keep_row(store: Path, row: dict[str, Any]) -> None:
    """Keep ``row``, now in the store at ``store``, until the next backup: its worker's
    receipt moves to :func:`kept_dir`, or (a run trained in-process) one is written there."""
    kept = kept_dir(store)
    kept.mkdir(parents=True, exist_ok=True)
    try:
        os.replace(receipt_path(receipts_dir(store), row["key"]), receipt_path(kept, row["key"]))
    except FileNotFoundError:
        write_receipt(kept, row)


def pending(folder: Path) -> list[Path]:
    """Receipts waiting to be ingested (workers' ``.tmp-*`` files in progress aside)."""
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.glob("*.json") if not p.name.startswith("."))


def ingest(paths: Iterable[Path], write: Callable[[dict[str, Any]], Any],
           keep: Path | None = None) -> int:
    """Pass each receipt's row to ``write`` (the store's), then move the receipt into
    ``keep`` (a :func:`kept_dir`; None: delete it); return how many were taken in.

    A receipt that cannot become a row (not JSON, not an object, no "key", an unknown column
    or value) is logged and renamed ``<name>.rejected``. An unreadable one is logged and left
    in place; one that vanished meanwhile (another coordinator took it) is passed over.
    """
    n = 0
    for path in paths:
        try:
            row = json.loads(path.read_text())
            if not isinstance(row, dict) or not isinstance(row.get("key"), str) or not row["key"]:
                raise ValueError("expected a JSON object with a non-empty 'key' string")
            write(row)
        except FileNotFoundError:
            continue
        except OSError as exc:
            logger.warning("skipping unreadable receipt %s (left in place): %s", path, exc)
            continue
        except (ValueError, TypeError, sqlite3.InterfaceError, sqlite3.ProgrammingError) as exc:
            _reject(path, exc)
            continue
        if keep is None:
            path.unlink(missing_ok=True)
        elif path.parent != keep:
            keep.mkdir(parents=True, exist_ok=True)
            os.replace(path, receipt_path(keep, row["key"]))
        n += 1
    return n


def _reject(path: Path, why: Exception) -> None:
    target = path.with_name(path.name + ".rejected")
    try:
        os.replace(path, target)
    except OSError:
        target = path
    logger.warning("skipped receipt %s: %s; kept as %s", path, why, target)
