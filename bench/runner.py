"""Running a grid: each resolved run (``bench.config.RunConfig``) trained once.

A run is keyed by the hash of its configuration, so re-running a grid skips what the store
already holds, and a different setting is a different run. The device, thread count,
library versions and code version are recorded with each row but not hashed.
"""

from __future__ import annotations

import contextlib
import ctypes
import datetime as dt
import logging
import os
import platform
import signal
import subprocess
import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from functools import lru_cache
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

import bench
from bench import registry
from bench.claims import Coordinator
from bench.complexity import count_params, forward_flops, fvcore_macs
from bench.config import KEY_VERSION, RunConfig, load_data
from bench.data.core import RunData
from bench.resources import checkout_root
from bench.store import Claim, ResultStore, write_receipt
from bench.train import fit, seed_everything

logger = logging.getLogger(__name__)

#: How often a pool worker checks that its coordinator is still its parent.
PARENT_POLL_SECONDS = 1.0
_PR_SET_PDEATHSIG = 1


@lru_cache(maxsize=1)
def code_version() -> str:
    """Package version plus the git commit when run from a checkout (never the commit of
    some other repository an installed copy happens to sit in)."""
    root = checkout_root()
    if root is None:
        return bench.__version__
    try:
        out = subprocess.run(["git", "-C", str(root), "describe", "--always", "--dirty"],
                             capture_output=True, text=True, timeout=5, check=True)
        return f"{bench.__version__}+{out.stdout.strip()}"
    except (OSError, subprocess.SubprocessError):
        return bench.__version__


def resolve_device(device: str = "auto") -> torch.device:
    """``auto`` (CUDA when available, else CPU), ``cpu``, ``cuda`` or ``cuda:N``; anything
    else, or CUDA on a machine without it, is an error that says what is accepted."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        dev = None
    if dev is None or dev.type not in ("cpu", "cuda") or (dev.type == "cpu" and dev.index):
        raise ValueError(f"unknown device {device!r}; use auto, cpu, cuda or cuda:N")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} requested but CUDA is not available; use --device cpu")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise ValueError(f"device {device!r} does not exist; this machine has "
                         f"{torch.cuda.device_count()} CUDA device(s)")
    return dev


def execute(cell: RunConfig, device: str | torch.device = "cpu",
            on_epoch: Callable[[int], None] | None = None) -> dict[str, Any]:
    """Train and evaluate one cell; return its store row (a failed run is a row too).
    ``on_epoch(epoch)`` is called after every training epoch (progress bars)."""
    for module in cell.plugins:
        registry.load_plugin(module)
    dev = resolve_device(str(device))
    row: dict[str, Any] = {
        "key": cell.key, "key_version": KEY_VERSION, "config": cell.record(),
        "model": cell.model, "dataset": cell.dataset, "combo": cell.combo,
        "seed": cell.seed, "profile": cell.profile, "split_seed": cell.split_seed,
        "hparams": cell.hparams, "data_options": cell.data_options, "device": dev.type,
        "device_name": (torch.cuda.get_device_name(dev) if dev.type == "cuda"
                        else platform.processor() or platform.machine()),
        "threads": torch.get_num_threads(), "torch_version": torch.__version__,
        "python_version": platform.python_version(), "code_version": code_version(),
    }
    t0 = time.perf_counter()
    try:
        whole = load_data(cell.dataset, cell.data_options, cell.split_seed)
        if (whole.content_digest, whole.split_digest) != (cell.data_digest, cell.split_digest):
            raise RuntimeError(f"the data of {cell.dataset!r} changed since the grid was "
                               "resolved (content or split digest differs); run the grid again")
        data = whole.restrict(cell.combo).to(dev)
        seed_everything(cell.seed)
        train_hp, _ = registry.split_hparams(cell.hparams)
        model = registry.build_model(cell.model, data.spec, cell.hparams).to(dev)
        result = fit(model, data, seed=cell.seed, on_epoch=on_epoch, **train_hp)
        probe = data.batch(data.splits["val"][: train_hp.get("batch_size", 8)])
        flops = forward_flops(model, probe)
        macs, skipped = fvcore_macs(model, probe)
        row.update(
            status="ok", error=None, split_digest=data.split_digest, run_info=model.run_info(),
            val_acc=result.val["acc"], val_f1=result.val["f1"], val_auc=result.val["auc"],
            test_acc=result.test["acc"], test_f1=result.test["f1"], test_auc=result.test["auc"],
            metric_notes={**result.notes, **excluded_note(data)},
            test_pred_counts=result.pred_counts.get("test"),
            best_epoch=result.best_epoch, epochs=len(result.epoch_s),
            val_acc_curve=result.val_acc_curve,
            n_train=int(data.splits["train"].numel()), n_val=int(data.splits["val"].numel()),
            n_test=int(data.splits["test"].numel()), params=count_params(model),
            flops_batch=float(flops), flops_batch_size=len(probe),
            flops_per_sample=flops / max(len(probe), 1),
            fvcore_flops_batch=None if macs is None else float(macs),
            fvcore_flops_per_sample=None if macs is None else macs / max(len(probe), 1),
            fvcore_skipped_ops=skipped,
            ms_per_iter=result.ms_per_iter, ms_per_iter_median=result.ms_per_iter_median,
            s_per_epoch=sum(result.epoch_s) / len(result.epoch_s),
        )
    except Exception as exc:  # a failed run is recorded, and the grid goes on
        logger.error("run %s (%s %s %s seed %d) failed: %s", cell.key, cell.model, cell.dataset,
                     cell.combo, cell.seed, exc)
        row.update(status="failed", error="".join(
            traceback.format_exception_only(type(exc), exc)).strip())
    row["train_seconds"] = time.perf_counter() - t0
    row["created_at"] = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    return row


def excluded_note(data: RunData) -> dict[str, str]:
    """A note on evaluation samples left out for observing none of the run's modalities."""
    if not any(data.excluded.values()):
        return {}
    return {"samples": f"eval=all: {data.excluded.get('val', 0)} validation and "
                       f"{data.excluded.get('test', 0)} test sample(s) observe none of "
                       f"{data.spec.letters} and are not scored"}


