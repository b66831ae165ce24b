"""The SQLite results store: one row per finished run, written as the run finishes.

Guarantees:

* Durable rows: only the coordinating process writes, one ``BEGIN IMMEDIATE`` transaction
  per row, with SQLite's default rollback journal (WAL breaks on network file systems).
  Workers (a process pool's, a SLURM array's, Ray's) also leave an atomic JSON receipt in
  ``<store>.receipts/`` (:mod:`bench.results.receipts`), ingested by their coordinator as they
  arrive or by the next run or ``status``, so a dead or detached coordinator loses nothing;
  a receipt that cannot become a row is logged and kept as ``*.rejected``, never blocking
  the others.
* Concurrent opening: the schema is created, or an older one extended (columns added, never
  dropped), in one ``BEGIN IMMEDIATE`` transaction that re-reads what is there, so any
  number of processes may open the same new or old store at once.
* Foreign files untouched: a store is recognised by its ``meta`` table's ``schema_version``;
  a new path or an empty file becomes a store, anything else is refused, unwritten.
* Read-only reading: ``readonly=True`` (:func:`load_results`, ``table``, ``report``) opens
  with ``mode=ro`` (``immutable=1`` if that fails: a crashed writer's journal on read-only
  media), changes nothing, and reads older layouts (missing columns load as None or {}).
* A store that cannot be created or written is a StoreError naming the path and reason; a
  damaged one is rebuilt from its backup (:mod:`bench.results.backup`). Claims (several
  coordinators on one store) are described in :mod:`bench.results.claims`.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sqlite3
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pandas as pd

from bench.results import receipts
from bench.results.schema import CLAIM_COLUMNS, COLUMNS, JSON_COLUMNS, SCHEMA_VERSION, Claim

logger = logging.getLogger(__name__)

DEFAULT_STORE = Path("bench-results") / "runs.sqlite"
_ADVICE = "It was left untouched: pass another --store path (or move the file aside)"


class StoreError(RuntimeError):
    """The results store cannot be used as it is; nothing was changed."""


def default_store_path(path: str | Path | None = None) -> Path:
    """``path``, else ``$FLEXMOE_BENCH_STORE``, else ``bench-results/runs.sqlite`` here."""
    return Path(path if path is not None else os.getenv("FLEXMOE_BENCH_STORE", DEFAULT_STORE))


class ResultStore:
    """Open (or, unless ``readonly``, create) the store at ``path``.

    ``readonly=True``: nothing is created, migrated or locked, and :meth:`write` is refused.
    """

    _conn: sqlite3.Connection  # set by the _open_* methods

    def __init__(self, path: str | Path | None = None, readonly: bool = False) -> None:
        self.path = default_store_path(path)
        self.readonly = readonly
        if self.path.exists() and not self.path.is_file():
            raise StoreError(f"results store {self.path} is not a file; pass --store with the "
                             "path of a store file")
        new = not readonly and (not self.path.exists() or self.path.stat().st_size == 0)
        try:
            self._open_readonly() if readonly else self._open_writable(new)
        except sqlite3.DatabaseError as exc:
            self.close()
            if new:
                raise self._cannot_create(str(exc)) from exc
            raise StoreError(f"{self.path} is not a readable flexmoe-bench results store "
                             f"({exc}). {_ADVICE}") from exc
        except BaseException:
            self.close()
            raise

    @property
    def receipts_dir(self) -> Path:
        return receipts.receipts_dir(self.path)

    def _cannot_create(self, reason: str) -> StoreError:
        return StoreError(f"cannot create results store at {self.path}: {reason}; pass --store "
                          "with a writable path")

    def _open_writable(self, new: bool) -> None:
        """Check up front that we may write, so a read-only place fails here, clearly."""
        parent = self.path.parent
        if new:
            try:
                parent.mkdir(parents=True, exist_ok=True)
            except FileExistsError as exc:
                raise self._cannot_create(f"{exc.filename} is a file, not a directory") from exc
            except OSError as exc:
                raise self._cannot_create(f"cannot make directory {parent} ({exc})") from exc
            if not os.access(parent, os.W_OK | os.X_OK):
                raise self._cannot_create(f"directory {parent} is not writable")
        else:
            for what, p in (("file", self.path), ("directory", parent)):
                if not os.access(p, os.W_OK):  # SQLite writes its journal beside the file
                    raise StoreError(f"results store {self.path} is read-only ({what} {p} is not "
                                     "writable); `table` and `report` can still read it; pass "
                                     "--store with a writable path to run")
        self._conn = sqlite3.connect(self.path, timeout=60, isolation_level=None)
        self._ensure_schema()

    def _open_readonly(self) -> None:
        """``mode=ro`` first: it still honours locks, so a store being written reads safely;
        ``immutable=1`` only if that fails (it ignores locks and journals)."""
        if not self.path.is_file():
            raise FileNotFoundError(f"no results store at {self.path}; run a grid first "
                                    "(run_bench.py run) or pass --store")
        uri = f"file:{quote(str(self.path.absolute()))}?mode=ro"
        for immutable in (False, True):
            self._conn = sqlite3.connect(uri + "&immutable=1" * immutable, uri=True, timeout=60,
                                         isolation_level=None)
            try:
                self._layout()
                return
            except sqlite3.OperationalError as exc:
                self.close()
                if immutable or "locked" in str(exc):
                    raise
                logger.warning("%s cannot be read in place (%s); reading it as immutable, so "
                               "an unfinished transaction of a crashed writer may show (a "
                               "`run` with write access rolls it back)", self.path, exc)

    def _refuse(self, found: str) -> StoreError:
        return StoreError(f"{self.path} is not a flexmoe-bench results store: found {found}; "
                          "expected a 'meta' table holding schema_version and a 'runs' table "
                          f"with a 'key' column. {_ADVICE}")

    def _layout(self) -> tuple[set[str], set[str]]:
        """The tables and the columns of ``runs`` now; StoreError if the file is not ours."""
        tables = {r[0] for r in self._conn.execute(
            "SELECT name FROM sqlite_master WHERE type='table'")}
        if not tables:
            return tables, set()
        version = None
        if "meta" in tables:
            with contextlib.suppress(sqlite3.OperationalError):  # a meta table of other shape
                row = self._conn.execute(
                    "SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
                version = row[0] if row else None
        if version is None:
            what = "no schema_version in 'meta'" if "meta" in tables else "no 'meta' table"
            raise self._refuse(f"tables {sorted(tables)} but {what}")
        if str(version) != SCHEMA_VERSION:
            raise StoreError(f"{self.path} has store schema_version {version!r}; this version of "
                             f"flexmoe-bench reads {SCHEMA_VERSION!r} (a newer version wrote "
                             f"it?). {_ADVICE}")
        cols = {r[1] for r in self._conn.execute("PRAGMA table_info(runs)")}
        if "runs" in tables and "key" not in cols:
            raise self._refuse(f"a 'runs' table without a 'key' column (columns {sorted(cols)})")
        return tables, cols

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[None]:
        """``BEGIN IMMEDIATE`` takes the write lock first, so what we read inside stays true."""
        self._conn.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            if self._conn.in_transaction:
                self._conn.execute("ROLLBACK")
            raise
        self._conn.execute("COMMIT")

    def _claim_columns(self) -> set[str]:
        return {r[1] for r in self._conn.execute("PRAGMA table_info(claims)")}

    def _ensure_schema(self) -> None:
        tables, cols = self._layout()
        if "runs" in tables and set(COLUMNS) <= cols and set(CLAIM_COLUMNS) <= \
                self._claim_columns():
            return  # the usual case: no write lock needed
        with self._transaction():
            tables, cols = self._layout()  # another process may have done it meanwhile
            if not tables:
                self._conn.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT)")
                self._conn.execute("INSERT INTO meta VALUES ('schema_version', ?)",
                                   (SCHEMA_VERSION,))
            # a store written by an older version: tables and columns added, never dropped
            for table, columns, present in (("runs", COLUMNS, cols),
                                            ("claims", CLAIM_COLUMNS, self._claim_columns())):
                if table not in tables:
                    defs = ", ".join(f'"{c}" {t}' for c, t in columns.items())
                    self._conn.execute(f"CREATE TABLE {table} ({defs})")
                    continue
                for c, t in columns.items():
                    if c not in present:
                        self._conn.execute(f'ALTER TABLE {table} ADD COLUMN "{c}" {t}')

    def close(self) -> None:
        if hasattr(self, "_conn"):  # closing twice is harmless
            self._conn.close()

    def __enter__(self) -> ResultStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def keys(self) -> set[str]:
        """Keys of every stored run, finished or failed."""
        return {r[0] for r in self._conn.execute("SELECT key FROM runs")}

    def backup_to(self, target: sqlite3.Connection) -> None:
        """Copy the whole store into ``target`` (SQLite's online backup: consistent while
        other processes write; :mod:`bench.results.backup`)."""
        self._conn.backup(target)

    def done_keys(self) -> set[str]:
        """Keys of runs that finished successfully (failed runs are retried)."""
        return {r[0] for r in self._conn.execute("SELECT key FROM runs WHERE status = 'ok'")}

    def _writable(self) -> None:
        if self.readonly:
            raise StoreError(f"results store {self.path} was opened read-only; cannot write")

    def write(self, row: dict[str, Any], release: str | None = None) -> bool:
        """Insert or replace one run, in its own transaction; with ``release`` (an owner id)
        also drop that owner's claim on the run in the same transaction, and return whether
        the claim was still held (False: it had expired and been taken over)."""
        self._writable()
        unknown = set(row) - set(COLUMNS)
        if unknown:
            raise ValueError(f"unknown result column(s) {sorted(unknown)}; expected columns of "
                             "bench.results.store.COLUMNS")
        values = {k: json.dumps(v, sort_keys=True) if k in JSON_COLUMNS and v is not None else v
                  for k, v in row.items()}
        cols = ", ".join(f'"{c}"' for c in values)
        marks = ", ".join("?" for _ in values)
        with self._transaction():
            self._conn.execute(f"INSERT OR REPLACE INTO runs ({cols}) VALUES ({marks})",
                               list(values.values()))
            if release is None:
                return True
            return self._conn.execute("DELETE FROM claims WHERE key = ? AND owner = ?",
                                      (row["key"], release)).rowcount > 0

    def unfinished(self) -> dict[str, Any]:
        """Key → ``created_at`` of every row that is not ``ok`` (failed runs), as of now."""
        return dict(self._conn.execute("SELECT key, created_at FROM runs WHERE status IS NOT "
                                       "'ok'").fetchall())

    def claim(self, want: Claim, seen: Mapping[str, Any] | None = None,
              alive: Callable[[Claim], bool] | None = None) -> tuple[str, Claim | None]:
        """Claim ``want.key`` for ``want.owner`` in one ``BEGIN IMMEDIATE`` transaction.

        Returns ``("claimed", want)``; ``("done", None)`` when the run has an ``ok`` row, or
        (given ``seen``, :meth:`unfinished` as the claimant first saw it) a failed row that
        is not in ``seen``: another coordinator ran it meanwhile, so it is not retried
        before the next run, or a receipt not yet ingested (it is ingested now); or
        ``("held", claim)`` when another owner's lease has not expired and ``alive(claim)``
        (default: always) says its holder still runs. An expired or dead lease is replaced
        (and logged).
        """
        self._writable()
        with self._transaction():
            row = self._conn.execute("SELECT status, created_at FROM runs WHERE key = ?",
                                     (want.key,)).fetchone()
            if row is not None and (row[0] == "ok" or (
                    seen is not None and (want.key, row[1]) not in seen.items())):
                return "done", None
            current = self._read_claims("WHERE key = ?", (want.key,))
            if current and current[0].owner != want.owner and not current[0].queued:
                other = current[0]
                if other.expires > time.time() and (alive is None or alive(other)):
                    return "held", other
                logger.info("taking over run %s from %s (%s)", want.key, other.holder,
                            "lease expired" if other.expires <= time.time()
                            else "its process is gone")
            arrived = self._receipt(want.key).is_file()
            if not arrived:
                self._insert_claims("REPLACE", [want])
        if arrived:  # finished by a worker, not ingested yet: take its row, claim nothing
            self.ingest_receipts([want.key])
            return "done", None
        return "claimed", want

    def enqueue(self, queued: Iterable[Claim]) -> None:
        """Record runs a coordinator will start (``queued`` claims, for ``status``) where no
        claim is held yet; a queued run binds nobody: a coordinator claiming it takes it."""
        self._writable()
        with self._transaction():
            self._insert_claims("IGNORE", queued)

    def _insert_claims(self, conflict: str, claims: Iterable[Claim]) -> None:
        """``INSERT OR <conflict>`` of ``claims`` (inside the caller's transaction)."""
        self._conn.executemany(f"INSERT OR {conflict} INTO claims ({', '.join(CLAIM_COLUMNS)}) "
                               f"VALUES ({', '.join('?' for _ in CLAIM_COLUMNS)})",
                               [[getattr(c, k) for k in CLAIM_COLUMNS] for c in claims])

    def renew(self, owner: str | Iterable[str], expires: float) -> set[str]:
        """Move every lease of ``owner`` (one id or several), queued runs' too, to ``expires``;
        return the keys they still hold."""
        self._writable()
        owners = [owner] if isinstance(owner, str) else list(owner)
        marks = ", ".join("?" for _ in owners)
        with self._transaction():
            self._conn.execute(f"UPDATE claims SET expires = ? WHERE owner IN ({marks})",
                               [expires, *owners])
            return {r[0] for r in self._conn.execute(
                f"SELECT key FROM claims WHERE owner IN ({marks})", owners)}

    def hand_over(self, key: str, owner: str, to: Claim) -> bool:
        """Pass ``owner``'s claim on ``key`` to ``to`` (its owner, holder and expiry) in one
        transaction; False when ``owner`` no longer held it."""
        self._writable()
        with self._transaction():
            return self._conn.execute(
                "UPDATE claims SET owner = ?, host = ?, pid = ?, machine = ?, expires = ? "
                "WHERE key = ? AND owner = ?",
                (to.owner, to.host, to.pid, to.machine, to.expires, key, owner)).rowcount > 0

    def release(self, owner: str, key: str | None = None) -> int:
        """Drop ``owner``'s claim on ``key`` (every claim of ``owner`` without one)."""
        self._writable()
        where, args = ("owner = ? AND key = ?", (owner, key)) if key is not None \
            else ("owner = ?", (owner,))
        with self._transaction():
            return self._conn.execute(f"DELETE FROM claims WHERE {where}", args).rowcount

    def claims(self) -> list[Claim]:
        """Every claim in the store, live or not (none in an older store read in place)."""
        if "claims" not in self._layout()[0]:
            return []
        return self._read_claims()

    def _read_claims(self, where: str = "", args: tuple = ()) -> list[Claim]:
        present = [c for c in CLAIM_COLUMNS if c in self._claim_columns()]
        cur = self._conn.execute(f"SELECT {', '.join(present)} FROM claims {where}", args)
        return [Claim(**dict(zip(present, r))) for r in cur]

    def write_receipt(self, row: dict[str, Any]) -> Path:
        """Atomically leave ``row`` as JSON beside the store (a worker's safety copy)."""
        return receipts.write_receipt(self.receipts_dir, row)

    def _receipt(self, key: str) -> Path:
        return receipts.receipt_path(self.receipts_dir, key)

    def pending_receipts(self) -> list[Path]:
        """Receipts waiting to be ingested (:func:`bench.results.receipts.pending`)."""
        return receipts.pending(self.receipts_dir)

    def ingest_receipts(self, keys: Iterable[str] | None = None) -> int:
        """Move worker receipts (all, or those of ``keys``) into the store; return how many
        (:func:`bench.results.receipts.ingest`: a bad one is kept as ``*.rejected``, never
        retried)."""
        paths = self.pending_receipts() if keys is None else \
            [p for p in map(self._receipt, keys) if p.is_file()]
        return receipts.ingest(paths, self.write, receipts.kept_dir(self.path))

    def load(self) -> pd.DataFrame:
        """All runs as a DataFrame, JSON columns decoded and hyper-parameters as columns."""
        tables, cols = self._layout()
        if "runs" in tables:
            order = " ORDER BY created_at" if "created_at" in cols else ""
            try:
                df = pd.read_sql_query(f"SELECT * FROM runs{order}", self._conn)
            except pd.errors.DatabaseError as exc:  # pandas wraps SQLite's error: unwrap it
                raise sqlite3.DatabaseError(str(exc.__cause__ or exc)) from exc
        else:
            df = pd.DataFrame(columns=list(COLUMNS))
        for c in COLUMNS:  # an older layout read in place: columns it lacks are empty
            if c not in df.columns:
                df[c] = None
        for c in JSON_COLUMNS:
            df[c] = [json.loads(v) if isinstance(v, str) else {} for v in df[c]]
        hp = pd.json_normalize(df["hparams"].tolist()) if len(df) else pd.DataFrame()
        hp.columns = [f"hp_{c}" if c in df.columns else c for c in hp.columns]
        return pd.concat([df, hp.set_index(df.index)], axis=1)


def load_results(path: str | Path | None = None) -> pd.DataFrame:
    """The store at ``path`` (default: :func:`default_store_path`) as a DataFrame, read-only."""
    with ResultStore(path, readonly=True) as store:
        return store.load()
