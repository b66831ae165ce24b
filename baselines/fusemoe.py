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
  fairseq's MHA; ``attn_bias=True`` [code]: the released projections, q/k/v with biases, the
  stacked (3H, H) and the output weights xavier-uniform, biases zero — a local module, as the
  shared one takes no bias), then the MoE over whole sequences:
  ``u_i = flatten(LN(x_i)) ∈ R^{P·H}`` (how, next item),
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
  (The released training batch is 1, where the reshape is per sample; its evaluation batch,
  8, mixes samples.)
* [code] ``router_type="permod"`` (default; the paper's per-modality routers): one
  :class:`~flexmoe.moe.NoisyTopKGate` per modality on u_i, one shared pool of E experts
  R^{P·H} → R^{M·P·H}, ``y = Σ_i MoE_i(u_i)``. All modalities' assignments go through the
  experts in one ``dispatch`` call. [ours] ``train_routers=True``: the gates are registered
  modules and train. [code] In the released MoE they sit in a plain Python list, so they stay
  zero and never train: every Laplace logit ties (−‖u_i‖) and the noise alone (scale
  softplus(0) + 0.01 ≈ 0.70) picks k experts uniformly at random, with random weights —
  released per-modality routing is random top-k. ``train_routers=False`` reproduces that
  (gates zero and frozen; with ``eval_noise=True`` random at evaluation too; permod only:
  the released joint router is a registered parameter and trains). ``"joint"``: one
  :class:`~flexmoe.moe.SparseMoE` whose gate and experts see concat(u_1..u_M) ∈ R^{M·P·H}.
  ``"disjoint"`` is not implemented.
* [code] Gating: ``logits="laplace"`` (−‖u − w_e‖₂; ``"dot"`` is FuseMoE's "softmax"
  gating), router weights zero-initialised, ``noisy=True`` (noise scale
  softplus(u·W_noise) + 0.01), softmax over the k chosen logits, ``top_k`` 4. [code] The
  released layer calls its MoE without ``train=False`` (the forward's default is True), so
  the noise is added at evaluation too. [ours] ``eval_noise=False``: evaluation is noise-free
  (zero-initialised ties go by expert order until the routers train); ``eval_noise=True``
  adds the noise at evaluation as released.
* [code] Experts: Linear(in, ``expert_hidden``) → GELU → Dropout → Linear(expert_hidden,
  out), drawn as ``nn.Linear`` layers are (``expert_init="linear"``; ``"fastmoe"`` keeps the
  shared layer's FastMoE init). The dropout is MoEConfig's default 0.1 (the layer does not
  pass ``--dropout``); [ours] ``expert_dropout=0.0`` omits it (the shared experts have
  none); 0.1 is the released value, applied after the activation as there. ``expert_hidden``
  512 (``--hidden_size`` default, "hidden size of MLP second layer"): an expert of the
  default IGCB model maps 2,048 → 512 → 8,192 (5.25 M parameters, 84 M for E = 16), which
  makes this the largest and slowest model of the suite.
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
  only in the fork pham156/FuseMoE_poly, not in the released code]; ``"released"`` [code]:
  the released ``MULTCrossModel`` head, that residual MLP on the concatenation of each
  modality's last position after the final LayerNorm (``hid[-1]``) instead of the mean (on
  patch tokens the last position is the feature vector's last chunk, not a latest time step).
* Hyper-parameters: dropout 0.1 everywhere and 8 heads [code defaults]; E 16, k 4, H 128,
  P 16, 1 layer, permod + Laplace [ours, the Flex-MoE setting]; [code] the released defaults
  are 3 cross layers (``--cross_layers``), and its shipped script (``run_mimiciv.sh``) routes
  with one joint Laplace router, E = 3, k = 2, expert hidden 512, H 128 (constructor options
  here). [code] Released training: Adam lr 4e-4 (``--ts_learning_rate``), no weight decay
  (``--weight_decay`` 0.01 is parsed but never given to the optimiser), no scheduler
  (``--lr_scheduler_type`` is parsed, none is built), batch 1 with 16 accumulation steps
  (loss / 16, an effective batch of 16), 8 epochs, fp16 mixed precision, unweighted
  cross-entropy, best epoch by validation F1 (strictly higher; positive-class F1 at 0.5
  for in-hospital mortality, macro-F1 for phenotypes). [ours] The suite's shared protocol
  (docs/models §0.4, ``bench.model.SHARED_TRAINING``) replaces the learning rate (1e-4), the
  batch (8, no accumulation), the epochs (50), the precision (float32), the loss's class
  weights (the data set's, MIMIC 0.25 / 0.75) and the selection (best validation
  accuracy); Adam without weight decay or scheduler is the same.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, Literal, get_args

import torch
from torch import Tensor, nn

from bench.blocks import Attention, Dropout, MissingFill, ModalityTokenizer, attend_heads
from bench.data.core import Batch, DataSpec
from bench.model import BenchModel
from bench.registry import register_model
from flexmoe.moe import Experts, GateOutput, NoisyTopKGate, SparseMoE, balance_loss, dispatch

RouterType = Literal["permod", "joint"]
ExpertInit = Literal["linear", "fastmoe"]
Head = Literal["linear", "residual", "released"]
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


class DropoutExperts(Experts):
    """The given experts' parameters (taken over, not redrawn) with dropout after the
    activation, as the released expert: fc1 → GELU → Dropout → fc2."""

    def __init__(self, experts: Experts, p: float) -> None:
        nn.Module.__init__(self)
        self.num_experts, self.activation = experts.num_experts, experts.activation
        self.w1, self.b1, self.w2, self.b2 = experts.w1, experts.b1, experts.w2, experts.b2
        self.drop = Dropout(p)

    def _act(self, h: Tensor) -> Tensor:
        return self.drop(super()._act(h))


class BiasedAttention(nn.Module):
    """Self-attention with the released (fairseq) projections: q/k/v from one (3H, H) matrix
    with bias, weights xavier-uniform, biases zero; dropouts as the shared Attention."""

    def __init__(self, hidden: int, num_heads: int, dropout: float) -> None:
        super().__init__()
        if hidden % num_heads:
            raise ValueError(f"hidden size {hidden} is not divisible by {num_heads} heads")
        self.num_heads = num_heads
        self.qkv = nn.Linear(hidden, 3 * hidden)
        self.proj = nn.Linear(hidden, hidden)
        for lin in (self.qkv, self.proj):
            nn.init.xavier_uniform_(lin.weight)
            nn.init.zeros_(lin.bias)
        self.attn_drop, self.proj_drop = Dropout(dropout), Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        b, n, h = x.shape
        q, k, v = self.qkv(x).view(b, n, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4)
        a = attend_heads(q, k, v, self.attn_drop)
        return self.proj_drop(self.proj(a.transpose(1, 2).reshape(b, n, h)))


class ResidualHead(nn.Module):
    """z + fc2(Dropout(ReLU(fc1(z)))), then Linear → C (the fork's FlexiModalMULTCrossModel on
    the mean; the released MULTCrossModel on last positions)."""

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
                 flatten: Flatten = "sample", eval_noise: bool = False,
                 expert_dropout: float = 0.0, attn_bias: bool = False) -> None:
        super().__init__()
        m, d = num_modalities, num_patches * hidden
        self.router_type, self.flatten, self.eval_noise = router_type, flatten, eval_noise

        def per_modality(make: Callable[[], nn.Module]) -> nn.ModuleList:
            return nn.ModuleList(make() for _ in range(m))

        self.attn_norms = per_modality(lambda: nn.LayerNorm(hidden))
        attention = BiasedAttention if attn_bias else Attention
        self.attns = per_modality(lambda: attention(hidden, num_heads, dropout))
        self.moe_norms = per_modality(lambda: nn.LayerNorm(hidden))
        if router_type == "permod":
            self.moe: nn.Module = PerModalityMoE(m, d, num_experts, top_k, expert_hidden, noisy,
                                                 logits, combine)
        else:
            self.moe = SparseMoE(m * d, num_experts, top_k, expert_hidden, m * d, noisy, logits,
                                 gate_init="zeros", combine=combine)
        if expert_dropout:
            self.moe.experts = DropoutExperts(self.moe.experts, expert_dropout)
        self.ffn_norms = per_modality(lambda: nn.LayerNorm(hidden))
        self.ffns = per_modality(lambda: nn.Sequential(
            nn.Linear(hidden, 4 * hidden), nn.ReLU(), Dropout(dropout),
            nn.Linear(4 * hidden, hidden)))
        self.drop = Dropout(dropout)

    def gates(self) -> list[NoisyTopKGate]:
        """The routers of this layer's MoE."""
        return list(self.moe.gates) if self.router_type == "permod" else [self.moe.gate]

    def route(self, u: Tensor, keep: Tensor | None) -> tuple[Tensor, list[GateOutput]]:
        """The MoE over flattened sequences u [M, B, P·H] → ([B, M·P·H], routing states)."""
        noisy_eval = self.gates() if self.eval_noise and not self.training else []
        for gate in noisy_eval:  # as released: the MoE is never told that it evaluates
            gate.train()
        try:
            if self.router_type == "permod":
                return self.moe(u, keep)
            y, gate = self.moe(u.transpose(0, 1).flatten(1))
            return y, [gate]
        finally:
            for gate in noisy_eval:
                gate.eval()

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

    hparams_added = {"eval_noise": False, "train_routers": True, "expert_dropout": 0.0,
                     "attn_bias": False}

    def __init__(self, spec: DataSpec, hidden: int = 128, num_patches: int = 16,
                 num_experts: int = 16, top_k: int = 4, expert_hidden: int = 512,
                 num_heads: int = 8, num_layers: int = 1, dropout: float = 0.1,
                 router_type: RouterType = "permod", logits: GateLogits = "laplace",
                 noisy: bool = True, combine: Combine = "logmix", balance_weight: float = 0.0,
                 expert_init: ExpertInit = "linear", skip_missing_moe: bool = False,
                 head: Head = "linear", missing_fill: MissingFill = "zero_embed",
                 flatten: Flatten = "sample", eval_noise: bool = False,
                 train_routers: bool = True, expert_dropout: float = 0.0,
                 attn_bias: bool = False) -> None:
        """Released values where they differ from these defaults: ``eval_noise=True`` (noise
        at evaluation), ``train_routers=False`` (per-modality routers zero and untrained),
        ``expert_dropout=0.1``, ``attn_bias=True``, ``head="released"``,
        ``flatten="batch"``, ``num_layers=3``; its script: ``router_type="joint"``,
        ``num_experts=3``, ``top_k=2``."""
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
        if eval_noise and not noisy:
            raise ValueError("eval_noise needs noisy=True (it adds the router noise at "
                             "evaluation)")
        if not train_routers and router_type != "permod":
            raise ValueError("train_routers=False needs router_type='permod' (the released "
                             "joint router is a registered parameter and trains)")
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
                         router_type, logits, noisy, combine, dropout, flatten, eval_noise,
                         expert_dropout, attn_bias)
            for _ in range(num_layers))
        for layer in self.layers:
            if expert_init == "linear":
                linear_init_(layer.moe.experts)
            if not train_routers:  # as released: zero-initialised and never trained
                for gate in layer.gates():
                    gate.requires_grad_(False)
        self.final_norms = nn.ModuleList(nn.LayerNorm(hidden) for _ in range(m))
        self.head = (nn.Linear(m * hidden, spec.num_classes) if head == "linear"
                     else ResidualHead(m * hidden, spec.num_classes, dropout))
        self.pool_last = head == "released"

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
        if self.pool_last:  # the released head: each modality's last position
            pooled = torch.cat([norm(x)[:, -1] for x, norm in zip(xs, self.final_norms)], 1)
        else:
            pooled = torch.cat([norm(x).mean(1) for x, norm in zip(xs, self.final_norms)], dim=1)
        return self.head(pooled), aux
