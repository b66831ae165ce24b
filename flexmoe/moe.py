"""Sparse mixture-of-experts layer in plain PyTorch.

Reproduces the behaviour of FastMoE's ``FMoETransformerMLP`` driven by Flex-MoE's noisy top-k
gate (``AddtionalNoisyGate``) without FastMoE's CUDA kernels, so that the same layer runs on CPU
and GPU and can be reused by the LIMoE and FuseMoE baselines (dot or Laplace logits, optional
noise, sum or log-mixture combination). The layer returns the routing state instead of storing
a loss, so every caller computes the routing loss it needs (see ``flexmoe.router``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["Experts", "GateOutput", "NoisyTopKGate", "SparseMoE", "balance_loss", "cv_squared",
           "dispatch", "prob_in_top_k"]

# FuseMoE replaces exact zeros of the mixture by numpy's float eps before taking the log.
_LOGMIX_EPS = torch.finfo(torch.float64).eps


def cv_squared(v: Tensor) -> Tensor:
    """Squared coefficient of variation over the last axis, the balance penalty of Shazeer et al.

    Unbiased variance (torch's default, as FastMoE) over mean² + 1e-10; fewer than two entries
    have no spread and give 0 (FastMoE special-cases length 1). A [G, E] input gives G values.
    """
    if not v.is_floating_point():
        v = v.float()
    if v.shape[-1] < 2:
        return v.new_zeros(v.shape[:-1])
    return v.var(dim=-1) / (v.mean(dim=-1) ** 2 + 1e-10)


def prob_in_top_k(
    clean: Tensor, noisy: Tensor, sigma: Tensor, top_values: Tensor, k: int
) -> Tensor:
    """Per-token probability that each expert stays in the top k under fresh noise.

    ``top_values`` are the k+1 largest noisy logits per token (descending). An expert already
    inside the top k must beat the (k+1)-th value; one outside must beat the k-th. This is the
    smooth load estimate that lets the load term of the balance loss carry gradients.
    """
    thr_in = top_values[:, k : k + 1]
    thr_out = top_values[:, k - 1 : k]
    prob_if_in = torch.special.ndtr((clean - thr_in) / sigma)
    prob_if_out = torch.special.ndtr((clean - thr_out) / sigma)
    return torch.where(noisy > thr_in, prob_if_in, prob_if_out)


class GateOutput(NamedTuple):
    """Routing state of one gate call over N tokens and E experts."""

    clean: Tensor  # [N, E] logits without noise
    noisy: Tensor  # [N, E] logits used for routing (equal to ``clean`` without noise)
    sigma: Tensor | None  # [N, E] noise scale, None when no noise was added
    index: Tensor  # [N, k] chosen experts, best first
    gates: Tensor  # [N, k] weights of the chosen experts
    load: Tensor  # [N, E] smooth (Φ) or hard 0/1 per-token load

    @property
    def importance(self) -> Tensor:
        """Dense [N, E] gate matrix (zeros off the top k), summable over any token subset."""
        return torch.zeros_like(self.clean).scatter(1, self.index, self.gates)


class NoisyTopKGate(nn.Module):
    """Noisy top-k gate of FastMoE's ``NoisyGate`` as used by Flex-MoE.

    ``logits="dot"`` gives x·W (Flex-MoE, LIMoE); ``"laplace"`` gives −‖x − w_e‖₂ (FuseMoE).
    ``gate_softmax="topk"`` renormalises the softmax over the k chosen logits (FastMoE, FuseMoE);
    ``"all"`` takes the softmax over all E logits at the chosen experts (V-MoE/LIMoE style, so
    top-1 routing still passes task gradients to the router). Without noise no ``w_noise`` exists.
    """

    def __init__(
        self,
        hidden: int,
        num_experts: int,
        top_k: int,
        noisy: bool = True,
        logits: Literal["dot", "laplace"] = "dot",
        init: Literal["kaiming", "zeros"] = "kaiming",
        gate_softmax: Literal["topk", "all"] = "topk",
        noise_epsilon: float = 0.01,
    ) -> None:
        super().__init__()
        if not 1 <= top_k <= num_experts:
            raise ValueError(f"top_k must be in [1, {num_experts}], got {top_k}")
        if logits not in ("dot", "laplace"):
            raise ValueError(f"logits must be 'dot' or 'laplace', got {logits!r}")
        if init not in ("kaiming", "zeros"):
            raise ValueError(f"init must be 'kaiming' or 'zeros', got {init!r}")
        if gate_softmax not in ("topk", "all"):
            raise ValueError(f"gate_softmax must be 'topk' or 'all', got {gate_softmax!r}")
        self.num_experts, self.top_k = num_experts, top_k
        self.noisy, self.logits, self.init, self.gate_softmax = noisy, logits, init, gate_softmax
        self.noise_epsilon = noise_epsilon
        self.w_gate = nn.Parameter(torch.empty(hidden, num_experts))
        self.w_noise = nn.Parameter(torch.empty(hidden, num_experts)) if noisy else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """kaiming_uniform_(a=√5) on (H, E) (fan_in E, bound 1/√E), or zeros as FuseMoE."""
        for w in (self.w_gate, self.w_noise):
            if w is None:
                continue
            if self.init == "zeros":
                nn.init.zeros_(w)
            else:
                nn.init.kaiming_uniform_(w, a=math.sqrt(5))

    def forward(self, x: Tensor) -> GateOutput:
        if self.logits == "dot":
            clean = x @ self.w_gate
        else:
            clean = -torch.cdist(x, self.w_gate.t(), compute_mode="donot_use_mm_for_euclid_dist")
        sigma = None
        noisy = clean
        if self.noisy and self.training:
            sigma = F.softplus(x @ self.w_noise) + self.noise_epsilon
            noisy = clean + torch.randn_like(clean) * sigma
        k, e = self.top_k, self.num_experts
        top_values, top_index = noisy.topk(min(k + 1, e), dim=1)
        index = top_index[:, :k]
        if self.gate_softmax == "topk":
            gates = torch.softmax(top_values[:, :k], dim=1)
        else:
            gates = torch.softmax(noisy, dim=1).gather(1, index)
        if sigma is not None and k < e:
            load = prob_in_top_k(clean, noisy, sigma, top_values, k)
        else:
            load = torch.zeros_like(clean).scatter(1, index, (gates > 0).to(clean.dtype))
        return GateOutput(clean, noisy, sigma, index, gates, load)


class Experts(nn.Module):
    """E two-layer MLPs stored as stacked 3-D tensors so they run as batched or grouped matmuls.

    Weights are drawn like FastMoE's ``FMoELinear``: kaiming_uniform_(a=√5) on the 3-D tensor
    (E, out, in), whose fan_in is out·in (bound 1/√(out·in)); they are drawn in that layout, so a
    seed gives FastMoE's values, and stored transposed as (E, in, out). Biases start at zero.
    """

    def __init__(
        self,
        num_experts: int,
        d_in: int,
        d_hidden: int,
        d_out: int,
        activation: Literal["gelu", "relu"] = "gelu",
    ) -> None:
        super().__init__()
        if activation not in ("gelu", "relu"):
            raise ValueError(f"activation must be 'gelu' or 'relu', got {activation!r}")
        self.num_experts, self.activation = num_experts, activation
        self.w1 = nn.Parameter(torch.empty(num_experts, d_in, d_hidden))
        self.b1 = nn.Parameter(torch.zeros(num_experts, d_hidden))
        self.w2 = nn.Parameter(torch.empty(num_experts, d_hidden, d_out))
        self.b2 = nn.Parameter(torch.zeros(num_experts, d_out))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        with torch.no_grad():
            for w in (self.w1, self.w2):
                fastmoe_layout = w.new_empty(w.shape[0], w.shape[2], w.shape[1])
                nn.init.kaiming_uniform_(fastmoe_layout, a=math.sqrt(5))
                w.copy_(fastmoe_layout.transpose(1, 2))
            self.b1.zero_()
            self.b2.zero_()

    def _act(self, h: Tensor) -> Tensor:
        return F.gelu(h) if self.activation == "gelu" else F.relu(h)

    def forward(self, x: Tensor) -> Tensor:
        """[E, C, d_in] → [E, C, d_out]: expert e applied to the C rows of slice e."""
        h = self._act(torch.baddbmm(self.b1.unsqueeze(1), x, self.w1))
        return torch.baddbmm(self.b2.unsqueeze(1), h, self.w2)

    def forward_grouped(self, x: Tensor, expert: Tensor, counts: Tensor) -> Tensor:
        """[A, d_in] rows sorted by expert (``expert`` [A], ``counts`` [E]) → [A, d_out]."""
        offsets = counts.cumsum(0).to(torch.int32)
        h = self._act(F.grouped_mm(x, self.w1, offs=offsets) + self.b1.index_select(0, expert))
        return F.grouped_mm(h, self.w2, offs=offsets) + self.b2.index_select(0, expert)


def _grouped_supported(x: Tensor, experts: Experts) -> bool:
    """Whether ``F.grouped_mm`` can run this call: CPU, float32/16, 16-byte-aligned row strides."""
    if not hasattr(F, "grouped_mm") or x.device.type != "cpu":
        return False
    if x.dtype not in (torch.float32, torch.float16, torch.bfloat16) or experts.w1.dtype != x.dtype:
        return False
    align = 16 // x.element_size()
    return all(d % align == 0 for d in (*experts.w1.shape[1:], experts.w2.shape[2]))


def dispatch(
    x: Tensor,
    index: Tensor,
    gates: Tensor,
    experts: Experts,
    combine: Literal["sum", "logmix"] = "sum",
    scheme: Literal["auto", "grouped", "padded"] = "auto",
) -> Tensor:
    """Σ_j gates[n, j] · expert_{index[n, j]}(x[n]) for every token, without a loop over experts.

    The N·k token–expert assignments are sorted by expert, then either
    ``"grouped"``: run as one jagged ``F.grouped_mm`` per layer (exact work, no padding), or
    ``"padded"``: packed into an [E, capacity, d_in] buffer (capacity = the largest number of
    assignments of any expert in this call; padding rows are zeros never read back) and run as
    two ``baddbmm``. ``"auto"`` takes ``grouped`` where ``_grouped_supported`` (CPU, float32/16,
    dims multiple of 16 bytes) and ``padded`` elsewhere (CUDA, float64). Measured on CPU (one
    thread, N=128, H=128, E=16, k=4, forward+backward): both cost the same under balanced
    routing, padded ~2.2× more when one expert takes every token (capacity = N, the kind of skew
    Flex-MoE's combination cross-entropy creates); a per-expert Python loop ~3× more.

    ``combine="logmix"`` is FuseMoE's mixture in probability space: expert outputs pass a
    log-softmax over features and y = log Σ_j g_j·exp(expert_j(x)), exact zeros replaced by eps.
    """
    if combine not in ("sum", "logmix"):
        raise ValueError(f"combine must be 'sum' or 'logmix', got {combine!r}")
    if scheme == "auto":
        scheme = "grouped" if _grouped_supported(x, experts) else "padded"
    elif scheme not in ("grouped", "padded"):
        raise ValueError(f"scheme must be 'auto', 'grouped' or 'padded', got {scheme!r}")
    n, k = index.shape
    e = experts.num_experts
    flat = index.reshape(-1)
    order = torch.argsort(flat, stable=True)
    expert = flat.index_select(0, order)
    counts = torch.bincount(flat, minlength=e)
    token = order // k
    rows = x.index_select(0, token)
    if scheme == "grouped":
        out = experts.forward_grouped(rows, expert, counts)
    else:
        capacity = int(counts.max()) if flat.numel() else 0
        starts = (counts.cumsum(0) - counts).index_select(0, expert)
        slot = expert * capacity + torch.arange(flat.numel(), device=flat.device) - starts
        buffer = x.new_zeros(e * capacity, x.shape[1]).index_copy(0, slot, rows)
        out = experts(buffer.view(e, capacity, x.shape[1])).flatten(0, 1).index_select(0, slot)
    weight = gates.reshape(-1, 1).index_select(0, order)
    if combine == "logmix":
        out = torch.softmax(out, dim=-1)
    # each assignment adds its weighted output to its token's row (no inverse permutation)
    y = out.new_zeros(n, out.shape[-1]).index_add(0, token, weight * out)
    if combine == "sum":
        return y
    return torch.where(y == 0, _LOGMIX_EPS, y).log()


def balance_loss(
    gate_output: GateOutput,
    mask: Tensor | None = None,
    experts: slice | Sequence[int] | Tensor | None = None,
) -> Tensor:
    """cv²(Σ importance) + cv²(Σ load) over a token subset (bool ``mask``) and an expert subset.

    Summing an empty token subset gives zero vectors, whose cv² is 0, as in Flex-MoE.
    """
    importance, load = gate_output.importance, gate_output.load
    if mask is not None:
        importance, load = importance[mask], load[mask]
    importance, load = importance.sum(0), load.sum(0)
    if experts is not None:
        importance, load = importance[experts], load[experts]
    return cv_squared(importance) + cv_squared(load)


class SparseMoE(nn.Module):
    """Noisy top-k gate + E MLP experts; ``forward`` returns (output, routing state).

    Defaults are Flex-MoE's (GELU experts of width 2·hidden back to hidden, dot logits with
    noise, renormalised top-k gates, weighted-sum combination). The caller turns the returned
    ``GateOutput`` into a routing loss (``balance_loss`` or ``flexmoe.router``).
    """

    balance_loss = staticmethod(balance_loss)

    def __init__(
        self,
        hidden: int,
        num_experts: int,
        top_k: int,
        d_hidden: int | None = None,
        d_out: int | None = None,
        noisy: bool = True,
        logits: Literal["dot", "laplace"] = "dot",
        gate_init: Literal["kaiming", "zeros"] = "kaiming",
        combine: Literal["sum", "logmix"] = "sum",
        activation: Literal["gelu", "relu"] = "gelu",
        gate_softmax: Literal["topk", "all"] = "topk",
    ) -> None:
        super().__init__()
        if combine not in ("sum", "logmix"):
            raise ValueError(f"combine must be 'sum' or 'logmix', got {combine!r}")
        self.hidden, self.combine = hidden, combine
        self.gate = NoisyTopKGate(
            hidden, num_experts, top_k, noisy, logits, init=gate_init, gate_softmax=gate_softmax
        )
        self.experts = Experts(
            num_experts, hidden, d_hidden or 2 * hidden, d_out or hidden, activation=activation
        )

    def forward(self, x: Tensor) -> tuple[Tensor, GateOutput]:
        lead = x.shape[:-1]
        tokens = x.reshape(-1, self.hidden)
        gate_output = self.gate(tokens)
        y = dispatch(tokens, gate_output.index, gate_output.gates, self.experts, self.combine)
        return y.reshape(*lead, y.shape[-1]), gate_output
