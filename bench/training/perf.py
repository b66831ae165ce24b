"""Training-speed benchmark: ``run_bench.py perf``.

Trains a model for a fixed number of steps on one combination (default: Flex-MoE on
synthetic-adni IGCB at the paper's hyper-parameters) and reports samples/s, ms per step,
time per epoch, the training FLOPs of one step (forward + backward, counted by
``FlopCounterMode`` along the real routing) and the achieved fraction of this machine's
dense-matmul FLOP rate, measured in the same run. A step's time includes fetching its batch.

With ``official=True`` it also times the released code's design (``flexmoe.reference``) on the
same weights and hyper-parameters, alternating blocks of steps between the two, and reports the
speed-up. That design is the released model as its code builds it: FastMoE with fused experts
(one sort of the token–expert assignments by expert, one scatter, per expert layer one loop of
a matmul per non-empty expert over its contiguous rows — FastMoE's C++ GEMM loop, here as the
closest pure-PyTorch equivalent, a Python loop of plain matmuls — one gather and one ``bmm``
with the gate weights), the MoE called once per modality with a router loss per call,
boolean-mask token assembly, ``nn.Dropout``, plain ``torch.optim.Adam``, and the released
training loader: per-sample NumPy items and collate function, ``min(4, os.cpu_count())``
worker processes (the released 4, capped at the machine's cores) started anew every epoch,
pinned memory on CUDA, batches moved with ``.to(device, non_blocking=True)`` inside the step.
"""

from __future__ import annotations

import itertools
import statistics
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from bench import registry
from bench.data.core import RunData, num_batches
from bench.data.load import load_data
from bench.errors import UserError
from bench.identity.config import RunConfig
from bench.profiles import get_profile
from bench.threads import busy_processes, wait_policy
from bench.training.complexity import count_params  # also registers the grouped-matmul FLOP formula
from bench.training.device import resolve_device
from bench.training.train import class_weight, fit, make_adam, seed_everything, train_step

#: The profile whose settings ``perf`` times: the paper's hyper-parameters and full data.
PERF_PROFILE = "paper"


@dataclass
class PerfResult:
    model: str
    combo: str
    device: str
    threads: int
    batch_size: int
    params: int
    steps: int
    ms_per_step_median: float
    ms_per_step_mean: float
    samples_per_s: float
    steps_per_epoch: int
    s_per_epoch: float
    train_gflop_per_step: float
    achieved_gflops: float
    matmul_gflops: float
    fraction_of_matmul_peak: float
    wait_policy: str = "default"
    busy: int = 0
    #: CPU time the process got over the timed steps against its threads' wall time
    cpu_share: float = 1.0
    official_ms_per_step_median: float | None = None
    speedup_vs_official: float | None = None
    #: ``whole_run`` epochs: wall seconds per epoch of a whole run from fresh weights (each
    #: epoch's training and validation passes, the final evaluation), the suite's ``fit``
    #: and, with ``official``, the released loop (:mod:`bench.training.released`)
    whole_run_epochs: int = 0
    whole_run_s_per_epoch: float | None = None
    official_whole_run_s_per_epoch: float | None = None
    #: The suite's whole run: each epoch's median step (ms), as a run stores them
    whole_run_epoch_ms: list[float] = field(default_factory=list)

    @property
    def whole_run_speedup(self) -> float | None:
        if self.official_whole_run_s_per_epoch is None or not self.whole_run_s_per_epoch:
            return None
        return self.official_whole_run_s_per_epoch / self.whole_run_s_per_epoch


def matmul_rate(device: torch.device, size: int = 1024, reps: int = 20) -> float:
    """Dense float32 matmul GFLOP/s on ``device`` (best of ``reps`` after a warm-up)."""
    a = torch.randn(size, size, device=device)
    b = torch.randn(size, size, device=device)
    best = float("inf")
    for i in range(reps + 3):
        t0 = time.perf_counter()
        a @ b
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        if i >= 3:
            best = min(best, time.perf_counter() - t0)
    return 2 * size ** 3 / best / 1e9


