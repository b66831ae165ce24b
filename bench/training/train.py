"""One run: seeded Adam training, per-epoch validation, the best-validation state tested."""

from __future__ import annotations

import logging
import math
import random
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from bench.data.core import Batch, RunData
from bench.errors import UserError
from bench.model import BenchModel, check_output
from bench.training.metrics import classification_metrics

logger = logging.getLogger(__name__)


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch for one run (called inside the run, never at import)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


@dataclass
class FitResult:
    """What :func:`fit` measured; metrics are fractions in [0, 1], NaN where undefined.

    ``notes`` says why a final metric is NaN or on fewer classes than the model has, keyed
    by split and metric (``"test_auc"``); it is empty when every metric is plainly defined.
    """

    val: dict[str, float]
    test: dict[str, float]
    best_epoch: int
    val_acc_curve: list[float]
    step_ms: list[float] = field(repr=False)
    epoch_s: list[float]
    #: How many steps each epoch took (``step_ms`` in epoch order).
    epoch_steps: list[int]
    warmup_steps: int
    notes: dict[str, str] = field(default_factory=dict)
    #: How many samples of each split the selected state predicts as each class.
    pred_counts: dict[str, list[int]] = field(default_factory=dict)

    @property
    def ms_per_iter(self) -> float:
        timed = self.step_ms[self.warmup_steps:] or self.step_ms
        return statistics.fmean(timed) if timed else math.nan

    @property
    def ms_per_iter_median(self) -> float:
        timed = self.step_ms[self.warmup_steps:] or self.step_ms
        return statistics.median(timed) if timed else math.nan

    @property
    def epoch_ms_median(self) -> list[float]:
        """Each epoch's median step time: a step that slows as the run goes on shows here,
        where the run's one median hides it."""
        out, start = [], 0
        for n in self.epoch_steps:
            out.append(statistics.median(self.step_ms[start:start + n]) if n else math.nan)
            start += n
        return out


def make_adam(model: torch.nn.Module, lr: float, weight_decay: float) -> torch.optim.Adam:
    """Adam, fused where this torch build supports it (an order of magnitude faster on CPU
    for the multi-million-parameter fusion layers; same update rule)."""
    params = [p for p in model.parameters() if p.requires_grad]
    try:
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay, fused=True)
    except (RuntimeError, TypeError):
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)


def class_weight(data: RunData) -> torch.Tensor | None:
    """Cross-entropy class weights of the data set (MIMIC: 0.25, 0.75), on its device."""
    if not data.spec.class_weights:
        return None
    return torch.tensor(data.spec.class_weights, dtype=torch.float32, device=data.device)


def train_step(model: BenchModel, batch: Batch, optimizer: torch.optim.Optimizer,
               weight: torch.Tensor | None = None,
               check_classes: int | None = None) -> torch.Tensor:
    """One optimisation step on ``cross_entropy + aux``; returns the (detached) loss.
    ``check_classes``: check the output against the contract with that many classes first
    (a run's first step)."""
    output = model(batch)
    if check_classes is not None:
        check_output(model, output, batch, check_classes)
    logits, aux = output
    loss = F.cross_entropy(logits, batch.y, weight=weight) + aux
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return loss.detach()


def eval_batch_size_for(device: torch.device) -> int:
    """Evaluation batch size: 1024 on accelerators, 64 on CPU.

    On CPU the token-level models' intermediates at 1024 samples run to ~100 MB per tensor
    (Flex-MoE: 64 tokens × 4 experts × 256 features per sample), where memory traffic and
    fresh page mappings cost more than extra batches: on synthetic-adni's validation split,
    batches of 64 are up to 2.1× faster for the attention and MoE models (Flex-MoE 0.55 →
    0.26 s), while the small vector models (Lee 2019, Venugopalan 2021) lose 20–30 ms.
    """
    return 64 if device.type == "cpu" else 1024


