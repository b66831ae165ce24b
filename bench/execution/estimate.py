"""What a grid will cost before it runs (``run --dry-run``, ``reproduce --dry-run``).

Per model: the runs still to train (those without an ``ok`` row in the store), training
steps per run (epochs × ceil(n_train / batch size), n_train from the resolved data
restricted to the run's combination) and device-hours = steps × time per step, then the
total — the number to weigh this machine against a cluster.

Time per step, for each model × combination, in this order:

* **store**: the median ``ms_per_iter_median`` (else ``s_per_epoch`` ÷ that run's steps per
  epoch) of earlier ``ok`` runs in the store on the same device type (cpu / cuda) with the
  same model, data set, combination and every hyper-parameter except ``epochs``, ``lr`` and
  ``weight_decay`` equal — batch size and architecture included, since a step's cost
  follows them, so no scaling across batch sizes is guessed. Thread counts are not matched;
  the runs' own are what they are.
* **probe**: otherwise a few timed training steps here (:func:`bench.training.perf.probe_step_ms`,
  :data:`PROBE_STEPS` after :data:`PROBE_WARMUP`) at the thread count one run gets from
  the executor (here: ``--threads``, default 1; a SLURM or Ray task: its CPUs). On a
  machine other processes keep busy, more threads than free cores
  make a probe (and a run) many times slower.

Only training steps are counted: validation passes, start-up and queueing are not.
"""

from __future__ import annotations

import json
import logging
import math
import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from tabulate import tabulate

from bench.data.core import num_batches
from bench.data.load import load_data
from bench.identity.config import RunConfig
from bench.results.store import ResultStore, default_store_path
from bench.training.device import device_type, resolve_device

logger = logging.getLogger(__name__)

#: Settings that leave the cost of one training step unchanged.
STEP_FREE = frozenset({"epochs", "lr", "weight_decay"})
PROBE_WARMUP = 2
PROBE_STEPS = 3


@dataclass
class ModelCost:
    """One model's share of the grid: the runs left, their steps and device-hours."""

    model: str
    runs: int = 0
    steps: list[int] = field(default_factory=list)
    step_ms: list[float] = field(default_factory=list)
    hours: float = 0.0
    unknown: int = 0  # runs without a time per step (the probe failed)
    sources: dict[str, int] = field(default_factory=dict)  # source → runs


@dataclass
class Estimate:
    device: str  # cpu or cuda
    threads: int
    store: Path
    stored: int  # runs of the grid already in the store
    models: list[ModelCost]
    probes: int = 0
    probe_seconds: float = 0.0

    @property
    def hours(self) -> float:
        return sum(m.hours for m in self.models)


def _shape(hparams: dict[str, Any]) -> str:
    return json.dumps({k: v for k, v in hparams.items() if k not in STEP_FREE}, sort_keys=True)


def _history(store: Path) -> pd.DataFrame:
    """The store's ok runs with a timing (empty when there is no store yet)."""
    if not store.is_file():
        return pd.DataFrame()
    with ResultStore(store, readonly=True) as s:
        df = s.load()
    return df[df["status"] == "ok"]


def _data_id(cell: RunConfig) -> tuple:
    return (cell.dataset, json.dumps(cell.data_options, sort_keys=True), cell.split_seed,
            cell.combo)


def _n_train(cell: RunConfig, sizes: dict[tuple, int]) -> int:
    """Training samples of ``cell``'s data and combination, loaded once per ``sizes``."""
    key = _data_id(cell)
    if key not in sizes:
        data = load_data(cell.dataset, cell.data_options, cell.split_seed)
        sizes[key] = int(data.restrict(cell.combo).splits["train"].numel())
    return sizes[key]


def stored_step_ms(history: pd.DataFrame, cell: RunConfig, device: str) -> tuple[float, int]:
    """Median ms per step of the matching earlier runs (see the module doc) and how many
    there were; (nan, 0) when none."""
    if history.empty:
        return math.nan, 0
    same = history[(history["model"] == cell.model) & (history["dataset"] == cell.dataset)
                   & (history["combo"] == cell.combo) & (history["device"] == device)]
    shape = _shape(cell.hparams)
    values = []
    for r in same.itertuples():
        if _shape(r.hparams) != shape:
            continue
        if pd.notna(r.ms_per_iter_median):
            values.append(float(r.ms_per_iter_median))
        elif pd.notna(r.s_per_epoch) and pd.notna(r.n_train):
            values.append(1e3 * r.s_per_epoch / num_batches(r.n_train, r.hparams["batch_size"]))
    return (statistics.median(values), len(values)) if values else (math.nan, 0)


def epoch_seconds(cells: Sequence[RunConfig], store: Path,
                  device: str) -> dict[str, float] | None:
    """Run key → the seconds an epoch of it is expected to take, from the store's earlier
    step times (:func:`stored_step_ms`) and its training split's number of batches; a run
    with no earlier timing takes the median step of those with one. None when the store
    times none of them: the progress bar then counts epochs."""
    history = _history(store)
    kind = device_type(device)
    sizes: dict[tuple, int] = {}
    steps, ms = {}, {}
    for cell in cells:
        steps[cell.key] = num_batches(_n_train(cell, sizes), int(cell.hparams["batch_size"]))
        ms[cell.key] = stored_step_ms(history, cell, kind)[0]
    known = [v for v in ms.values() if not math.isnan(v)]
    if not known:
        return None
    typical = statistics.median(known)
    return {k: (typical if math.isnan(v) else v) * steps[k] / 1e3 for k, v in ms.items()}


