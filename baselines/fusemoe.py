"""FuseMoE — mixture-of-experts fusion with Laplace gating (Han et al., NeurIPS 2024).

Follows the sparse-MoE "cross encoder" of the released code (``src/core/module.py``,
``sparse_moe.py``, ``model.py``, ``train.py``, ``utils/util.py``; docs/models §6), read in forks
that keep it (the authors' history, last upstream commit c5acf6f, survives in
bddupre92/FuseMoE_Migraines; pham156/FuseMoE_poly changes it in places named below), on
per-modality patch tokens.

Choices:

* [ours] Inputs: one :class:`~bench.blocks.PatchEmbeddings` per modality (P tokens of width H)
  instead of mTAND / clinical-BERT encoders. [code] A modality-type embedding (``[M, H]``,
  N(0, 1) as ``nn.Embedding``) is added to observed rows, the sum is scaled by √H, one learned
  position embedding shared by all modalities (``[P, H]``, N(0, 0.02²)) is added, then
  dropout. (The code's position table has ``padding_idx=0``, which freezes position 0; not
  copied.)
* [code] Each of ``num_layers`` layers, per modality i (own weights per modality):
  ``x_i += SelfAttn_i(LN(x_i))`` (the shared :class:`~bench.blocks.Attention`, ``num_heads``
  8, whose output dropout is the residual dropout; its q/kv projections have no bias, unlike
  fairseq's MHA), then the MoE over whole sequences: ``u_i = flatten(LN(x_i)) ∈ R^{P·H}``
  (how, next item),
  ``x_i += Dropout(y_i)`` with y split into M chunks of P·H, then the FFN
  ``x_i += Dropout(fc2(Dropout(ReLU(fc1(LN(x_i))))))``, fc1 H → 4H. After the stack a
  LayerNorm per modality.
* [ours] ``flatten="sample"`` (default): u_i[b] is sample b's own P·H tokens, and y goes back
  the same way. This deliberately corrects the released layer, which keeps sequences
  time-first ``(P, B, H)`` and calls ``torch.reshape(x, (bs, -1))``: that cuts the buffer into
  B consecutive blocks of P·H, so row b holds the tokens of a few positions of several
  samples (for B = P, position b of every sample), each routed vector mixes samples, and a
  sample's output depends on its batch-mates and its place in the batch (the inverse reshape
  puts the outputs back in the same mixed order). Reason for the correction: a routed vector
  should be one sample's sequence, so that a prediction does not change with the batch it
  sits in (its batch-mates, its order, the batch size in evaluation). ``flatten="batch"``
  reproduces the released reshape, for fidelity checks only (not with ``skip_missing_moe``).
* [code] ``router_type="permod"`` (default; the paper's per-modality routers): one
  :class:`~flexmoe.moe.NoisyTopKGate` per modality on u_i, one shared pool of E experts
  R^{P·H} → R^{M·P·H}, ``y = Σ_i MoE_i(u_i)``. The gates are registered modules, so they
  train — in the read code they sit in a plain Python list and never do. All modalities'
  assignments go through the experts in one ``dispatch`` call. ``"joint"``: one
  :class:`~flexmoe.moe.SparseMoE` whose gate and experts see concat(u_1..u_M) ∈ R^{M·P·H}.
  ``"disjoint"`` is not implemented.
* [code] Gating: ``logits="laplace"`` (−‖u − w_e‖₂; ``"dot"`` is FuseMoE's "softmax"
  gating), router weights zero-initialised (ties broken by the noise in training, by expert
  order in evaluation), ``noisy=True`` (noise scale softplus(u·W_noise) + 0.01), softmax over
  the k chosen logits, ``top_k`` 4.
* [code] Experts: Linear(in, ``expert_hidden``) → GELU → Linear(expert_hidden, out), drawn as
  ``nn.Linear`` layers are (``expert_init="linear"``; ``"fastmoe"`` keeps the shared layer's
  FastMoE init). The dropout inside FuseMoE's experts is omitted (the shared experts have
  none). ``expert_hidden`` 512 (``--hidden_size`` default, "hidden size of MLP second
  layer"): an expert of the default IGCB model maps 2,048 → 512 → 8,192 (5.25 M parameters,
  84 M for E = 16), which makes this the largest and slowest model of the suite.
* [code] ``combine="logmix"``: expert outputs pass a log-softmax over features and the
  mixture is taken in probability space, ``MoE(u) = log Σ_k g_k · exp(expert_k(u))`` (the
  released quirk). Each mixture is the log of a distribution over M·P·H features, so it sits
  near −log(M·P·H) per feature, and permod sums the M modalities' mixtures, so y sits near
  −M·log(M·P·H) (joint: −log(M·P·H); with ``skip_missing_moe`` −m·log(M·P·H) for m routed
  modalities), an offset that the LayerNorms after it mostly remove. ``"sum"`` is the plain
  weighted sum.
* [code] No balance loss by default (``balance_weight=0.0``): the released MoE computes
  ``(cv²(Σ gates) + cv²(load)) · loss_coef`` (loss_coef 1e-2, its forward's default) and
  returns it, but ``TransformerCrossEncoderLayer`` drops it (only the sequences go on) and
  the training loop back-propagates the task loss only. The fork pham156/FuseMoE_poly (and
  kelloc02/CSDI_FuseMoe, which carries the same change) passes it up and adds
  ``balance_loss_coef`` (0.01) times it under ``--use_balance_loss``, a flag that is off by
  default (its run scripts turn it on): 0.01 · 0.01 = 1e-4 in all. [code, fork only]
  ``balance_weight > 0`` adds ``balance_weight · Σ (cv²(Σ gates) + cv²(load))``, the load
  from the noisy top-k probabilities in training, summed over modalities (permod) and layers
  (1e-4 reproduces that fork with its flag on).
* Missing modalities: [code] the read ``MULTCrossModel`` zeroes a missing modality's
  projected sequence (without its type embedding) before the encoder, and the MoE has no
  missing-modality logic; here the encoder output tokens are zero-filled
  (``missing_fill="zero_embed"``, or ``"zero_input"``) and still pass every layer and get the
  position embedding. ``skip_missing_moe=True`` [ours, permod only] leaves a missing
  modality's vector out of its router, the experts and the balance loss.
* Head: ``head="linear"`` [ours]: mean over each modality's tokens, concatenated, one
  Linear → C; ``"residual"``: the same pooled vector z, ``z + fc2(Dropout(ReLU(fc1(z))))``,
  then Linear → C [code, fork only: ``FlexiModalMULTCrossModel``, a PAMAP2 class that exists
  only in the fork pham156/FuseMoE_poly, not in the released code]; the released
  ``MULTCrossModel`` has the same residual MLP but on each modality's last position
  (``hid[-1]``), not on the mean.
* Hyper-parameters: dropout 0.1 everywhere and 8 heads [code defaults]; E 16, k 4, H 128,
  P 16, 1 layer, permod + Laplace [ours, the Flex-MoE setting]; training by the shared
  protocol (Adam lr 1e-4, batch 8, 50 epochs; the code's own 4e-4 with weight decay and a
  scheduler is not used).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, Literal, get_args

import torch
from torch import Tensor, nn

from bench.blocks import Attention, Dropout, MissingFill, ModalityTokenizer
from bench.data.core import Batch, DataSpec
from bench.model import BenchModel
from bench.registry import register_model
from flexmoe.moe import Experts, GateOutput, NoisyTopKGate, SparseMoE, balance_loss, dispatch

RouterType = Literal["permod", "joint"]
ExpertInit = Literal["linear", "fastmoe"]
Head = Literal["linear", "residual"]
Combine = Literal["logmix", "sum"]
GateLogits = Literal["laplace", "dot"]
Flatten = Literal["sample", "batch"]
ROUTER_TYPES, EXPERT_INITS = get_args(RouterType), get_args(ExpertInit)
HEADS, COMBINES, FLATTENS = get_args(Head), get_args(Combine), get_args(Flatten)


def linear_init_(experts: Experts) -> None:
    """Redraw the experts as ``nn.Linear`` layers are: U(±1/√fan_in) for weights and biases."""
    with torch.no_grad():
        for w, b in ((experts.w1, experts.b1), (experts.w2, experts.b2)):
            bound = 1.0 / math.sqrt(w.shape[1])
            w.uniform_(-bound, bound)
            b.uniform_(-bound, bound)


class ResidualHead(nn.Module):
    """z + fc2(Dropout(ReLU(fc1(z)))), then Linear → C (the fork's FlexiModalMULTCrossModel)."""

    def __init__(self, width: int, num_classes: int, dropout: float) -> None:
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(width, width), nn.ReLU(), Dropout(dropout),
                                 nn.Linear(width, width))
        self.out = nn.Linear(width, num_classes)

    def forward(self, z: Tensor) -> Tensor:
        return self.out(z + self.mlp(z))