def train_flops(model, batch, weight) -> int:
    """FLOPs of forward + backward of one training step (optimizer update excluded)."""
    model.train()
    with FlopCounterMode(display=False) as counter:
        logits, aux = model(batch)
        (F.cross_entropy(logits, batch.y, weight=weight) + aux).backward()
    model.zero_grad(set_to_none=True)
    return int(counter.get_total_flops())


def _time_steps(model, optimizer, batches: Iterator, weight, device: torch.device,
                steps: int) -> list[float]:
    """Seconds per training step (batch fetch included) for ``steps`` steps."""
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        batch = next(batches)
        train_step(model, batch, optimizer, weight)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - t0)
    return times


def _time_interleaved(runs: list[tuple], device: torch.device, steps: int, warmup: int,
                      block: int = 10) -> list[list[float]]:
    """Step times of several (model, optimizer, batches, weight) set-ups, timed in alternating
    blocks of ``block`` steps after ``warmup`` untimed steps each, so that a drift in machine
    load during the measurement affects every set-up alike."""
    for model, optimizer, batches, weight in runs:
        _time_steps(model, optimizer, batches, weight, device, warmup)
    times: list[list[float]] = [[] for _ in runs]
    while len(times[0]) < steps:
        n = min(block, steps - len(times[0]))
        for run_times, (model, optimizer, batches, weight) in zip(times, runs):
            run_times += _time_steps(model, optimizer, batches, weight, device, n)
    return times


def _forever(make: Any) -> Iterator:
    """Batches of ``make()`` (an iterable of one epoch), epoch after epoch."""
    return itertools.chain.from_iterable(make() for _ in itertools.count())


def benchmark(model_name: str = "flexmoe", dataset: str = "synthetic-adni", combo: str = "IGCB",
              steps: int = 200, warmup: int = 20, device: str = "auto",
              overrides: dict[str, Any] | None = None, data_options: dict[str, Any] | None = None,
              seed: int = 0, official: bool = False, busy: int = 0,
              whole_run: int = 0) -> PerfResult:
    """Time ``steps`` training steps after ``warmup`` untimed ones (see the module doc),
    with ``busy`` processes spinning beside them (a reproducible load); then, if
    ``whole_run`` is positive, whole runs of that many epochs (:func:`whole_runs`)."""
    from flexmoe.model import FlexMoE
    from flexmoe.reference import official_design, per_sample_loader, released_batches

    dev = resolve_device(device)
    profile = get_profile(PERF_PROFILE)
    data = load_data(dataset, profile.options_for(dataset, data_options)).restrict(combo).to(dev)
    hp = registry.resolve_hparams(model_name, data.spec, overrides, profile.name)
    seed_everything(seed)
    model = registry.build_model(model_name, data.spec, hp).to(dev)
    if official and not isinstance(model, FlexMoE):
        raise UserError(f"the official-design comparison exists for Flex-MoE models only, "
                        f"not {model_name!r}")
    reference = official_design(model) if official else None
    batch_size = hp["batch_size"]
    weight = class_weight(data)
    generator = torch.Generator().manual_seed(seed)
    stream = _forever(lambda: data.batches("train", batch_size, "shuffle", generator))
    optimizer = make_adam(model, hp["lr"], hp.get("weight_decay", 0.0))
    runs = [(model, optimizer, stream, weight)]
    ref_stream = None
    if reference is not None:
        # the released training loader (worker processes, pinned memory on CUDA) and its
        # per-step move of the batch to the device
        ref_stream = released_batches(per_sample_loader(data, batch_size, seed, dev), dev)
        # the released code's optimiser: plain torch.optim.Adam (not fused)
        ref_optimizer = torch.optim.Adam(reference.parameters(), lr=hp["lr"],
                                         weight_decay=hp.get("weight_decay", 0.0))
        runs.append((reference, ref_optimizer, ref_stream, weight))
    try:
        with busy_processes(busy):
            cpu0, wall0 = time.process_time(), time.perf_counter()
            times, *ref_times = _time_interleaved(runs, dev, steps, warmup)
            share = ((time.process_time() - cpu0)
                     / ((time.perf_counter() - wall0) * torch.get_num_threads()))
    finally:
        if ref_stream is not None:
            ref_stream.close()  # the loader's worker processes exit
    official_median = statistics.median(ref_times[0]) * 1e3 if ref_times else None
    flops = train_flops(model, next(stream), weight)
    peak = matmul_rate(dev)
    mean = statistics.fmean(times)
    median = statistics.median(times) * 1e3
    steps_per_epoch = num_batches(int(data.splits["train"].numel()), batch_size)
    achieved = flops / mean / 1e9
    suite_s, official_s, epoch_ms = (whole_runs(model_name, data, hp, whole_run, seed, official)
                                     if whole_run > 0 else (None, None, []))
    return PerfResult(
        model=model_name, combo=combo, device=str(dev), threads=torch.get_num_threads(),
        batch_size=batch_size, params=count_params(model), steps=steps,
        ms_per_step_median=median, ms_per_step_mean=mean * 1e3,
        samples_per_s=batch_size / mean, steps_per_epoch=steps_per_epoch,
        s_per_epoch=steps_per_epoch * mean, train_gflop_per_step=flops / 1e9,
        achieved_gflops=achieved, matmul_gflops=peak, fraction_of_matmul_peak=achieved / peak,
        wait_policy=wait_policy(), busy=busy, cpu_share=share,
        official_ms_per_step_median=official_median,
        speedup_vs_official=None if official_median is None else official_median / median,
        whole_run_epochs=max(whole_run, 0), whole_run_s_per_epoch=suite_s,
        official_whole_run_s_per_epoch=official_s, whole_run_epoch_ms=epoch_ms)


