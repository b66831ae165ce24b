"""LIMoE — multimodal contrastive learning with a shared sparse MoE (Mustafa et al., 2022).

No official or faithful public code exists (docs/models §5): everything below comes from the
paper's description, adapted to per-modality patch tokens and classification.

Choices:

* [ours] Tokens: one :class:`~bench.blocks.PatchEmbeddings` per modality (P tokens of width
  H), concatenated to ``[B, M·P, H]``; a learned embedding per (modality, position) slot
  (``[M·P, H]``, N(0, 0.02²) init as ViT) marks position and modality at once.
* [paper] One shared pre-LN transformer processes all modalities' tokens together
  (``attn_residual="standard"``); every ``moe_every``-th block (V-MoE's "every other layer":
  blocks 2, 4, … counting from 1) replaces its MLP by a sparse MoE of ``num_experts`` experts.
  ``num_layers`` 2 [ours] gives one dense and one MoE block.
* [code] Attention branch dropped once, as the ViT / V-MoE encoder block that LIMoE builds
  on (google-research/vmoe ``vit_moe.EncoderBlock``: attention → Dropout → ``+ inputs``, no
  dropout inside the attention's output projection): ``attn_dropouts="once"``; ``"twice"``
  is the Flex-MoE block's projection dropout followed by the residual's.
* [paper] Router: softmax over all E logits x·W (``gate_softmax="all"``), the gate value of a
  chosen expert is its probability. ``top_k`` 2 [ours, MODELS §5.5: K ∈ {1, 2, 4}];
  ``noisy=False`` [unverified] (MODELS §13: LIMoE without router noise).
* [paper] Experts: ViT MLPs H → ``mlp_ratio``·H (4) → H with GELU, in the shared
  :class:`~flexmoe.moe.SparseMoE`; dense blocks use the same width.
* [ours] Capacity and Batch Priority Routing are dropped: at batch 8 every token is processed
  by its top-k experts (capacity factor ∞).
* Auxiliary losses, per modality m and per MoE layer, on router probabilities p(e|x) over the
  **observed** tokens of m only [ours] (zero-filled tokens of missing modalities would dominate
  otherwise); a modality with no observed token in the batch contributes nothing:
  local entropy ``mean_x H(p(·|x))`` (weight ``w_local``), thresholded global entropy
  ``max(0, τ − H(mean_x p(·|x)))`` (weight ``w_global``), and the V-MoE importance/load
  balance ``cv²(Σ importance) + cv²(Σ load)`` of the shared ``balance_loss`` (weight
  ``w_balance``; importance = the top-k gate values; without noise the load is a hard count
  and carries no gradient). Terms are summed over modalities and MoE layers [unverified].
  Defaults [unverified]: ``w_local`` 0.01, ``w_global`` 0.01, ``tau`` log(min(E, 4)) (None),
  ``w_balance`` 0.005 (V-MoE's ½ · 0.01 per term).
* [ours] Contrastive loss dropped (no paired pretraining task); classification head: final
  LayerNorm, mean over each modality's tokens, concatenated, one Linear → C.
* Missing modalities: no native mechanism → zero-filled encoder output tokens
  (``missing_fill="zero_embed"``; ``"zero_input"`` encodes zeros instead), before the slot
  embedding is added; stored with the run (``run_info``).
* Hyper-parameters: the shared protocol (Adam lr 1e-4, batch 8, 50 epochs), H 128, P 16,
  E 16, 4 heads, dropout 0.5 [ours, the Flex-MoE setting of MODELS §0.4, §5.5].
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor, nn

from bench.blocks import AttnDropouts, MissingFill, ModalityTokenizer, TransformerBlock
from bench.data.core import Batch, DataSpec
from bench.model import BenchModel
from bench.registry import register_model
from flexmoe.moe import GateOutput, SparseMoE, balance_loss


def _entropy(p: Tensor) -> Tensor:
    """Shannon entropy over the last axis (0·log 0 = 0)."""
    return -(p * torch.log(p.clamp_min(1e-12))).sum(-1)


def entropy_losses(probs: Tensor, observed: Tensor, tau: float) -> tuple[Tensor, Tensor]:
    """LIMoE's per-modality local and thresholded global entropy losses.

    Args:
        probs: [B, M, P, E] router probabilities of every token, grouped by modality.
        observed: [B, M] bool; tokens of missing modalities are left out of every statistic.
        tau: global-entropy threshold: the global term is 0 while H(p̄_m) ≥ tau.

    Returns:
        ``(local [M], global [M])``: mean token entropy and ``max(0, tau − H(p̄_m))`` per
        modality, both 0 for a modality with no observed token.
    """
    weight = observed.to(probs.dtype)  # [B, M]
    count = weight.sum(0) * probs.shape[2]  # observed tokens per modality
    present = count > 0
    denom = count.clamp_min(1.0)
    local = torch.einsum("bm,bmp->m", weight, _entropy(probs)) / denom
    marginal = torch.einsum("bm,bmpe->me", weight, probs) / denom.unsqueeze(1)
    global_ = torch.relu(tau - _entropy(marginal))
    return torch.where(present, local, 0.0), torch.where(present, global_, 0.0)


class MoEBlock(TransformerBlock):
    """Pre-LN block whose MLP is a :class:`SparseMoE`; also returns the routing state."""

    def forward(self, x: Tensor) -> tuple[Tensor, GateOutput]:
        x = self.attend(x)
        y, gate = self.mlp(self.norm2(x))
        return x + self.drop(y), gate


@register_model("limoe")
class LIMoE(BenchModel):
    """Shared transformer over all modalities' tokens with sparse MoE blocks and entropy losses."""

    def __init__(self, spec: DataSpec, hidden: int = 128, num_patches: int = 16,
                 num_experts: int = 16, top_k: int = 2, num_heads: int = 4, num_layers: int = 2,
                 moe_every: int = 2, mlp_ratio: int = 4, dropout: float = 0.5,
                 noisy: bool = False, w_local: float = 0.01, w_global: float = 0.01,
                 tau: float | None = None, w_balance: float = 0.005,
                 missing_fill: MissingFill = "zero_embed",
                 attn_dropouts: AttnDropouts = "once") -> None:
        super().__init__(spec)
        if moe_every < 1 or num_layers < moe_every:
            raise ValueError(f"num_layers={num_layers} must be ≥ moe_every={moe_every} ≥ 1 "
                             "so that at least one block is a MoE block")
        m = spec.num_modalities
        self.num_patches, self.missing_fill = num_patches, missing_fill
        self.w_local, self.w_global, self.w_balance = w_local, w_global, w_balance
        self.tau = math.log(min(num_experts, 4)) if tau is None else tau
        self.tokenizer = ModalityTokenizer(spec, num_patches, hidden, missing_fill)
        self.slot_embed = nn.Parameter(torch.randn(1, m * num_patches, hidden) * 0.02)
        self.blocks = nn.ModuleList(
            MoEBlock(hidden, num_heads, dropout=dropout, mlp=SparseMoE(
                hidden, num_experts, top_k, d_hidden=mlp_ratio * hidden, noisy=noisy,
                gate_softmax="all"), attn_dropouts=attn_dropouts)
            if (i + 1) % moe_every == 0
            else TransformerBlock(hidden, num_heads, mlp_ratio, dropout,
                                  attn_dropouts=attn_dropouts)
            for i in range(num_layers))
        self.norm = nn.LayerNorm(hidden)
        self.head = nn.Linear(m * hidden, spec.num_classes)

    def run_info(self) -> dict[str, Any]:
        moe = [i for i, b in enumerate(self.blocks) if isinstance(b, MoEBlock)]
        return {"missing_fill": self.missing_fill, "moe_blocks": moe, "tau": self.tau}

    def routing_loss(self, gate: GateOutput, observed: Tensor) -> Tensor:
        """Weighted entropy and balance losses of one MoE layer, summed over modalities."""
        b, m = observed.shape
        probs = torch.softmax(gate.clean, dim=1).view(b, m, self.num_patches, -1)
        local, global_ = entropy_losses(probs, observed, self.tau)
        token_observed = observed.repeat_interleave(self.num_patches, dim=1)  # [B, M·P]
        slot_modality = torch.arange(m, device=observed.device).repeat_interleave(
            self.num_patches)
        balance = sum(balance_loss(gate, (token_observed & (slot_modality == j)).reshape(-1))
                      for j in range(m))
        return (self.w_local * local.sum() + self.w_global * global_.sum()
                + self.w_balance * balance)

    def forward(self, batch: Batch) -> tuple[Tensor, Tensor]:
        tokens = self.tokenizer(batch)
        x = torch.cat([tokens[c] for c in self.spec.letters], dim=1) + self.slot_embed
        aux = x.new_zeros(())
        for block in self.blocks:
            if isinstance(block, MoEBlock):
                x, gate = block(x)
                aux = aux + self.routing_loss(gate, batch.observed)
            else:
                x = block(x)
        x = self.norm(x)
        pooled = x.view(x.shape[0], self.spec.num_modalities, self.num_patches, -1).mean(2)
        return self.head(pooled.flatten(1)), aux