class PerModalityMoE(nn.Module):
    """FuseMoE's ``permod`` MoE: a router per modality, one shared pool of experts."""

    def __init__(self, num_modalities: int, d_in: int, num_experts: int, top_k: int,
                 expert_hidden: int, noisy: bool, logits: str, combine: str) -> None:
        super().__init__()
        self.combine = combine
        self.gates = nn.ModuleList(
            NoisyTopKGate(d_in, num_experts, top_k, noisy, logits, init="zeros")
            for _ in range(num_modalities))
        self.experts = Experts(num_experts, d_in, expert_hidden, num_modalities * d_in)

    def forward(self, u: Tensor, keep: Tensor | None = None) -> tuple[Tensor, list[GateOutput]]:
        """``y = Σ_i MoE_i(u[i])`` for u [M, B, d] → ([B, M·d], one GateOutput per routed
        modality); ``keep`` [B, M] bool leaves out the rows it marks False."""
        m, b, _ = u.shape
        rows, inputs, index, gates, outputs = [], [], [], [], []
        for j, gate in enumerate(self.gates):
            r = torch.arange(b, device=u.device) if keep is None else keep[:, j].nonzero()[:, 0]
            if r.numel() == 0:
                continue
            uj = u[j] if keep is None else u[j].index_select(0, r)
            g = gate(uj)
            rows.append(r)
            inputs.append(uj)
            index.append(g.index)
            gates.append(g.gates)
            outputs.append(g)
        out = dispatch(torch.cat(inputs), torch.cat(index), torch.cat(gates), self.experts,
                       self.combine)
        return u.new_zeros(b, out.shape[1]).index_add(0, torch.cat(rows), out), outputs