def whole_runs(model_name: str, data: RunData, hparams: dict[str, Any], epochs: int,
               seed: int = 0,
               official: bool = False) -> tuple[float, float | None, list[float]]:
    """Wall seconds per epoch of a whole run of ``epochs`` epochs from fresh weights: the
    suite's :func:`~bench.training.train.fit` and then, with ``official``, the released loop
    (:func:`~bench.training.released.released_fit`) from the same initial weights; and the
    suite run's median step per epoch. A step cannot show what a run pays around its steps
    (the validation pass after every epoch, the released loader's worker start-ups, the
    best-state copies), nor a step that slows as the run goes on; this does."""
    from bench.training.released import released_fit
    from flexmoe.reference import official_design

    train_hp, _ = registry.split_hparams({**hparams, "epochs": epochs})
    seed_everything(seed)
    model = registry.build_model(model_name, data.spec, hparams).to(data.device)
    reference = official_design(model) if official else None
    start = time.perf_counter()
    result = fit(model, data, seed=seed, **train_hp)
    suite = (time.perf_counter() - start) / epochs
    if reference is None:
        return suite, None, result.epoch_ms_median
    seed_everything(seed)
    released = released_fit(reference, data, lr=train_hp["lr"],
                            batch_size=train_hp["batch_size"], epochs=epochs,
                            weight_decay=train_hp.get("weight_decay", 0.0), seed=seed)
    return suite, released.total_s / epochs, result.epoch_ms_median


def probe_step_ms(cell: RunConfig, device: str = "auto", steps: int = 3,
                  warmup: int = 2) -> float:
    """Median milliseconds of ``steps`` training steps (batch fetch included) of ``cell``'s
    model on its data and combination, after ``warmup`` untimed ones: the cost estimate's
    measure when the store holds no timing of such a run (``run --dry-run``)."""
    dev = resolve_device(device)
    data = load_data(cell.dataset, cell.data_options, cell.split_seed).restrict(cell.combo)
    data = data.to(dev)
    train_hp, _ = registry.split_hparams(cell.hparams)
    seed_everything(cell.seed)
    model = registry.build_model(cell.model, data.spec, cell.hparams).to(dev)
    generator = torch.Generator().manual_seed(cell.seed)
    stream = _forever(lambda: data.batches("train", train_hp["batch_size"], "shuffle",
                                           generator))
    optimizer = make_adam(model, train_hp["lr"], train_hp.get("weight_decay", 0.0))
    times = _time_steps(model, optimizer, stream, class_weight(data), dev, warmup + steps)
    return statistics.median(times[warmup:]) * 1e3