def estimate(cells: Sequence[RunConfig], store: Path | None = None, device: str = "auto",
             threads: int | None = None) -> Estimate:
    """The cost of the runs of ``cells`` that ``store`` does not hold yet, on ``device``,
    probing (only where ``device`` exists here) with ``threads`` torch threads — a run's
    under the executor that will train them (default: this process's)."""
    here_threads = torch.get_num_threads()
    torch.set_num_threads(threads or here_threads)
    try:
        return _estimate(cells, store, device)
    finally:
        torch.set_num_threads(here_threads)


def _estimate(cells: Sequence[RunConfig], store: Path | None, device: str) -> Estimate:
    from bench.training.perf import probe_step_ms  # perf imports the runner's training stack

    path = default_store_path(store)
    history = _history(path)
    done = set(history["key"]) if not history.empty else set()
    unique = list({c.key: c for c in cells}.values())
    todo = [c for c in unique if c.key not in done]
    kind = device_type(device)
    try:
        resolve_device(device)
        here = True
    except ValueError:  # e.g. cuda asked for on a machine without it: history only
        here = False
    out = Estimate(kind, torch.get_num_threads(), path, len(unique) - len(todo), [])
    models: dict[str, ModelCost] = {}
    n_train: dict[tuple, int] = {}
    step_ms: dict[tuple, tuple[float, str]] = {}
    for cell in todo:
        train = _n_train(cell, n_train)
        key = (*_data_id(cell), cell.model, _shape(cell.hparams))
        if key not in step_ms:
            ms, n = stored_step_ms(history, cell, kind)
            source = f"store ({n} run{'s' if n > 1 else ''})" if n else "probe"
            if not n and here:
                t0 = time.perf_counter()
                try:
                    ms = probe_step_ms(cell, device, PROBE_STEPS, PROBE_WARMUP)
                except Exception as exc:  # a setting the model refuses: no estimate
                    logger.warning("probe of %s on %s failed: %s", cell.model, cell.combo, exc)
                    source = "probe failed"
                out.probes += 1
                out.probe_seconds += time.perf_counter() - t0
            elif not n:
                source = f"none (no {kind} here to probe)"
            step_ms[key] = (ms, source)
        ms, source = step_ms[key]
        m = models.setdefault(cell.model, ModelCost(cell.model))
        steps = int(cell.hparams["epochs"]) * num_batches(train, int(cell.hparams["batch_size"]))
        m.runs += 1
        m.steps.append(steps)
        label = source.split(" (")[0]
        m.sources[label] = m.sources.get(label, 0) + 1
        if math.isnan(ms):
            m.unknown += 1
            continue
        m.step_ms.append(ms)
        m.hours += steps * ms / 3.6e6
    out.models = list(models.values())
    return out


def _span(values: Sequence[float], fmt: str) -> str:
    if not values:
        return "?"
    lo, hi = min(values), max(values)
    return format(lo, fmt) if format(lo, fmt) == format(hi, fmt) else \
        f"{format(lo, fmt)}–{format(hi, fmt)}"


def _hours(h: float) -> str:
    return f"{h:.3g}" if h >= 0.001 else f"{h:.1e}"


def render(est: Estimate) -> str:
    """The estimate as a table with one line per model, the total and the rule used."""
    unit = "GPU-hours" if est.device == "cuda" else "CPU-hours"
    todo = sum(m.runs for m in est.models)
    head = (f"Cost estimate on {est.device} ({est.threads} torch thread(s) per run): {todo} "
            f"run(s) to train, {est.stored} already in {est.store}")
    if not todo:
        return head
    rows = [{"model": m.model, "runs": m.runs, "steps / run": _span(m.steps, "d"),
             "ms / step": _span(m.step_ms, ".1f"),
             unit: _hours(m.hours) + (f" (+{m.unknown} unknown)" if m.unknown else ""),
             "source": ", ".join(f"{s} ×{n}" if len(m.sources) > 1 else s
                                 for s, n in m.sources.items())} for m in est.models]
    unknown = sum(m.unknown for m in est.models)
    rows.append({"model": "total", "runs": todo, "steps / run": "", "ms / step": "",
                 unit: _hours(est.hours) + (f" (+{unknown} unknown)" if unknown else ""),
                 "source": ""})
    probes = (f"; {est.probes} probe(s) took {est.probe_seconds:.0f} s" if est.probes else "")
    rule = ("Training steps only (validation passes, start-up and queueing not counted). "
            "ms / step: median of earlier ok runs in the store with the same model, data set, "
            f"combination, device type and hyper-parameters but epochs / lr / weight decay "
            f"(store), else {PROBE_STEPS} timed steps after {PROBE_WARMUP} here (probe)"
            f"{probes}.")
    return "\n".join([head, "", tabulate(rows, headers="keys", tablefmt="github",
                                         disable_numparse=True), "", rule])
