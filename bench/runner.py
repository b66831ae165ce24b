"""The grid: models × data set × combinations × seeds × overrides, each cell run once.

A cell is keyed by a hash of its resolved configuration (model, data set and its options,
split seed, combination, seed and every hyper-parameter), so re-running a grid skips what
the store already holds, and a different setting is a different run. The device and the
code version are recorded but not hashed.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import os
import platform
import subprocess
import time
import traceback
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

import bench
from bench import registry
from bench.complexity import count_params, forward_flops, fvcore_macs
from bench.data.core import MultimodalData, combinations
from bench.profiles import get_profile
from bench.store import ResultStore, write_receipt
from bench.tables import combo_order
from bench.train import fit, seed_everything

logger = logging.getLogger(__name__)

KEY_VERSION = 1


@dataclass(frozen=True)
class Cell:
    """One run of the grid, fully resolved."""

    model: str
    dataset: str
    combo: str
    seed: int
    hparams: dict[str, Any]
    profile: str = "quick"
    split_seed: int = 0
    data_options: dict[str, Any] = field(default_factory=dict)
    plugins: tuple[str, ...] = ()

    @property
    def key(self) -> str:
        ident = {"v": KEY_VERSION, "model": self.model, "dataset": self.dataset,
                 "combo": self.combo, "seed": self.seed, "hparams": self.hparams,
                 "split_seed": self.split_seed, "data_options": self.data_options}
        return hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:16]


@lru_cache(maxsize=4)
def _load_cached(dataset: str, options_json: str, split_seed: int) -> MultimodalData:
    return registry.create_dataset(dataset, split_seed=split_seed, **json.loads(options_json))


def load_data(dataset: str, data_options: dict[str, Any] | None = None,
              split_seed: int = 0) -> MultimodalData:
    """Load (once per process) a data set with its options and split."""
    return _load_cached(dataset, json.dumps(data_options or {}, sort_keys=True), split_seed)


def default_combos(data: MultimodalData, profile: str) -> list[str]:
    """``paper``: every combination of two or more modalities, in the paper's table order;
    ``quick``: the first two modalities and the full set."""
    if profile == "quick":
        return [data.letters[:2], data.letters] if len(data.letters) > 2 else [data.letters]
    return combo_order([c for c in combinations(data.letters) if len(c) >= 2])


def build_grid(models: Sequence[str], dataset: str, combos: Sequence[str] | None = None,
               seeds: Sequence[int] | None = None, profile: str = "quick",
               overrides: dict[str, Any] | None = None, data_options: dict[str, Any] | None = None,
               split_seed: int = 0, plugins: Sequence[str] = ()) -> list[Cell]:
    """Resolve every cell; fails before any training on an unknown model, letter or setting."""
    prof = get_profile(profile)
    data = load_data(dataset, data_options, split_seed)
    combos = [data.check_letters(c) for c in (combos or default_combos(data, profile))]
    seeds = list(prof.seeds if seeds is None else seeds)
    cells = []
    for model in models:
        for combo in combos:
            spec = data.spec(combo)
            hp = registry.resolve_hparams(model, spec, overrides, profile)
            for seed in seeds:
                cells.append(Cell(model, dataset, combo, int(seed), hp, profile, split_seed,
                                  dict(data_options or {}), tuple(plugins)))
    return cells


@lru_cache(maxsize=1)
def code_version() -> str:
    """Package version plus the git commit when run from a checkout."""
    root = Path(__file__).resolve().parents[1]
    try:
        out = subprocess.run(["git", "-C", str(root), "describe", "--always", "--dirty"],
                             capture_output=True, text=True, timeout=5, check=True)
        return f"{bench.__version__}+{out.stdout.strip()}"
    except (OSError, subprocess.SubprocessError):
        return bench.__version__


def resolve_device(device: str = "auto") -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} requested but CUDA is not available; use --device cpu")
    return dev


def execute(cell: Cell, device: str | torch.device = "cpu") -> dict[str, Any]:
    """Train and evaluate one cell; return its store row (a failed run is a row too)."""
    for module in cell.plugins:
        registry.load_plugin(module)
    dev = resolve_device(str(device))
    row: dict[str, Any] = {
        "key": cell.key, "model": cell.model, "dataset": cell.dataset, "combo": cell.combo,
        "seed": cell.seed, "profile": cell.profile, "split_seed": cell.split_seed,
        "hparams": cell.hparams, "data_options": cell.data_options, "device": dev.type,
        "device_name": (torch.cuda.get_device_name(dev) if dev.type == "cuda"
                        else platform.processor() or platform.machine()),
        "threads": torch.get_num_threads(), "torch_version": torch.__version__,
        "python_version": platform.python_version(), "code_version": code_version(),
    }
    t0 = time.perf_counter()
    try:
        data = load_data(cell.dataset, cell.data_options, cell.split_seed).restrict(cell.combo)
        data = data.to(dev)
        seed_everything(cell.seed)
        train_hp, _ = registry.split_hparams(cell.hparams)
        model = registry.build_model(cell.model, data.spec, cell.hparams).to(dev)
        result = fit(model, data, seed=cell.seed, **train_hp)
        probe = data.batch(data.splits["val"][: train_hp.get("batch_size", 8)])
        flops = forward_flops(model, probe)
        macs, skipped = fvcore_macs(model, probe)
        row.update(
            status="ok", error=None, split_digest=data.split_digest, run_info=model.run_info(),
            val_acc=result.val["acc"], val_f1=result.val["f1"], val_auc=result.val["auc"],
            test_acc=result.test["acc"], test_f1=result.test["f1"], test_auc=result.test["auc"],
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


def _worker(cell: Cell, device: str, receipts: str, threads: int) -> dict[str, Any]:
    torch.set_num_threads(threads)
    row = execute(cell, device)
    write_receipt(Path(receipts), row)
    return row


def run_grid(cells: Sequence[Cell], store: ResultStore, device: str = "cpu", jobs: int = 1,
             progress: bool = True,
             on_row: Callable[[dict[str, Any]], None] | None = None) -> list[dict[str, Any]]:
    """Run every cell the store does not hold yet; write each row as it finishes.

    ``jobs > 1`` uses a local process pool; workers also leave a JSON receipt so that rows
    survive the coordinator. Returns the rows written by this call.
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
    rows: list[dict[str, Any]] = []
    bar = tqdm(total=len(todo), desc="runs", unit="run", disable=not progress or not todo)

    def finish(row: dict[str, Any]) -> None:
        store.write(row)
        rows.append(row)
        bar.set_postfix_str(f"{row['model']} {row['combo']} s{row['seed']} {row['status']}")
        bar.update()
        if on_row:
            on_row(row)

    try:
        if jobs <= 1:
            for cell in todo:
                finish(execute(cell, device))
        else:
            threads = max(1, (os.cpu_count() or 1) // jobs)
            with ProcessPoolExecutor(jobs, mp_context=get_context("spawn")) as pool:
                futures = [pool.submit(_worker, c, device, str(store.receipts_dir), threads)
                           for c in todo]
                for fut in as_completed(futures):
                    row = fut.result()
                    finish(row)
                    (store.receipts_dir / f"{row['key']}.json").unlink(missing_ok=True)
    finally:
        bar.close()
    return rows


def cell_records(cells: Sequence[Cell]) -> list[dict[str, Any]]:
    """Cells as plain dicts (for logs and dry runs)."""
    return [{**asdict(c), "key": c.key} for c in cells]
