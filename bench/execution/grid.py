"""Running a grid: each resolved run (``bench.identity.config.RunConfig``) trained once.

A run is keyed by the hash of its configuration, so re-running a grid skips what the store
already holds, and a different setting is a different run. The device, thread count,
library versions and code version are recorded with each row but not hashed.
"""

from __future__ import annotations

import contextlib
import logging
import sys
import threading
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from tqdm.auto import tqdm

from bench.execution import cluster, executors
from bench.execution.estimate import epoch_seconds
from bench.execution.options import Options
from bench.identity.config import RunConfig
from bench.results.backup import take_backup
from bench.results.claims import Coordinator
from bench.results.receipts import keep_row
from bench.results.schema import Claim
from bench.results.store import ResultStore
from bench.training.device import resolve_device

logger = logging.getLogger(__name__)


class GridRows(list):
    """The rows one :func:`run_grid` call wrote (a list), plus ``claimed``: key → the claim
    of another coordinator that held each run this call left to it, and ``submitted``: the
    runs handed to a detached job (``--detach``) with ``note``, how to collect them."""

    claimed: dict[str, Claim]

    def __init__(self) -> None:
        super().__init__()
        self.claimed = {}
        self.submitted = 0
        self.note = ""


#: Seconds between the progress lines a grid logs when its output is not a terminal.
LOG_EVERY = 60.0


class _ProgressLog:
    """Output piped to a file cannot show a bar that redraws, and the bar only moves once
    per epoch (up to many minutes): log its state every ``every`` seconds instead."""

    def __init__(self, bar: Any, every: float) -> None:
        self.bar, self.every, self.stopped = bar, every, threading.Event()
        threading.Thread(target=self._run, daemon=True, name="progress-log").start()

    def _run(self) -> None:
        while not self.stopped.wait(self.every):
            logger.info("progress: %s", self.bar)

    def close(self) -> None:
        self.stopped.set()


class _Grid:
    """One :func:`run_grid` call: claims each run, feeds the executor as it has room,
    writes each row it gets back and keeps the progress bar (in expected seconds, or
    epochs)."""

    def __init__(self, todo: list[RunConfig], store: ResultStore, coordinator: Coordinator,
                 progress: bool, on_row: Callable[[dict[str, Any]], None] | None,
                 device: str = "cpu") -> None:
        self.todo, self.store, self.coordinator, self.on_row = todo, store, coordinator, on_row
        self.rows = GridRows()
        self.epochs = {c.key: int(c.hparams.get("epochs", 1)) for c in todo}
        # progress in expected seconds where the store has timed such runs before, so the
        # ETA weighs a FuseMoE epoch as the many TF epochs it costs; else in epochs
        seconds = epoch_seconds(todo, store.path, device) if progress else None
        self.cost: dict[str, float] = seconds or dict.fromkeys(self.epochs, 1)  # whole epochs
        self.bar = tqdm(total=sum(self.epochs[k] * self.cost[k] for k in self.epochs),
                        desc=f"{len(todo)} run(s)", unit="epoch" if seconds is None else "s",
                        disable=not progress,
                        bar_format=None if seconds is None else
                        "{desc}: {percentage:3.0f}%|{bar}| {elapsed}<{remaining} (expected "
                        "seconds of training){postfix}")
        self.counted: dict[str, int] = {}
        self.told: set[str] = set()  # runs counted out of the bar: another coordinator's
        self.started = 0

    def tick_total(self, key: str, sign: int) -> None:  # runs left to others are not our work
        self.bar.total += sign * self.epochs[key] * self.cost[key]
        self.bar.refresh()

    def epoch_done(self, key: str) -> None:
        if self.counted.get(key, 0) >= self.epochs[key]:  # a worker's late word on a finished run
            return
        self.counted[key] = self.counted.get(key, 0) + 1
        self.bar.update(self.cost[key])

    def claimed(self, pending: list[RunConfig],
                held: dict[str, tuple[RunConfig, Claim]]) -> Iterator[RunConfig]:
        """The cells of ``pending`` this coordinator wins, claimed one at a time."""
        for cell in pending:
            outcome, other = self.coordinator.claim(cell)
            if outcome == "claimed":
                if cell.key in self.told:
                    self.tick_total(cell.key, +1)
                yield cell
            elif outcome == "held" and other is not None:
                held[cell.key] = (cell, other)
                if cell.key not in self.told:
                    self.told.add(cell.key)
                    self.tick_total(cell.key, -1)
                    logger.info("skipping %s %s seed %d (%s): claimed by another run on %s",
                                cell.model, cell.combo, cell.seed, cell.key, other.holder)
            elif cell.key not in self.told:  # done by another coordinator meanwhile
                self.tick_total(cell.key, -1)

    def finish(self, cell: RunConfig, row: dict[str, Any] | None) -> None:
        if row is None:  # its task found the run done or taken over when it started
            logger.info("run %s (%s %s seed %d) was not trained by its task: another run had "
                        "it", cell.key, cell.model, cell.combo, cell.seed)
            self.tick_total(cell.key, -1)
            return
        self.coordinator.finish(row)
        self.rows.append(row)
        keep_row(self.store.path, row)  # until the backup after this grid holds it
        # the rest of a failed run
        self.bar.update((self.epochs[row["key"]] - self.counted.get(row["key"], 0))
                        * self.cost[row["key"]])
        self.counted[row["key"]] = self.epochs[row["key"]]
        self.bar.set_postfix_str(f"done: {row['model']} {row['combo']} seed {row['seed']} "
                                 f"{row['status']}")
        if self.on_row:
            self.on_row(row)

    def run_pass(self, source: Iterator[RunConfig], executor: executors.Executor) -> None:
        """Submit the claimed cells of ``source`` while the executor has room; write what
        comes back (detached: submit them all and return)."""
        while True:
            batch = []
            while executor.room() > len(batch):  # claim a run only when it can start
                cell = next(source, None)
                if cell is None:
                    break
                self.started += 1
                self.bar.set_postfix_str(f"run {self.started}/{len(self.todo)}: {cell.model} "
                                         f"{cell.combo} seed {cell.seed}")
                token = (self.coordinator.hand_over(cell, executor.label, executor.detached)
                         if executor.remote else None)
                batch.append((cell, token))
            if batch:
                try:
                    executor.submit(batch)
                except BaseException:  # e.g. sbatch refused it: free what was handed over
                    for _, token in batch:
                        if token is not None:
                            self.store.release(token)
                    raise
            if executor.detached:
                self.rows.submitted += len(batch)
                return
            if not executor.in_flight():
                return
            for cell, row in executor.wait():
                self.finish(cell, row)


