"""One run in-process: data loaded, model built, trained, scored and costed; its row.

A failed run is a row too (``status`` ``failed`` with its error), so a grid goes on.
"""

from __future__ import annotations

import datetime as dt
import logging
import math
import os
import platform
import time
import traceback
from collections.abc import Callable
from typing import Any

import torch

from bench import registry
from bench.data.core import RunData
from bench.data.load import load_data
from bench.identity.config import KEY_VERSION, RunConfig
from bench.threads import wait_policy
from bench.training.complexity import count_params, forward_flops, fvcore_macs
from bench.training.device import resolve_device
from bench.training.metrics import SPLITS, column, metric_names
from bench.training.robustness import test_time_metrics
from bench.training.train import fit, seed_everything
from bench.version import code_version

logger = logging.getLogger(__name__)


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
        "threads": torch.get_num_threads(), "omp_wait_policy": wait_policy(),
        "torch_version": torch.__version__,
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
        cpu0, wall0 = time.process_time(), time.perf_counter()
        result = fit(model, data, seed=cell.seed, on_epoch=on_epoch, **train_hp)
        row["cpu_share"] = ((time.process_time() - cpu0)
                            / ((time.perf_counter() - wall0) * row["threads"]))
        row["load_avg"] = os.getloadavg()[0]
        probe = data.batch(data.splits["val"][: train_hp.get("batch_size", 8)])
        flops = forward_flops(model, probe)
        macs, skipped = fvcore_macs(model, probe)
        row.update(
            status="ok", error=None, split_digest=data.split_digest, run_info=model.run_info(),
            **{column(split, name): getattr(result, split)[name]
               for split in SPLITS for name in metric_names()},
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
            ms_per_iter_epochs=[round(ms, 3) for ms in result.epoch_ms_median],
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


#: Below this share of its threads' CPU time a run's timing was taken on a busy machine.
CONTENDED_SHARE = 0.75


def contention(row: Any) -> str:
    """Why a run's timing does not show the machine's speed ("" when it does): the CPU time
    the process got against its threads' wall time, with the load average, both stored."""
    share, load = row.get("cpu_share"), row.get("load_avg")
    if not _number(share) or share >= CONTENDED_SHARE:
        return ""
    return (f"timed on a busy machine: the run got {share:.0%} of its threads' CPU time"
            + (f" (load average {load:.1f})" if _number(load) else ""))


def _number(value: Any) -> bool:
    """A stored number (not None, not NaN: a row of a store from before the column)."""
    return isinstance(value, (int, float)) and not math.isnan(value)

