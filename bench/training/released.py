"""The released Flex-MoE training loop over a whole run: the baseline of ``perf --whole-run``.

A step is not all that a run pays. The released ``main.py`` (``train_and_evaluate`` and
``run_epoch``) does, every epoch: a training pass through a per-sample loader (its unshuffled
``train_loader``, in modality-sorted order, during the warm-up epochs; ``train_loader_shuffle``
after), keeping both losses of every step as Python floats; a validation pass
through ``val_loader`` (per-sample items, the training batch size, worker processes started
anew) under ``torch.no_grad``, each batch's labels and softmax probabilities moved to NumPy and
extended into lists row by row; accuracy, macro-F1 and one-vs-rest AUC by
scikit-learn; and a ``deepcopy`` of the model whenever the validation accuracy rises. After
the last epoch, one test pass with the best copy. :func:`released_fit` runs that loop on the
model :func:`~flexmoe.reference.official_design` lays out, so that it can be timed beside the
suite's :func:`~bench.training.train.fit` from the same weights.
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from bench.data.core import RunData
from bench.training.metrics import classification_metrics
from bench.training.train import class_weight
from flexmoe.model import FlexMoE
from flexmoe.reference import device_batch, per_sample_loader


@dataclass
class ReleasedRun:
    """Wall seconds of a released-loop run."""

    #: Each epoch: its training pass, validation pass, metrics and best-state copy.
    epoch_s: list[float]
    #: The test pass after the last epoch.
    test_s: float
    best_epoch: int
    val_acc_curve: list[float]
    #: Each epoch's mean task and router losses, as the released loop prints them.
    task_loss: list[float]
    gate_loss: list[float]

    @property
    def total_s(self) -> float:
        return sum(self.epoch_s) + self.test_s


def _train_pass(model: FlexMoE, loader: DataLoader, device: torch.device,
                optimizer: torch.optim.Optimizer,
                weight: torch.Tensor | None) -> tuple[float, float]:
    """The released ``run_epoch(is_training=True)``: a step per batch, both losses kept as
    floats; their means."""
    model.train()
    task_losses, gate_losses = [], []
    for item in loader:
        batch = device_batch(item, device)
        logits, gate_loss = model(batch)
        task_loss = F.cross_entropy(logits, batch.y, weight=weight)
        optimizer.zero_grad()
        (task_loss + gate_loss).backward()
        optimizer.step()
        task_losses.append(task_loss.item())
        gate_losses.append(gate_loss.item())
    return float(np.mean(task_losses)), float(np.mean(gate_losses))


@torch.no_grad()
def _eval_pass(model: FlexMoE, loader: DataLoader,
               device: torch.device) -> tuple[np.ndarray, np.ndarray]:
    """The released ``run_epoch`` in evaluation: probabilities and labels of every row."""
    model.eval()
    labels, probs = [], []
    for item in loader:
        batch = device_batch(item, device)
        logits, _ = model(batch)
        labels.extend(batch.y.cpu().numpy())
        probs.extend(F.softmax(logits, dim=1).detach().cpu().numpy())
    return np.array(probs), np.array(labels)


def released_fit(model: FlexMoE, data: RunData, *, lr: float, batch_size: int, epochs: int,
                 weight_decay: float = 0.0, seed: int = 0,
                 num_workers: int | None = None) -> ReleasedRun:
    """Train ``model`` (an :func:`~flexmoe.reference.official_design` copy) as the released
    ``train_and_evaluate`` does, for ``epochs`` epochs, and time it; plain
    ``torch.optim.Adam``, the warm-up order of ``model.epoch_order``, loaders with
    ``num_workers`` worker processes (default: the released 4, capped at the cores)."""
    device = data.device
    loaders = {how: per_sample_loader(data, batch_size, seed, device, num_workers,
                                      rows=data.order("train", how, fixed_seed=seed),
                                      shuffle=False)
               for how in {model.epoch_order(e) for e in range(epochs)} - {"shuffle"}}
    loaders["shuffle"] = per_sample_loader(data, batch_size, seed, device, num_workers)
    val, test = (per_sample_loader(data, batch_size, seed, device, num_workers, split=split,
                                   shuffle=False) for split in ("val", "test"))
    optimizer = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay)
    weight = class_weight(data)
    best_acc, best_epoch, best, curve, epoch_s, losses = 0.0, -1, model, [], [], []
    for epoch in range(epochs):
        start = time.perf_counter()
        losses.append(_train_pass(model, loaders[model.epoch_order(epoch)], device, optimizer,
                                  weight))
        acc = classification_metrics(*_eval_pass(model, val, device))["acc"]
        curve.append(acc)
        if acc > best_acc:
            best_acc, best_epoch, best = acc, epoch, copy.deepcopy(model)
        epoch_s.append(time.perf_counter() - start)
    start = time.perf_counter()
    classification_metrics(*_eval_pass(best, test, device))
    return ReleasedRun(epoch_s=epoch_s, test_s=time.perf_counter() - start,
                       best_epoch=best_epoch, val_acc_curve=curve,
                       task_loss=[t for t, _ in losses], gate_loss=[g for _, g in losses])