def run_grid(cells: Sequence[RunConfig], store: ResultStore, device: str = "cpu", jobs: int = 1,
             progress: bool = True, on_row: Callable[[dict[str, Any]], None] | None = None,
             executor: Options | None = None) -> GridRows:
    """Run every cell the store does not hold yet; write each row as it finishes.

    ``executor`` says where cells run (:mod:`bench.execution.executors`; default: in this
    process, or a pool of ``jobs`` worker processes). Each run is claimed in the store just
    before it is submitted, when the executor has room for it (in-process: one at a time; a pool:
    ``jobs``; SLURM and Ray: all, their scheduler queues them), so coordinators sharing the
    store split a grid run by run. A run another coordinator holds is skipped and logged,
    then tried again after this call's other runs, pass after pass while a pass frees any
    (its holder died, or finished or failed it); what stays held is in the result's
    ``claimed``. Workers leave a JSON receipt beside the store, so rows survive the
    coordinator. Detached (SLURM, Ray), the runs are submitted and the call returns; a
    later call (or ``status``) takes in their receipts. Returns the rows written.
    """
    options = executor or Options(kind="process" if jobs > 1 else "local", jobs=jobs)
    recovered = store.ingest_receipts()
    if recovered:
        logger.info("recovered %d finished run(s) from receipts", recovered)
    done = store.done_keys()
    unique = list({c.key: c for c in cells}.values())
    todo = [c for c in unique if c.key not in done]
    if len(unique) > len(todo):
        logger.info("%d of %d run(s) already in %s", len(unique) - len(todo), len(unique),
                    store.path)
    if not todo:
        return GridRows()
    options = options.for_grid(len(todo), "cpu" if options.remote
                               else resolve_device(device).type)
    if options.kind in ("local", "process"):
        logger.info("training %d run(s) %s, %d torch thread(s) each", len(todo),
                    "in this process" if options.kind == "local"
                    else f"{options.jobs} at a time in worker processes", options.threads)
    with contextlib.ExitStack() as stack:
        coordinator = stack.enter_context(Coordinator(store))
        coordinator.enqueue(todo)  # so that `status` lists what this grid has yet to start
        # the executor first: one that cannot start (no sbatch, no Ray) fails before the bar
        pool = stack.enter_context(make_executor(
            options, store, device, lambda key: grid.epoch_done(key)))
        grid = _Grid(todo, store, coordinator, progress, on_row, device)
        stack.callback(grid.bar.close)
        if progress and not sys.stderr.isatty():
            stack.callback(_ProgressLog(grid.bar, LOG_EVERY).close)
        pending = todo
        held: dict[str, tuple[RunConfig, Claim]] = {}
        while pending:
            held = {}
            grid.run_pass(grid.claimed(pending, held), pool)
            if pool.detached or len(held) == len(pending):  # leave them to their holders
                break
            pending = [cell for cell, _ in held.values()]
        grid.rows.claimed = {key: claim for key, (_, claim) in held.items()}
        grid.rows.note = pool.note
    if grid.rows:
        take_backup(store)
    if grid.rows.claimed:
        logger.info("%d run(s) left to the other coordinator(s) holding them (%s); a later run "
                    "trains any they leave unfinished", len(grid.rows.claimed),
                    ", ".join(sorted({c.holder for c in grid.rows.claimed.values()})))
    return grid.rows


def make_executor(options: Options, store: ResultStore, device: str,
                  on_epoch: Callable[[str], None] | None = None) -> executors.Executor:
    """The executor ``options`` name (``on_epoch(key)``: per-epoch progress, in-process)."""
    if options.kind == "local":
        return executors.LocalExecutor(store, device, on_epoch, options.threads)
    if options.kind == "process":
        return executors.ProcessExecutor(store, device, options.jobs, options.threads, on_epoch)
    if options.kind == "slurm":
        return cluster.SlurmExecutor(store, device, options.slurm, options.detach)
    return cluster.RayExecutor(store, device, options.ray, options.detach)