class FuseMoELayer(nn.Module):
    """One sparse-MoE cross-encoder layer over M per-modality sequences [B, P, H]."""

    def __init__(self, num_modalities: int, num_patches: int, hidden: int, num_heads: int,
                 num_experts: int, top_k: int, expert_hidden: int, router_type: str,
                 logits: str, noisy: bool, combine: str, dropout: float,
                 flatten: Flatten = "sample") -> None:
        super().__init__()
        m, d = num_modalities, num_patches * hidden
        self.router_type, self.flatten = router_type, flatten

        def per_modality(make: Callable[[], nn.Module]) -> nn.ModuleList:
            return nn.ModuleList(make() for _ in range(m))

        self.attn_norms = per_modality(lambda: nn.LayerNorm(hidden))
        self.attns = per_modality(lambda: Attention(hidden, num_heads, dropout))
        self.moe_norms = per_modality(lambda: nn.LayerNorm(hidden))
        if router_type == "permod":
            self.moe: nn.Module = PerModalityMoE(m, d, num_experts, top_k, expert_hidden, noisy,
                                                 logits, combine)
        else:
            self.moe = SparseMoE(m * d, num_experts, top_k, expert_hidden, m * d, noisy, logits,
                                 gate_init="zeros", combine=combine)
        self.ffn_norms = per_modality(lambda: nn.LayerNorm(hidden))
        self.ffns = per_modality(lambda: nn.Sequential(
            nn.Linear(hidden, 4 * hidden), nn.ReLU(), Dropout(dropout),
            nn.Linear(4 * hidden, hidden)))
        self.drop = Dropout(dropout)

    def route(self, u: Tensor, keep: Tensor | None) -> tuple[Tensor, list[GateOutput]]:
        """The MoE over flattened sequences u [M, B, P·H] → ([B, M·P·H], routing states)."""
        if self.router_type == "permod":
            return self.moe(u, keep)
        y, gate = self.moe(u.transpose(0, 1).flatten(1))
        return y, [gate]

    def to_vector(self, x: Tensor) -> Tensor:
        """[B, P, H] → [B, P·H]: per sample, or (``"batch"``) the released time-first reshape."""
        if self.flatten == "sample":
            return x.flatten(1)
        return x.transpose(0, 1).reshape(x.shape[0], -1)

    def from_vector(self, y: Tensor, p: int, h: int) -> Tensor:
        """The inverse of :meth:`to_vector`: [B, P·H] → [B, P, H]."""
        if self.flatten == "sample":
            return y.view(-1, p, h)
        return y.reshape(p, -1, h).transpose(0, 1)

    def forward(self, xs: list[Tensor], keep: Tensor | None
                ) -> tuple[list[Tensor], list[GateOutput]]:
        """One layer → (new sequences, routing states of its MoE calls)."""
        xs = [x + attn(norm(x)) for x, attn, norm in zip(xs, self.attns, self.attn_norms)]
        u = torch.stack([self.to_vector(norm(x)) for x, norm in zip(xs, self.moe_norms)])
        y, gates = self.route(u, keep)
        b, p, h = xs[0].shape
        y = y.view(b, len(xs), p * h)
        xs = [x + self.drop(self.from_vector(y[:, j], p, h)) for j, x in enumerate(xs)]
        xs = [x + self.drop(ffn(norm(x))) for x, ffn, norm in zip(xs, self.ffns, self.ffn_norms)]
        return xs, gates