@torch.inference_mode()
def predict(model: BenchModel, data: RunData, split: str,
            batch_size: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Softmax probabilities and labels of ``split`` in eval-mode batches (default size:
    :func:`eval_batch_size_for` the data's device)."""
    model.eval()
    probs, ys = [], []
    for batch in data.batches(split, batch_size or eval_batch_size_for(data.device)):
        output = model(batch)
        if not probs:
            check_output(model, output, batch, data.spec.num_classes)
        logits, _ = output
        probs.append(torch.softmax(logits.float(), dim=1))
        ys.append(batch.y)
    return torch.cat(probs).cpu().numpy(), torch.cat(ys).cpu().numpy()


def fit(model: BenchModel, data: RunData, *, lr: float, batch_size: int, epochs: int,
        weight_decay: float = 0.0, seed: int = 0, eval_batch_size: int | None = None,
        warmup_steps: int = 10, on_epoch: Callable[[int], None] | None = None) -> FitResult:
    """Train ``model`` on ``data`` and test the state of the best validation accuracy.

    Selection follows the official code: the first epoch with the strictly highest
    validation accuracy wins. The best state is a state-dict copy of tensors.
    Step times exclude the first ``warmup_steps`` steps and synchronise CUDA.
    """
    if epochs < 1 or batch_size < 1:
        raise UserError(f"epochs and batch_size must be positive, got {epochs}, {batch_size}")
    device = data.device
    cuda = device.type == "cuda"
    optimizer = make_adam(model, lr, weight_decay)
    weight = class_weight(data)
    generator = torch.Generator().manual_seed(seed)
    best_acc, best_epoch, best_state = -1.0, -1, None
    curve, step_ms, epoch_s, epoch_steps = [], [], [], []
    for epoch in range(epochs):
        model.train()
        how = model.epoch_order(epoch)
        t_epoch = time.perf_counter()
        for step, batch in enumerate(data.batches("train", batch_size, how, generator, seed)):
            t0 = time.perf_counter()
            loss = train_step(model, batch, optimizer, weight,
                              None if step_ms else data.spec.num_classes)
            if cuda:
                torch.cuda.synchronize(device)
            step_ms.append((time.perf_counter() - t0) * 1e3)
            if not torch.isfinite(loss):
                raise FloatingPointError(f"training loss became {loss.item()} at epoch {epoch}, "
                                         f"step {step}; lower the learning rate or check inputs")
        epoch_s.append(time.perf_counter() - t_epoch)
        epoch_steps.append(len(step_ms) - sum(epoch_steps))
        probs, y = predict(model, data, "val", eval_batch_size)
        acc = float((probs.argmax(1) == y).mean())
        curve.append(acc)
        if acc > best_acc:
            best_acc, best_epoch = acc, epoch
            best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        logger.debug("epoch %d: val acc %.4f (best %.4f @ %d)", epoch, acc, best_acc, best_epoch)
        if on_epoch is not None:
            on_epoch(epoch)
    model.load_state_dict(best_state)
    notes: dict[str, str] = {}
    counts: dict[str, list[int]] = {}
    val = evaluate(model, data, "val", eval_batch_size, notes, counts)
    test = evaluate(model, data, "test", eval_batch_size, notes, counts)
    return FitResult(val=val, test=test, best_epoch=best_epoch, val_acc_curve=curve,
                     step_ms=step_ms, epoch_s=epoch_s, epoch_steps=epoch_steps,
                     warmup_steps=warmup_steps, notes=notes,
                     pred_counts=counts)


def evaluate(model: BenchModel, data: RunData, split: str, batch_size: int | None = None,
             notes: dict[str, str] | None = None,
             counts: dict[str, list[int]] | None = None) -> dict[str, float]:
    """Metrics of ``split``; their caveats go to ``notes`` as ``"<split>_<metric>"``, so a
    split holding only some classes yields NaN with a reason rather than a lost run; how
    often each class is predicted goes to ``counts[split]`` (a model that predicts one class
    for every sample is flagged in the tables)."""
    split_notes: dict[str, str] = {}
    probs, y = predict(model, data, split, batch_size)
    bad = int((~np.isfinite(probs).all(1)).sum()) if len(probs) else 0
    if bad:
        raise FloatingPointError(f"the selected state's outputs are not finite (NaN or inf) "
                                 f"for {bad} of {len(probs)} {split} samples: the model "
                                 "diverged; lower the learning rate or check the inputs")
    if counts is not None:
        pred = probs.argmax(1) if len(probs) else np.zeros(0, dtype=np.int64)
        counts[split] = np.bincount(pred, minlength=data.spec.num_classes).tolist()
    out = classification_metrics(probs, y, notes=split_notes,
                                 class_names=data.spec.class_names or None)
    if notes is not None:
        notes.update({f"{split}_{k}": v for k, v in split_notes.items()})
    return out
