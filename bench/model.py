"""The model contract every registered model follows.

``forward(batch)`` returns ``(logits [B, C], aux_loss)`` where ``aux_loss`` is a scalar that is
already weighted (zero when the model has none); the training loop minimises
``cross_entropy + aux_loss`` and never adds model-specific terms by name.
A model declares its defaults per data set (``default_hparams``), may adjust them per
profile (``profile_hparams``), may declare a batch order per epoch (``epoch_order``) and
may report settings it derived (``run_info``), which are stored with its results.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn

from bench.data.core import Batch, DataSpec
from bench.profiles import get_profile

#: The Flex-MoE paper's shared protocol (MODELS.md §0.4): Adam, lr 1e-4, batch 8, 50 epochs.
SHARED_TRAINING = {"lr": 1e-4, "batch_size": 8, "epochs": 50, "weight_decay": 0.0}


class BenchModel(nn.Module):
    """Base class: sensible defaults for the optional parts of the contract."""

    model_name: str = ""

    def __init__(self, spec: DataSpec) -> None:
        super().__init__()
        self.spec = spec

    @classmethod
    def default_hparams(cls, spec: DataSpec) -> dict[str, Any]:
        """Training and constructor settings for ``spec`` (override per model / data family)."""
        return dict(SHARED_TRAINING)

    @classmethod
    def profile_hparams(cls, profile: str, spec: DataSpec) -> dict[str, Any]:
        """Changes a profile makes to the defaults (``quick``: fewer epochs)."""
        epochs = get_profile(profile).epochs
        return {} if epochs is None else {"epochs": epochs}

    def epoch_order(self, epoch: int) -> str:
        """Order of training batches in ``epoch`` (see ``bench.data.core.ORDERS``)."""
        return "shuffle"

    def run_info(self) -> dict[str, Any]:
        """Settings derived inside the model that belong in the stored run record."""
        return {}

    def forward(self, batch: Batch) -> tuple[Tensor, Tensor]:  # pragma: no cover - abstract
        raise NotImplementedError
