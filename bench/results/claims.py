"""Several coordinators on one store: each claims a run before starting it.

A :class:`Coordinator` is one ``run`` (or ``reproduce``) process's hold on a store. It claims
each run just before starting it (the store checks, in one transaction, that the run is not done
and not held by another coordinator's live lease; see below), renews its leases from a heartbeat
thread every :data:`RENEW_SECONDS` so they stay :data:`LEASE_SECONDS` ahead, releases each lease
in the transaction that writes the run's row and every remaining one when it exits (normally or
by an exception). A coordinator that dies without releasing (``kill -9``, a lost node) holds its
runs until the lease expires, or, on the same machine, until another coordinator sees that its
process is gone.
A coordinator that submits runs to a scheduler (SLURM, Ray: :mod:`bench.execution.cluster`)
hands each claim over to the run's task before submitting it (:meth:`Coordinator.hand_over`):
the task claims the run under that owner when it starts and renews its own lease, so a run is
trained once even if the coordinator dies meanwhile. Attached, the coordinator renews the
handed-over leases too; detached (``--detach``), a queued run is held for
:data:`DETACH_HOLD_SECONDS` or until its task starts.

The store's side (:class:`bench.results.store.ResultStore`, several coordinators on one
store, e.g. one per node on a shared file system):

* Before a coordinator starts a cell it claims it: one ``BEGIN IMMEDIATE`` transaction that
  reads the cell's row and its ``claims`` row and, only if the cell is not done (no ``ok``
  row, and no failed row written by another coordinator since this one started) and not
  held by a live lease of another coordinator, writes a claim (key, owner uuid, host, pid,
  machine id, lease expiry). So at most one coordinator starts a cell while leases are kept.
* A lease is live until its expiry (wall-clock seconds; hosts' clocks must agree to well
  within the lease) unless its holder ran on this machine (same host, boot and pid
  namespace: ``machine``) and its pid no longer exists. An expired or dead lease is taken
  over; a live one is skipped and reported.
* The holder renews its leases (a heartbeat thread with its own connection) and releases each in
  the transaction that writes the cell's row, and every remaining one when it exits, normally or
  by an exception. A coordinator stalled longer than its lease may be overtaken: the cell then
  runs twice and the later row replaces the earlier, as without claims. Coordinators of versions
  without claims ignore them.
* A run whose receipt has arrived but is not ingested yet counts as done: a claim finds
  the receipt (in its transaction, after seeing no live lease: a worker writes its
  receipt before its lease is released) and ingests it instead of claiming.
* A coordinator may hand a claim over to the task it submits (bench.execution.cluster: SLURM,
  Ray): the task then claims the run under that owner when it starts, renews the lease while it
  trains and skips the run if it finds it done or held by another owner.
* A coordinator records the runs it will start as *queued* claims when its grid starts
  (renewed and released with its leases): ``status`` lists them; they bind nobody, since a
  coordinator claiming a run another has queued takes it.
* The ``claims`` table is created (or added to an older store) in the schema transaction;
  read-only opening never needs it (:meth:`ResultStore.claims` reads none then).

:func:`status_report` is ``run_bench.py status``: per grid, what the store knows.
"""

from __future__ import annotations

import logging
import os
import socket
import sqlite3
import statistics
import threading
import time
import uuid
from functools import lru_cache
from pathlib import Path
from typing import Any

from bench.results.schema import Claim
from bench.results.store import ResultStore, StoreError

logger = logging.getLogger(__name__)

#: How long a claim holds without renewal: the longest a dead node's runs wait for takeover.
LEASE_SECONDS = 600.0
#: How often a live coordinator renews its leases (well under the lease, so a slow or locked
#: store costs several renewals before anything expires).
RENEW_SECONDS = 60.0
#: How long a detached job's queued runs stay held before their task starts (its queue wait).
DETACH_HOLD_SECONDS = 24 * 3600.0


@lru_cache(maxsize=1)
def machine_id() -> str | None:
    """Host name, boot id and pid namespace: two claims with the same value were made where
    one pid names one process (Linux only; elsewhere None, so only expiry frees a lease)."""
    try:
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
        namespace = os.readlink("/proc/self/ns/pid")
    except OSError:
        return None
    return f"{socket.gethostname()}/{boot}/{namespace}"