def _exit_with_parent(parent: int) -> None:
    """Pool initializer: end this worker when its coordinator dies (``kill -9`` included),
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


def _worker(cell: RunConfig, device: str, receipts: str, threads: int) -> dict[str, Any]:
    torch.set_num_threads(threads)
    row = execute(cell, device)
    write_receipt(Path(receipts), row)
    return row


class GridRows(list):
    """The rows one :func:`run_grid` call wrote (a list), plus ``claimed``: key → the claim
    of another coordinator that held each run this call left to it."""

    claimed: dict[str, Claim]

    def __init__(self) -> None:
        super().__init__()
        self.claimed = {}


def run_grid(cells: Sequence[RunConfig], store: ResultStore, device: str = "cpu", jobs: int = 1,
             progress: bool = True,
             on_row: Callable[[dict[str, Any]], None] | None = None) -> GridRows:
    """Run every cell the store does not hold yet; write each row as it finishes.

    Each run is claimed in the store just before it starts (with ``jobs > 1``: just before
    it is handed to a free worker, so at most ``jobs`` claims are held and coordinators
    sharing the store split a grid run by run). A run another coordinator holds is skipped
    and logged, then tried again after this call's other runs, pass after pass while a pass
    frees any (its holder died, or finished or failed it); what stays held is in the
    result's ``claimed``.
    ``jobs > 1`` uses a local process pool whose workers exit when this process dies and
    leave a JSON receipt, so rows survive the coordinator. Returns the rows written.
    """
    recovered = store.ingest_receipts()
    if recovered:
        logger.info("recovered %d finished run(s) from receipts", recovered)
    done = store.done_keys()
    unique = list({c.key: c for c in cells}.values())
    todo = [c for c in unique if c.key not in done]
    if len(unique) > len(todo):
        logger.info("%d of %d run(s) already in %s", len(unique) - len(todo), len(unique),
                    store.path)
    rows = GridRows()
    # progress in epochs, so the ETA weighs a 50-epoch run as 50 of a 1-epoch one
    epochs = {c.key: int(c.hparams.get("epochs", 1)) for c in todo}
    bar = tqdm(total=sum(epochs.values()), desc=f"{len(todo)} run(s)", unit="epoch",
               disable=not progress or not todo)
    counted: dict[str, int] = {}
    started = 0

    def tick_total(key: str, sign: int) -> None:  # runs left to others are not our work
        bar.total += sign * epochs[key]
        bar.refresh()

    def claimed_cells(pending: list[RunConfig], held: dict[str, tuple[RunConfig, Claim]],
                      told: set[str]) -> Iterator[RunConfig]:
        """The cells of ``pending`` this coordinator wins, claimed one at a time."""
        for cell in pending:
            outcome, other = coordinator.claim(cell)
            if outcome == "claimed":
                if cell.key in told:
                    tick_total(cell.key, +1)
                yield cell
            elif outcome == "held" and other is not None:
                held[cell.key] = (cell, other)
                if cell.key not in told:
                    told.add(cell.key)
                    tick_total(cell.key, -1)
                    logger.info("skipping %s %s seed %d (%s): claimed by another run on %s",
                                cell.model, cell.combo, cell.seed, cell.key, other.holder)
            elif cell.key not in told:  # done by another coordinator meanwhile
                tick_total(cell.key, -1)

    def finish(row: dict[str, Any]) -> None:
        coordinator.finish(row)
        rows.append(row)
        bar.update(epochs[row["key"]] - counted.get(row["key"], 0))  # the rest of a failed run
        if on_row:
            on_row(row)

    def epoch_done(key: str) -> Callable[[int], None]:
        def tick(_: int) -> None:
            counted[key] = counted.get(key, 0) + 1
            bar.update()
        return tick

    def run_serial(source: Iterator[RunConfig]) -> None:
        nonlocal started
        for cell in source:
            started += 1
            bar.set_postfix_str(f"run {started}/{len(todo)}: {cell.model} {cell.combo} "
                                f"seed {cell.seed}")
            finish(execute(cell, device, epoch_done(cell.key)))

    def run_pool(source: Iterator[RunConfig], pool: ProcessPoolExecutor) -> None:
        threads = max(1, (os.cpu_count() or 1) // jobs)
        running: dict[Future, RunConfig] = {}
        try:
            while True:
                while len(running) < jobs:  # claim a run only when a worker is free for it
                    cell = next(source, None)
                    if cell is None:
                        break
                    running[pool.submit(_worker, cell, device, str(store.receipts_dir),
                                        threads)] = cell
                if not running:
                    return
                finished, _ = wait(running, return_when=FIRST_COMPLETED)
                for fut in finished:
                    running.pop(fut)
                    row = fut.result()
                    bar.set_postfix_str(f"done: {row['model']} {row['combo']} seed "
                                        f"{row['seed']} {row['status']}")
                    finish(row)
                    (store.receipts_dir / f"{row['key']}.json").unlink(missing_ok=True)
        finally:
            for fut in running:
                fut.cancel()

    with contextlib.ExitStack() as stack:
        stack.callback(bar.close)
        coordinator = stack.enter_context(Coordinator(store))
        pool = None
        if jobs > 1 and todo:
            pool = stack.enter_context(ProcessPoolExecutor(
                jobs, mp_context=get_context("spawn"), initializer=_exit_with_parent,
                initargs=(os.getpid(),)))
        pending, told = todo, set[str]()
        held: dict[str, tuple[RunConfig, Claim]] = {}
        while pending:
            held = {}
            source = claimed_cells(pending, held, told)
            run_pool(source, pool) if pool is not None else run_serial(source)
            if len(held) == len(pending):  # nothing freed up: leave them to their holders
                break
            pending = [cell for cell, _ in held.values()]
        rows.claimed = {key: claim for key, (_, claim) in held.items()}
    if rows.claimed:
        logger.info("%d run(s) left to the other coordinator(s) holding them (%s); a later run "
                    "trains any they leave unfinished", len(rows.claimed),
                    ", ".join(sorted({c.holder for c in rows.claimed.values()})))
    return rows