@register_model("fusemoe")
class FuseMoE(BenchModel):
    """Per-modality self-attention + a sequence-level Laplace-gated sparse MoE fusion layer."""

    def __init__(self, spec: DataSpec, hidden: int = 128, num_patches: int = 16,
                 num_experts: int = 16, top_k: int = 4, expert_hidden: int = 512,
                 num_heads: int = 8, num_layers: int = 1, dropout: float = 0.1,
                 router_type: RouterType = "permod", logits: GateLogits = "laplace",
                 noisy: bool = True, combine: Combine = "logmix", balance_weight: float = 0.0,
                 expert_init: ExpertInit = "linear", skip_missing_moe: bool = False,
                 head: Head = "linear", missing_fill: MissingFill = "zero_embed",
                 flatten: Flatten = "sample") -> None:
        super().__init__(spec)
        if router_type not in ROUTER_TYPES:
            raise ValueError(f"router_type must be one of {ROUTER_TYPES}, got {router_type!r}")
        if expert_init not in EXPERT_INITS:
            raise ValueError(f"expert_init must be one of {EXPERT_INITS}, got {expert_init!r}")
        if combine not in COMBINES:
            raise ValueError(f"combine must be one of {COMBINES}, got {combine!r}")
        if head not in HEADS:
            raise ValueError(f"head must be one of {HEADS}, got {head!r}")
        if flatten not in FLATTENS:
            raise ValueError(f"flatten must be one of {FLATTENS}, got {flatten!r}")
        if skip_missing_moe and router_type != "permod":
            raise ValueError("skip_missing_moe needs router_type='permod' (a joint router "
                             "sees every modality at once)")
        if skip_missing_moe and flatten != "sample":
            raise ValueError("skip_missing_moe needs flatten='sample' (a batch-flattened "
                             "vector mixes samples)")
        m = spec.num_modalities
        self.router_type, self.skip_missing_moe = router_type, skip_missing_moe
        self.missing_fill, self.balance_weight = missing_fill, balance_weight
        self.scale = math.sqrt(hidden)
        self.tokenizer = ModalityTokenizer(spec, num_patches, hidden, missing_fill)
        self.type_embed = nn.Parameter(torch.randn(m, hidden))
        self.pos_embed = nn.Parameter(torch.randn(num_patches, hidden) * 0.02)
        self.embed_drop = Dropout(dropout)
        self.layers = nn.ModuleList(
            FuseMoELayer(m, num_patches, hidden, num_heads, num_experts, top_k, expert_hidden,
                         router_type, logits, noisy, combine, dropout, flatten)
            for _ in range(num_layers))
        if expert_init == "linear":
            for layer in self.layers:
                linear_init_(layer.moe.experts)
        self.final_norms = nn.ModuleList(nn.LayerNorm(hidden) for _ in range(m))
        self.head = (nn.Linear(m * hidden, spec.num_classes) if head == "linear"
                     else ResidualHead(m * hidden, spec.num_classes, dropout))

    def run_info(self) -> dict[str, Any]:
        return {"missing_fill": self.missing_fill, "router_type": self.router_type,
                "skip_missing_moe": self.skip_missing_moe}

    def embed(self, batch: Batch) -> list[Tensor]:
        """Per-modality inputs of the first layer: √H·(tokens + type) + position, dropped out."""
        tokens = self.tokenizer(batch)
        xs = []
        for j, c in enumerate(self.spec.letters):
            typed = torch.where(batch.observed[:, j, None, None], tokens[c] + self.type_embed[j],
                                tokens[c])
            xs.append(self.embed_drop(typed * self.scale + self.pos_embed))
        return xs

    def forward(self, batch: Batch) -> tuple[Tensor, Tensor]:
        xs = self.embed(batch)
        keep = batch.observed if self.skip_missing_moe else None
        aux = xs[0].new_zeros(())
        for layer in self.layers:
            xs, gates = layer(xs, keep)
            if self.balance_weight:  # the released training adds no balance loss
                aux = aux + self.balance_weight * sum(balance_loss(g) for g in gates)
        pooled = torch.cat([norm(x).mean(1) for x, norm in zip(xs, self.final_norms)], dim=1)
        return self.head(pooled), aux
