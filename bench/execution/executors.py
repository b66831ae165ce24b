"""Where a grid's runs train: one small interface, four executors.

An :class:`Executor` takes claimed cells (``submit``) and hands back each finished run's
row (``wait``); :func:`bench.execution.grid.run_grid` claims, writes rows and keeps progress.

* ``local``: in this process, one run at a time (the default on a GPU, or for one run).
* ``process``: a pool of ``--jobs N`` spawned worker processes on this machine (the default on
  the CPU: one-thread runs, one per usable core); each reports its epochs back for the
  progress bar, and they exit
  when the coordinator dies, even by ``kill -9``. A worker that dies (killed, out of memory)
  takes the pool down with every run in flight: those runs go again one at a time in a new
  pool, so the run that kills its worker alone is stored as failed and the others finish.
* ``slurm`` (:mod:`bench.execution.cluster`): one SLURM job array through submitit, one task per
  cell (``--slurm-*`` options; job logs in ``<store>.slurm/``). ``--slurm-cluster local``
  runs the same array as local processes (submitit's local executor), to try a set-up
  without a cluster.
* ``ray`` (:mod:`bench.execution.cluster`): one Ray task per cell with its CPUs and GPUs;
  ``--ray-address`` joins a running cluster, otherwise a local instance starts and stops
  with the coordinator.

The settings are checked in :mod:`bench.execution.options`.

Every worker leaves the run's row as an atomic JSON receipt in the store's receipts folder
(on a cluster the store must sit on a file system the nodes share). SLURM and Ray tasks are
handed their run's claim (:meth:`bench.results.claims.Coordinator.hand_over`): a task claims the run
when it starts, renews its lease while it trains and skips a run it finds done or held by
another, so no run trains twice whatever the coordinator does. ``--detach`` (SLURM, Ray)
submits and returns; a later ``run`` or ``status`` takes in the receipts.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import signal
import socket
import sys
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path
from typing import Any, ClassVar

import torch

from bench.identity.config import RunConfig
from bench.results.claims import Coordinator
from bench.results.receipts import write_receipt
from bench.results.store import ResultStore
from bench.threads import passive_workers
from bench.training.run import execute, failure_row

logger = logging.getLogger(__name__)

#: How often a pool worker checks that its coordinator is still its parent.
PARENT_POLL_SECONDS = 1.0
#: How often the coordinator of a pool takes in its workers' finished epochs while it waits.
PROGRESS_POLL_SECONDS = 0.5
_PR_SET_PDEATHSIG = 1
#: Cells to start, each with the claim token it was handed (None: the coordinator's claim).
Batch = list[tuple[RunConfig, str | None]]
#: Finished cells, each with its row (None: its task found the run done or held by another).
Finished = list[tuple[RunConfig, dict[str, Any] | None]]


# -- the worker side ---------------------------------------------------------------------------

@dataclass(frozen=True)
class Task:
    """What a worker needs for one run; ``token`` (SLURM, Ray): the claim it was handed."""

    cell: RunConfig
    device: str
    threads: int
    receipts: str
    store: str | None = None
    token: str | None = None


#: A pool worker's channel for its finished epochs (set by :func:`_start_worker`).
_progress: Any = None


def _epoch_done(key: str) -> Callable[[int], None] | None:
    """Per-epoch callback of a pool worker's run: its key to the coordinator's progress."""
    if _progress is None:
        return None
    return lambda _: _progress.put(key)


def run_task(task: Task) -> dict[str, Any] | None:
    """Train one run in a worker and leave its receipt; with a ``token``, first claim the run
    under it (renewed while training); None when the run was done or held by another."""
    torch.set_num_threads(task.threads)
    if task.token is None:
        row = execute(task.cell, task.device, _epoch_done(task.cell.key))
        write_receipt(Path(task.receipts), row)
        return row
    with ResultStore(task.store) as store, \
            Coordinator(store, owner=task.token, release=False) as hold:
        outcome, other = hold.claim(task.cell)
        if outcome != "claimed":
            logger.warning("run %s not trained: %s", task.cell.key, "already done" if
                           other is None else f"taken over by {other.holder}")
            return None
        row = execute(task.cell, task.device)
        write_receipt(Path(task.receipts), row)
    return row


def _start_worker(parent: int, progress: Any) -> None:
    """Pool initializer: report epochs on ``progress``, and exit with the coordinator."""
    global _progress
    _progress = progress
    _exit_with_parent(parent)


def _exit_with_parent(parent: int) -> None:
    """End this worker when its coordinator dies (``kill -9`` included),
    so no orphan goes on training. Linux: the kernel sends SIGKILL (``PR_SET_PDEATHSIG``);
    every POSIX system: a daemon thread polls ``os.getppid()`` (it changes when the parent
    dies) every :data:`PARENT_POLL_SECONDS`. What a worker finished is in its receipt."""
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL))
    if os.name != "posix":
        return
    if os.getppid() != parent:  # died before we were watching
        os._exit(1)

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(PARENT_POLL_SECONDS)
        os._exit(1)

    threading.Thread(target=watch, name="exit-with-parent", daemon=True).start()


# -- the executors -----------------------------------------------------------------------------

class Executor(ABC):
    """Submit claimed cells, get back finished rows. A context manager: leaving it cancels
    what is still in flight unless the executor is detached."""

    name: ClassVar[str]
    #: Cells run elsewhere and are handed their claim (bench.results.claims.Coordinator.hand_over).
    remote: ClassVar[bool] = False

    def __init__(self, store: ResultStore, device: str, detached: bool = False) -> None:
        self.store, self.device, self.detached = store, device, detached
        #: after a detached submission: what was submitted and where its logs are
        self.note = ""
        self.label = f"{self.name} (queued; submitted from {socket.gethostname()}:{os.getpid()})"

    def task(self, cell: RunConfig, token: str | None, threads: int) -> Task:
        """What a worker needs; absolute paths, since a worker's directory may differ."""
        return Task(cell, self.device, threads, str(self.store.receipts_dir.absolute()),
                    str(self.store.path.absolute()), token)

    def room(self) -> int:
        """How many more cells may be submitted now (claimed only when they can start)."""
        return sys.maxsize

    @abstractmethod
    def in_flight(self) -> int:
        """How many submitted cells have not come back yet."""

    @abstractmethod
    def submit(self, batch: Batch) -> None:
        """Start ``batch`` (cells with the claim token each was handed, or None)."""

    @abstractmethod
    def wait(self) -> Finished:
        """Block until at least one submitted cell finishes; its row, or None when its
        task found the run done or held by another."""

    @abstractmethod
    def cancel(self) -> None:
        """Stop what is in flight (the coordinator is leaving)."""

    def __enter__(self) -> Executor:
        return self

    def __exit__(self, *exc: object) -> None:
        if not self.detached and self.in_flight():
            logger.warning("cancelling %d run(s) still in flight", self.in_flight())
            self.cancel()