def holder_alive(claim: Claim) -> bool:
    """False only when ``claim`` was made on this machine by a process that no longer exists
    (a reused pid reads as alive: the lease then runs out instead)."""
    if claim.machine is None or claim.machine != machine_id():
        return True
    try:
        os.kill(claim.pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # e.g. another user's process
        return True
    return True


class Coordinator:
    """This process's claims on ``store`` (a context manager: leases are released on exit)."""

    def __init__(self, store: ResultStore, lease_s: float | None = None,
                 renew_s: float | None = None, owner: str | None = None,
                 release: bool = True) -> None:
        """``owner``: claim as this id (a task claiming what its coordinator handed it);
        ``release=False`` leaves the leases on exit (to the coordinator writing the rows)."""
        self.store = store
        self.owner = owner or uuid.uuid4().hex
        self.release = release
        self.host = socket.gethostname()
        self.pid = os.getpid()
        self.machine = machine_id()
        self.lease_s = LEASE_SECONDS if lease_s is None else lease_s
        self.renew_s = RENEW_SECONDS if renew_s is None else renew_s
        #: failed rows as this coordinator found them: any other was written since
        self.seen = store.unfinished()
        self._held: dict[str, str] = {}  # key → owner: ours, or a task's we handed it to
        self._queued = False  # runs queued under our owner id: renewed with the leases
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> Coordinator:
        self._thread = threading.Thread(target=self._heartbeat, name="claims-heartbeat",
                                        daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        with self._lock:
            owners = {self.owner, *self._held.values()} if self.release else set()
            self._held.clear()
        try:
            for owner in sorted(owners):
                self.store.release(owner)
        except (sqlite3.Error, StoreError) as err:  # never mask the exception that got us here
            logger.warning("could not release this run's claims in %s (%s); they expire within "
                           "%.0f s", self.store.path, err, self.lease_s)

    def claim(self, cell: Any) -> tuple[str, Claim | None]:
        """Claim ``cell`` (a RunConfig): ``("claimed", ours)``, ``("done", None)`` or
        ``("held", theirs)`` (see :meth:`bench.results.store.ResultStore.claim`)."""
        outcome, claim = self.store.claim(self._claim_of(cell, time.time()), self.seen,
                                          holder_alive)
        if outcome == "claimed":
            with self._lock:
                self._held[cell.key] = self.owner
        return outcome, claim

    def _claim_of(self, cell: Any, now: float, queued: bool = False) -> Claim:
        """This coordinator's claim on ``cell`` (a RunConfig), its lease starting ``now``."""
        return Claim(cell.key, self.owner, self.host, self.pid, self.machine, now,
                     now + self.lease_s, cell.model, cell.dataset, cell.combo, cell.seed,
                     cell.profile, queued)

    def enqueue(self, cells: list[Any]) -> None:
        """Record ``cells`` (RunConfigs) as queued by this coordinator, so ``status`` lists
        them; their lease is renewed with the claims' and released on exit."""
        now = time.time()
        self.store.enqueue(self._claim_of(c, now, queued=True) for c in cells)
        with self._lock:
            self._queued = True

    def hand_over(self, cell: Any, label: str, detached: bool = False) -> str:
        """Pass our claim on ``cell`` to the task about to run it; return the task's owner id.

        Until the task starts, ``label`` names the holder (``status``). Attached, we keep
        renewing the lease; detached, it lasts :data:`DETACH_HOLD_SECONDS` (the queue wait),
        then the task renews its own.
        """
        token = f"task-{uuid.uuid4().hex}"
        now = time.time()
        hold = DETACH_HOLD_SECONDS if detached else self.lease_s
        to = Claim(cell.key, token, label, 0, None, now, now + hold)
        with self._lock:  # not renewed under the old owner meanwhile
            if not self.store.hand_over(cell.key, self.owner, to):
                raise RuntimeError(f"run {cell.key} was taken over before it was submitted")
            if detached:
                self._held.pop(cell.key, None)
            else:
                self._held[cell.key] = token
        return token

    def finish(self, row: dict[str, Any]) -> None:
        """Write ``row`` and release its lease (ours or its task's) in one transaction."""
        with self._lock:
            owner = self._held.get(row["key"], self.owner)
        kept = self.store.write(row, release=owner)
        with self._lock:
            self._held.pop(row["key"], None)
        if not kept:
            logger.warning("run %s: this coordinator's lease had run out and another took the "
                           "run over; its row was written anyway (the later row wins)",
                           row["key"])

    def _heartbeat(self) -> None:
        try:
            with ResultStore(self.store.path) as store:  # a connection of this thread's own
                while not self._stop.wait(self.renew_s):
                    self._renew(store)
        except (sqlite3.Error, StoreError, OSError) as err:
            logger.warning("lease renewal stopped (%s): runs of this coordinator that last "
                           "longer than %.0f s may be taken over", err, self.lease_s)

    def _renew(self, store: ResultStore) -> None:
        with self._lock:  # claimed before this point: committed before the renewal
            before = dict(self._held)
            owners = set(before.values()) | ({self.owner} if self._queued else set())
        if not owners:
            return
        try:
            kept = store.renew(owners, time.time() + self.lease_s)
        except (sqlite3.Error, StoreError) as err:
            logger.warning("could not renew leases in %s (%s); retrying in %.0f s", store.path,
                           err, self.renew_s)
            return
        with self._lock:  # neither released, claimed nor handed over since
            lost = {k for k, owner in before.items() if k not in kept
                    and self._held.get(k) == owner}
            for key in lost:
                del self._held[key]
        if lost:
            logger.warning("lost the lease on %d run(s) (%s): expired and taken over by another "
                           "coordinator?", len(lost), ", ".join(sorted(lost)))


# -- run_bench.py status ---------------------------------------------------------------------

def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    h, rest = divmod(seconds, 3600)
    return f"{h}:{rest // 60:02d}:{rest % 60:02d}"


def _first_line(text: Any) -> str:
    lines = text.strip().splitlines() if isinstance(text, str) else []
    return lines[0] if lines else "(no error recorded)"


def status_report(path: str | Path | None = None, now: float | None = None) -> str:
    """Per grid (model × data set × profile): runs done, running (lease holder host:pid, and
    for how long), queued by a live coordinator, failed (first line of the error), the
    training time spent (the ``train_seconds`` of done and failed runs, and the time so far of
    those running) and the step time of the done runs' first and last epochs (medians over
    the runs: a step that slows as runs go on shows). Only rows of the current key version
    are counted (older ones are never matched again). Read-only, except that receipts of
    finished runs waiting beside the store are taken in first (:func:`take_in_receipts`)."""
    import pandas as pd
    from tabulate import tabulate

    from bench.identity.config import KEY_VERSION

    now = time.time() if now is None else now
    taken = take_in_receipts(path)
    with ResultStore(path, readonly=True) as store:
        df = store.load()
        claims = store.claims()
        where = store.path
    old = df["key_version"].isna() | (df["key_version"] != KEY_VERSION)
    n_old, df = int(old.sum()), df[~old]
    ok = set(df.loc[df["status"] == "ok", "key"])
    grids: dict[tuple, dict[str, Any]] = {}

    def grid(model: Any, dataset: Any, profile: Any) -> dict[str, Any]:
        return grids.setdefault((str(model), str(dataset), str(profile)), {
            "done": 0, "running": [], "queued": {}, "stale": [], "failed": [],
            "seconds": 0.0, "first": [], "last": []})

    for r in df.itertuples():
        g = grid(r.model, r.dataset, r.profile)
        if r.status == "ok":
            g["done"] += 1
            if r.ms_per_iter_epochs:
                g["first"].append(r.ms_per_iter_epochs[0])
                g["last"].append(r.ms_per_iter_epochs[-1])
        else:
            g["failed"].append(f"{r.combo} seed {r.seed}: {_first_line(r.error)}")
        if pd.notna(r.train_seconds):
            g["seconds"] += float(r.train_seconds)
    for c in claims:
        if c.key in ok:  # written after the claim (e.g. from a receipt): nothing runs
            continue
        g = grid(c.model, c.dataset, c.profile)
        what = f"{c.combo} seed {c.seed}: {c.holder}"
        if c.queued:
            if c.expires > now and holder_alive(c):
                g["queued"][c.holder] = g["queued"].get(c.holder, 0) + 1
            continue
        if c.expires > now and holder_alive(c):
            g["running"].append(f"{what} (for {_duration(now - c.claimed_at)}; lease ends in "
                                f"{_duration(c.expires - now)} unless renewed)")
            g["seconds"] += max(0.0, now - c.claimed_at)  # a run in progress counts too
        else:
            g["stale"].append(f"{what} (lease expired or process gone: the next run takes it "
                              "over)")
    if not grids:
        return (f"{where}: no runs yet" + (f" ({n_old} of an older key version)" if n_old
                                           else "") + (f"\n{taken}" if taken else ""))
    table = [{"model": m, "dataset": d, "profile": p, "done": g["done"],
              "running": len(g["running"]), "queued": sum(g["queued"].values()),
              "failed": len(g["failed"]), "time spent": _duration(g["seconds"]),
              "ms/step, first → last epoch": _first_last(g["first"], g["last"])}
             for (m, d, p), g in sorted(grids.items())]
    lines = [f"{where}", "", tabulate(table, headers="keys", tablefmt="github")]
    for (m, d, p), g in sorted(grids.items()):
        details = [f"  running  {x}" for x in sorted(g["running"])] + \
                  [f"  queued   {n} run(s) by {holder}" for holder, n in
                   sorted(g["queued"].items())] + \
                  [f"  stale    {x}" for x in sorted(g["stale"])] + \
                  [f"  failed   {x}" for x in sorted(g["failed"])]
        if details:
            lines += ["", f"{m} on {d}, profile {p}:", *details]
    if n_old:
        lines += ["", f"({n_old} row(s) of an older key version not counted)"]
    if taken:
        lines += ["", taken]
    return "\n".join(lines)


def _first_last(first: list[float], last: list[float]) -> str:
    if not first:
        return ""
    return f"{statistics.median(first):.1f} → {statistics.median(last):.1f}"


def take_in_receipts(path: str | Path | None = None) -> str:
    """Ingest the receipts of finished runs (e.g. of a detached job) waiting beside the store
    at ``path``, so ``status`` counts them; a line saying what happened, "" when none wait.
    Opens the store for writing only when receipts wait; a read-only store keeps them."""
    with ResultStore(path, readonly=True) as store:
        waiting = len(store.pending_receipts())
        where = store.receipts_dir
    if not waiting:
        return ""
    try:
        with ResultStore(path) as store:
            taken = store.ingest_receipts()
    except StoreError as err:
        return f"{waiting} receipt(s) in {where} not taken in ({err})"
    return f"{taken} finished run(s) taken in from receipts in {where}"
