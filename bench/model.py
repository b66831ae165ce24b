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
from bench.errors import UserError

#: The Flex-MoE paper's shared protocol (docs/models §0.4): Adam, lr 1e-4, batch 8, 50 epochs.
SHARED_TRAINING = {"lr": 1e-4, "batch_size": 8, "epochs": 50, "weight_decay": 0.0}


class BenchModel(nn.Module):
    """Base class: sensible defaults for the optional parts of the contract."""

    model_name: str = ""
    #: Accepted ranges of constructor arguments beyond the naming conventions of
    #: ``bench.hparams.RANGES`` (name → ``bench.hparams.Range``).
    hparam_ranges: dict[str, Any] = {}
    #: Settings added after runs of the model were stored → the value that reproduces those
    #: runs (the constructor's default). At that value a setting is left out of a run's
    #: configuration, hence its key, so a new option never makes stored runs stale.
    hparams_added: dict[str, Any] = {}

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


class ContractError(UserError):
    """A model's output breaks the contract above; the message says what it returned."""


def check_output(model: nn.Module, output: Any, batch: Batch, num_classes: int) -> None:
    """Check one forward's ``output`` against the contract, so that a plug-in returning the
    wrong thing fails at its first batch with the contract spelled out, not with a torch
    error deep in the loss (or, worse, is scored over a class that does not exist)."""
    name = getattr(model, "model_name", "") or type(model).__name__
    b = len(batch.y)
    expected = (f"forward(batch) must return (logits, aux_loss): logits a float tensor "
                f"[B, C] = [{b}, {num_classes}] (batch size, classes of the data set) and "
                "aux_loss a scalar tensor (zero when the model has none)")
    if not isinstance(output, tuple) or len(output) != 2:
        got = (f"a tuple of {len(output)}" if isinstance(output, tuple)
               else type(output).__name__)
        raise ContractError(f"model {name!r}: {expected}; it returned {got}")
    logits, aux = output
    if not isinstance(logits, Tensor) or not logits.is_floating_point() \
            or tuple(logits.shape) != (b, num_classes):
        got = (f"shape {tuple(logits.shape)} ({logits.dtype})" if isinstance(logits, Tensor)
               else type(logits).__name__)
        raise ContractError(f"model {name!r}: {expected}; its logits have {got}")
    if not isinstance(aux, Tensor) or aux.numel() != 1:
        got = f"shape {tuple(aux.shape)}" if isinstance(aux, Tensor) else type(aux).__name__
        raise ContractError(f"model {name!r}: {expected}; its aux_loss is {got}")