class LocalExecutor(Executor):
    """In this process, one run at a time with ``threads`` torch threads (this process's
    own setting is restored after each), with per-epoch progress."""

    name = "local"

    def __init__(self, store: ResultStore, device: str,
                 on_epoch: Callable[[str], None] | None = None, threads: int = 1) -> None:
        super().__init__(store, device)
        self.on_epoch, self.threads = on_epoch, threads
        self._queue: list[RunConfig] = []

    def room(self) -> int:
        return 1 - len(self._queue)

    def in_flight(self) -> int:
        return len(self._queue)

    def submit(self, batch: Batch) -> None:
        self._queue += [cell for cell, _ in batch]

    def cancel(self) -> None:
        self._queue.clear()

    def wait(self) -> Finished:
        cell = self._queue.pop(0)
        tick = None if self.on_epoch is None else (lambda _: self.on_epoch(cell.key))
        before = torch.get_num_threads()
        torch.set_num_threads(self.threads)
        try:
            return [(cell, execute(cell, self.device, tick))]
        finally:
            torch.set_num_threads(before)


class ProcessExecutor(Executor):
    """A pool of ``jobs`` spawned worker processes, each with ``threads`` torch threads;
    ``on_epoch(key)`` hears of each epoch a worker finishes (taken in while waiting).

    When a worker dies the pool breaks and every run in flight with it, with no way to tell
    which one killed it: they become *suspects*, rerun one at a time in a fresh pool (nothing
    else is submitted meanwhile). A suspect that breaks the pool alone gets a failed row;
    the others finish as they would have."""

    name = "process"

    def __init__(self, store: ResultStore, device: str, jobs: int, threads: int,
                 on_epoch: Callable[[str], None] | None = None) -> None:
        super().__init__(store, device)
        self.jobs, self.threads, self.on_epoch = jobs, threads, on_epoch
        self._context = get_context("spawn")
        self._progress: Any = None
        self._pool = self._new_pool()
        self._running: dict[Future, tuple[RunConfig, str | None]] = {}
        self._suspects: Batch = []
        self._alone = False  # the runs in flight are one suspect, run alone

    def _new_pool(self) -> ProcessPoolExecutor:
        """A pool and its progress pipe: written as each epoch ends (no feeder thread), so a
        run's epochs are all in it before its row comes back; new with each pool, so a
        worker that died writing leaves no lock held."""
        if self.threads == 1:  # one thread each: sleeping costs nothing idle, holds under load
            passive_workers()
        if self.on_epoch is not None:
            self._take_progress()
            self._progress = self._context.SimpleQueue()
        return ProcessPoolExecutor(self.jobs, mp_context=self._context,
                                   initializer=_start_worker,
                                   initargs=(os.getpid(), self._progress))

    def _take_progress(self) -> None:
        """Pass on the epochs the workers have reported so far."""
        if self._progress is None:
            return
        while not self._progress.empty():
            self.on_epoch(self._progress.get())

    def room(self) -> int:
        return 0 if self._isolating() else self.jobs - len(self._running)

    def _isolating(self) -> bool:
        return bool(self._suspects) or (bool(self._running) and self._alone)

    def in_flight(self) -> int:
        return len(self._running) + len(self._suspects)

    def submit(self, batch: Batch, alone: bool = False) -> None:
        self._alone = alone
        for i, (cell, token) in enumerate(batch):
            try:
                future = self._pool.submit(run_task, self.task(cell, token, self.threads))
            except BrokenProcessPool:  # a worker died since the last wait, unseen till now
                self._restart()
                self._suspects += batch[i:]  # not started: innocent, but they wait their turn
                return
            self._running[future] = (cell, token)

    def wait(self) -> Finished:
        out: Finished = []
        while not out:
            if not self._running:
                self.submit([self._suspects.pop(0)], alone=True)
            finished: set[Future] = set()
            while not finished:
                finished, _ = wait(self._running, PROGRESS_POLL_SECONDS, FIRST_COMPLETED)
                self._take_progress()
            broken = False
            for fut in finished:
                cell, token = self._running.pop(fut)
                try:
                    out.append((cell, fut.result()))
                except BrokenProcessPool:
                    broken = True
                    if self._alone:
                        out.append((cell, failure_row(
                            cell, "its worker process died while it trained (killed by a "
                            "signal or out of memory?); it ran alone, so it is the cause")))
                    else:
                        self._suspects.append((cell, token))
            if broken:
                self._restart()
        return out

    def _restart(self) -> None:
        """A fresh pool; the runs the broken one still held become suspects (those that
        finished before it broke stay, to be collected)."""
        held = {f: c for f, c in self._running.items() if not _finished_well(f)}
        self._suspects += list(held.values())
        self._running = {f: c for f, c in self._running.items() if f not in held}
        if self._suspects:
            logger.warning("a worker process died: %d run(s) that were in flight go again one "
                           "at a time to find the one that killed it", len(self._suspects))
        self._pool.shutdown(wait=False, cancel_futures=True)
        self._pool = self._new_pool()

    def cancel(self) -> None:
        for fut in self._running:
            fut.cancel()
        self._suspects.clear()

    def __exit__(self, *exc: object) -> None:
        super().__exit__(*exc)
        self._pool.shutdown(cancel_futures=True)
        if self._progress is not None:
            self._progress.close()


def _finished_well(future: Future) -> bool:
    return future.done() and not future.cancelled() and future.exception() is None
