"""Model cost: trainable parameters and forward FLOPs that follow the real routing.

Two conventions side by side: ``forward_flops`` counts FLOPs = 2 × multiply-adds with torch's
``FlopCounterMode``; ``fvcore_macs`` counts multiply-adds with fvcore's ``FlopCountAnalysis``
(which calls them "flops"; the convention of the Flex-MoE paper's GFLOPs column).
"""

from __future__ import annotations

import logging
import math
import warnings
from collections import Counter
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.flop_counter import (
    FlopCounterMode,
    flop_registry,
    register_flop_formula,
    sdpa_backward_flop_count,
    sdpa_flop_count,
)

from bench.data.core import Batch


def _grouped_mm_flops(a_shape, b_shape, *args, out_shape=None, **kwargs) -> int:
    """FLOPs of ``aten._grouped_mm`` (the MoE experts' matmuls), which torch does not count.

    Every layout multiplies each row block once: 2·M·K·N summed over the groups.
    """
    if len(a_shape) == 2 and len(b_shape) == 3:  # [M, K] x [G, K, N] -> [M, N]
        return 2 * a_shape[0] * a_shape[1] * b_shape[2]
    if len(a_shape) == 3 and len(b_shape) == 2:  # [G, M, K] x [K, N_total] -> [M, N_total]
        return 2 * a_shape[1] * a_shape[2] * b_shape[1]
    if len(a_shape) == 2 and len(b_shape) == 2:  # [M, K_total] x [K_total, N] -> [G, M, N]
        return 2 * a_shape[0] * a_shape[1] * b_shape[1]
    return 2 * a_shape[0] * a_shape[1] * a_shape[2] * b_shape[2]  # batched [G, M, K] x [G, K, N]


def _cpu_sdpa_flops(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    """CPU attention kernel, which torch's counter does not charge (its GPU kernels it does)."""
    return sdpa_flop_count(query_shape, key_shape, value_shape)


def _cpu_sdpa_backward_flops(grad_out_shape, query_shape, key_shape, value_shape, *args,
                             out_shape=None, **kwargs) -> int:
    return sdpa_backward_flop_count(grad_out_shape, query_shape, key_shape, value_shape)


for _op, _formula in (("_grouped_mm", _grouped_mm_flops),
                      ("_scaled_dot_product_flash_attention_for_cpu", _cpu_sdpa_flops),
                      ("_scaled_dot_product_flash_attention_for_cpu_backward",
                       _cpu_sdpa_backward_flops)):
    if hasattr(torch.ops.aten, _op) and getattr(torch.ops.aten, _op) not in flop_registry:
        register_flop_formula(getattr(torch.ops.aten, _op), get_raw=False)(_formula)


def count_params(model: nn.Module) -> int:
    """Every parameter the run optimises (encoders, fusion, bank)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


class _PlainInputs(nn.Module):
    """``model`` behind plain tensor arguments, the form ``torch.jit.trace`` (fvcore) needs."""

    def __init__(self, model: nn.Module, letters: str) -> None:
        super().__init__()
        self.model, self.letters = model, letters

    def forward(self, observed: Tensor, combo: Tensor, y: Tensor, *xs: Tensor) -> Tensor:
        return self.model(Batch(dict(zip(self.letters, xs)), observed, combo, y))[0]


def _shape(value: Any) -> list[int]:
    return value.type().sizes()


def _grouped_mm_macs(inputs: list[Any], outputs: list[Any]) -> Counter:
    """Multiply-adds of ``aten::_grouped_mm``: every output entry is a dot product of length K."""
    a, b = _shape(inputs[0]), _shape(inputs[1])
    k = a[-1] if len(a) == 3 or len(b) == 3 else a[1]
    return Counter({"grouped_mm": math.prod(_shape(outputs[0])) * k})


def _sdpa_macs(inputs: list[Any], outputs: list[Any]) -> Counter:
    """Multiply-adds of attention: q·kᵀ and weights·v, [.., Lq, d] × [.., Lk, d]."""
    q, k, v = (_shape(x) for x in inputs[:3])
    return Counter({"attention": math.prod(q[:-1]) * k[-2] * (q[-1] + v[-1])})


def fvcore_macs(model: nn.Module, batch: Batch) -> tuple[int | None, list[str]]:
    """Multiply-adds of one eval-mode forward on ``batch`` by fvcore, and the operators it
    skipped (element-wise ones by its convention). ``(None, [reason])`` if tracing fails."""
    was_training = model.training
    model.eval()
    inputs = (batch.observed, batch.combo, batch.y, *batch.x.values())
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            from fvcore.nn import FlopCountAnalysis

            analysis = FlopCountAnalysis(_PlainInputs(model, "".join(batch.x)), inputs)
            analysis.set_op_handle("aten::_grouped_mm", _grouped_mm_macs,
                                   "aten::scaled_dot_product_attention", _sdpa_macs)
            analysis.unsupported_ops_warnings(False).uncalled_modules_warnings(False)
            total = int(analysis.total())
            skipped = sorted(analysis.unsupported_ops())
    except Exception as exc:  # a model fvcore cannot trace still gets its other figures
        logging.getLogger(__name__).warning("fvcore could not count %s: %s",
                                            type(model).__name__, exc)
        return None, [f"not traceable: {type(exc).__name__}: {exc}"[:300]]
    finally:
        model.train(was_training)
    return total, skipped


def forward_flops(model: nn.Module, batch: Batch) -> int:
    """FLOPs (2 × multiply-adds) of one forward pass in eval mode on ``batch``.

    ``FlopCounterMode`` counts the operators that actually run, so a sparse MoE is charged
    for the experts its router picked, not for all of them.
    """
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode(), FlopCounterMode(display=False) as counter:
            model(batch)
    finally:
        model.train(was_training)
    return int(counter.get_total_flops())
