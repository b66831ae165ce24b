"""Running a grid: each resolved run (``bench.config.RunConfig``) trained once.

A run is keyed by the hash of its configuration, so re-running a grid skips what the store
already holds, and a different setting is a different run. The device, thread count,
library versions and code version are recorded with each row but not hashed.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import platform
import subprocess
import time
import traceback
from collections.abc import Callable, Iterator, Sequence
from functools import lru_cache
from typing import Any

import torch
from tqdm.auto import tqdm

import bench
from bench import executors, registry
from bench.claims import Coordinator
from bench.complexity import count_params, forward_flops, fvcore_macs
from bench.config import KEY_VERSION, RunConfig, load_data
from bench.data.core import RunData
from bench.execution import Options
from bench.receipts import receipt_path
from bench.resources import checkout_root
from bench.robustness import test_time_metrics
from bench.store import Claim, ResultStore
from bench.train import fit, seed_everything

logger = logging.getLogger(__name__)


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


def device_type(device: str) -> str:
    """The kind a device name asks for (``auto`` → what this machine has), checking only the
    spelling: a task on a cluster node resolves the name there (:func:`resolve_device`)."""
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        dev = None
    if dev is None or dev.type not in ("cpu", "cuda") or (dev.type == "cpu" and dev.index):
        raise ValueError(f"unknown device {device!r}; use auto, cpu, cuda or cuda:N")
    return dev.type


def resolve_device(device: str = "auto") -> torch.device:
    """``auto`` (CUDA when available, else CPU), ``cpu``, ``cuda`` or ``cuda:N``; anything
    else, or CUDA on a machine without it, is an error that says what is accepted."""
    kind = device_type(device)
    dev = torch.device(kind if device == "auto" else device)
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
        **_cell_columns(cell), "device": dev.type,
        "device_name": (torch.cuda.get_device_name(dev) if dev.type == "cuda"
                        else platform.processor() or platform.machine()),
        "threads": torch.get_num_threads(), "torch_version": torch.__version__,
        "python_version": platform.python_version(),
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
            # after the cost probes: evaluation only, so no stored number above can move
            robustness=test_time_metrics(model, data),
            ms_per_iter=result.ms_per_iter, ms_per_iter_median=result.ms_per_iter_median,
            s_per_epoch=sum(result.epoch_s) / len(result.epoch_s),
        )
    except Exception as exc:  # a failed run is recorded, and the grid goes on
        logger.error("run %s (%s %s %s seed %d) failed: %s", cell.key, cell.model, cell.dataset,
                     cell.combo, cell.seed, exc)
        row.update(status="failed", error="".join(
            traceback.format_exception_only(type(exc), exc)).strip())
    row["train_seconds"] = time.perf_counter() - t0
    row["created_at"] = _now()
    return row


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def _cell_columns(cell: RunConfig) -> dict[str, Any]:
    return {"key": cell.key, "key_version": KEY_VERSION, "config": cell.record(),
            "model": cell.model, "dataset": cell.dataset, "combo": cell.combo,
            "seed": cell.seed, "profile": cell.profile, "split_seed": cell.split_seed,
            "hparams": cell.hparams, "data_options": cell.data_options,
            "code_version": code_version()}


def failure_row(cell: RunConfig, error: str) -> dict[str, Any]:
    """The row of a run whose task died without one (killed, out of time, lost node), so the
    grid records the failure and the next run retries it."""
    logger.error("run %s (%s %s %s seed %d) failed: %s", cell.key, cell.model, cell.dataset,
                 cell.combo, cell.seed, error)
    return {**_cell_columns(cell), "status": "failed", "error": error, "created_at": _now()}


def excluded_note(data: RunData) -> dict[str, str]:
    """A note on evaluation samples left out for observing none of the run's modalities."""
    if not any(data.excluded.values()):
        return {}
    return {"samples": f"eval=all: {data.excluded.get('val', 0)} validation and "
                       f"{data.excluded.get('test', 0)} test sample(s) observe none of "
                       f"{data.spec.letters} and are not scored"}


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


class _Grid:
    """One :func:`run_grid` call: claims each run, feeds the executor as it has room,
    writes each row it gets back and keeps the progress bar (in epochs)."""

    def __init__(self, todo: list[RunConfig], store: ResultStore, coordinator: Coordinator,
                 progress: bool, on_row: Callable[[dict[str, Any]], None] | None) -> None:
        self.todo, self.store, self.coordinator, self.on_row = todo, store, coordinator, on_row
        self.rows = GridRows()
        # progress in epochs, so the ETA weighs a 50-epoch run as 50 of a 1-epoch one
        self.epochs = {c.key: int(c.hparams.get("epochs", 1)) for c in todo}
        self.bar = tqdm(total=sum(self.epochs.values()), desc=f"{len(todo)} run(s)",
                        unit="epoch", disable=not progress)
        self.counted: dict[str, int] = {}
        self.told: set[str] = set()  # runs counted out of the bar: another coordinator's
        self.started = 0

    def tick_total(self, key: str, sign: int) -> None:  # runs left to others are not our work
        self.bar.total += sign * self.epochs[key]
        self.bar.refresh()

    def epoch_done(self, key: str) -> None:
        self.counted[key] = self.counted.get(key, 0) + 1
        self.bar.update()

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
        receipt_path(self.store.receipts_dir, row["key"]).unlink(missing_ok=True)
        # the rest of a failed run
        self.bar.update(self.epochs[row["key"]] - self.counted.get(row["key"], 0))
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

    ``executor`` says where cells run (:mod:`bench.executors`; default: in this process, or
    a pool of ``jobs`` worker processes). Each run is claimed in the store just before it
    is submitted, when the executor has room for it (in-process: one at a time; a pool:
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
    with contextlib.ExitStack() as stack:
        coordinator = stack.enter_context(Coordinator(store))
        # the executor first: one that cannot start (no sbatch, no Ray) fails before the bar
        pool = stack.enter_context(executors.make_executor(
            options, store, device, lambda key: grid.epoch_done(key)))
        grid = _Grid(todo, store, coordinator, progress, on_row)
        stack.callback(grid.bar.close)
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
    if grid.rows.claimed:
        logger.info("%d run(s) left to the other coordinator(s) holding them (%s); a later run "
                    "trains any they leave unfinished", len(grid.rows.claimed),
                    ", ".join(sorted({c.holder for c in grid.rows.claimed.values()})))
    return grid.rows
