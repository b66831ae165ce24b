"""The model contract every registered model follows.

``forward(batch)`` returns ``(logits [B, C], aux_loss)`` where ``aux_loss`` is a scalar that is
already weighted (zero when the model has none); the training loop minimises
``cross_entropy + aux_loss`` and never adds model-specific terms by name.
A model declares its defaults per data set (``default_hparams``; its constructor's defaults
and annotations give the rest, and the accepted types and choices), may declare ranges of
its own settings (``hparam_ranges``, see ``bench.hparams``), may declare a batch order per
epoch (``epoch_order``) and may report settings it derived (``run_info``), which are stored
with its results.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn

from bench.data.core import Batch, DataSpec

#: The Flex-MoE paper's shared protocol (docs/models §0.4): Adam, lr 1e-4, batch 8, 50 epochs.
SHARED_TRAINING = {"lr": 1e-4, "batch_size": 8, "epochs": 50, "weight_decay": 0.0}


class BenchModel(nn.Module):
    """Base class: sensible defaults for the optional parts of the contract."""

    model_name: str = ""
    #: Accepted ranges of constructor arguments beyond the naming conventions of
    #: ``bench.hparams.RANGES`` (name → ``bench.hparams.Range``).
    hparam_ranges: dict[str, Any] = {}

    def __init__(self, spec: DataSpec) -> None:
        super().__init__()
        self.spec = spec

    @classmethod
    def default_hparams(cls, spec: DataSpec) -> dict[str, Any]:
        """Training and constructor settings for ``spec`` (override per model / data family)."""
        return dict(SHARED_TRAINING)

    def epoch_order(self, epoch: int) -> str:
        """Order of training batches in ``epoch`` (see ``bench.data.core.ORDERS``)."""
        return "shuffle"

    def run_info(self) -> dict[str, Any]:
        """Settings derived inside the model that belong in the stored run record."""
        return {}

    def forward(self, batch: Batch) -> tuple[Tensor, Tensor]:  # pragma: no cover - abstract
        raise NotImplementedError
