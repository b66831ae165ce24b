"""Flex-MoE (Yun et al., NeurIPS 2024), as the released code behaves (docs/models §1).

* Per-modality :class:`~bench.blocks.PatchEmbeddings` run on observed rows only.
* Missing-modality bank ``[2^M − 1, M_full, P, H]`` (N(0, 1) init, trainable): a missing
  modality's P×H token block is ``bank[combo, global_index(modality)]``.
* Tokens concatenated, plus a zero-initialised positional embedding; fusion layers alternate
  sparse / dense (layer 1 sparse). The sparse layer's attention keeps the official residual
  ``a + Dropout(a)`` (``attn_residual="standard"`` gives ``x + Dropout(a)``); its MoE is
  applied to each modality's token chunk with one shared set of experts and one gate, and
  the router loss is computed per chunk and summed (all chunks go through the experts in one
  batched call: routing is per token, so the outputs are those of per-chunk calls).
* Router loss (``flexmoe.router``): G-Router balance on fully observed tokens, S-Router
  cross-entropy to the combination expert plus balance on experts 1…E−1 for the others;
  weight ``gate_loss_weight`` (0.01), summed over modalities and sparse layers.
* Training schedule: the first ``warmup_epochs`` epochs run in the order ``warmup_order``
  (default: samples sorted by number of modalities, descending, no shuffle); later epochs
  shuffle. Declared through ``epoch_order``; the generic loop executes it.
* Head: mean over each modality's tokens, concatenated, one Linear → C.

Ablations (paper Table 3): ``specialize=False`` (w/o ES), ``specialize=False,
generalize=False`` (w/o ES + EG: plain noisy top-k SMoE, shuffled from the first epoch),
``bank=False`` (missing blocks are zeros), ``warmup_order="random"|"ascending"``.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
from torch import Tensor, nn

from bench.blocks import AttnResidual, ModalityTokenizer, TransformerBlock
from bench.data.core import Batch, DataSpec
from bench.model import SHARED_TRAINING, BenchModel
from bench.registry import register_model
from flexmoe.moe import GateOutput, SparseMoE
from flexmoe.router import flexmoe_router_loss

WarmupOrder = Literal["descending", "ascending", "random"]
WARMUP_ORDERS = {"descending": "descending", "ascending": "ascending", "random": "fixed-random"}

#: The paper's Table 6 per data family; other data sets get E = max(16, 2^M) so every
#: combination has its expert.
FAMILY_DEFAULTS = {"adni": {"num_experts": 16, "top_k": 4},
                   "mimic": {"num_experts": 32, "top_k": 3}}


class SparseFusionLayer(TransformerBlock):
    """Flex-MoE's sparse layer: attention over all tokens, then the MoE per modality chunk."""

    def __init__(self, hidden: int, num_heads: int, dropout: float, attn_residual: str,
                 moe: SparseMoE) -> None:
        super().__init__(hidden, num_heads, dropout=dropout, attn_residual=attn_residual,
                         mlp=moe)

    def forward(self, x: Tensor, num_modalities: int) -> tuple[Tensor, GateOutput]:
        x = self.attend(x)
        b, n, h = x.shape
        p = n // num_modalities
        # modality-major token order: chunk j is rows [j·B·P, (j+1)·B·P), sample-major inside
        chunks = self.norm2(x).view(b, num_modalities, p, h).transpose(0, 1).reshape(-1, h)
        y, gate = self.mlp(chunks)
        y = y.view(num_modalities, b, p, h).transpose(0, 1).reshape(b, n, h)
        return x + self.drop(y), gate


class FlexMoE(BenchModel):
    """Flex-MoE: missing-modality bank + sparse MoE with G-/S-Router (Yun et al. 2024)."""

    def __init__(self, spec: DataSpec, hidden: int = 128, num_patches: int = 16,
                 num_experts: int = 16, top_k: int = 4, num_heads: int = 4, num_layers: int = 1,
                 dropout: float = 0.5, gate_loss_weight: float = 0.01, warmup_epochs: int = 5,
                 specialize: bool = True, generalize: bool = True, bank: bool = True,
                 warmup_order: WarmupOrder = "descending",
                 attn_residual: AttnResidual = "official",
                 exclude_top1: bool = False) -> None:
        super().__init__(spec)
        m = spec.num_modalities
        if num_experts <= 2 ** m - 2:
            raise ValueError(f"num_experts={num_experts} must exceed the largest combination "
                             f"index {2 ** m - 2} of {m} modalities")
        if warmup_order not in WARMUP_ORDERS:
            raise ValueError(f"warmup_order must be one of {sorted(WARMUP_ORDERS)}")
        self.num_patches, self.gate_loss_weight = num_patches, gate_loss_weight
        self.warmup_epochs, self.warmup_order = warmup_epochs, warmup_order
        self.specialize, self.generalize, self.exclude_top1 = specialize, generalize, exclude_top1
        self.global_index = spec.global_index
        self.tokenizer = ModalityTokenizer(spec, num_patches, hidden)
        self.bank = (nn.Parameter(torch.randn(2 ** m - 1, len(spec.all_modalities), num_patches,
                                              hidden)) if bank else None)
        self.register_buffer("bank_index", torch.tensor(spec.global_index), persistent=False)
        self.pos_embed = nn.Parameter(torch.zeros(1, m * num_patches, hidden))
        self.layers = nn.ModuleList(
            SparseFusionLayer(hidden, num_heads, dropout, attn_residual,
                              SparseMoE(hidden, num_experts, top_k)) if i % 2 == 0
            else TransformerBlock(hidden, num_heads, 2, dropout, attn_residual)
            for i in range(num_layers))
        self.head = nn.Linear(m * hidden, spec.num_classes)

    @classmethod
    def default_hparams(cls, spec: DataSpec) -> dict[str, Any]:
        moe = FAMILY_DEFAULTS.get(spec.family,
                                  {"num_experts": max(16, 2 ** spec.num_modalities), "top_k": 4})
        return {**SHARED_TRAINING, **moe}

    def epoch_order(self, epoch: int) -> str:
        if self.generalize and epoch < self.warmup_epochs:
            return WARMUP_ORDERS[self.warmup_order]
        return "shuffle"

    def run_info(self) -> dict[str, Any]:
        return {"missing_fill": "bank" if self.bank is not None else "zero_embed"}

    def embed(self, batch: Batch) -> Tensor:
        """Tokens ``[B, M·P, H]``: encoders on observed rows, bank blocks for missing ones."""
        tokens = self.tokenizer(batch)
        x = torch.stack([tokens[c] for c in self.spec.letters], dim=1)  # [B, M, P, H]
        if self.bank is not None:
            # one gather of every (combination, run modality) block; observed ones are discarded.
            # index_select, not advanced indexing: its backward adds the rows in batch order,
            # where advanced indexing's adds them with atomics across threads on CPU, so a
            # multi-threaded run's bank gradient, and result, varied from run to run.
            fill = self.bank[:, self.bank_index].index_select(0, batch.combo.clamp(min=0))
            x = torch.where(batch.observed[:, :, None, None], x, fill)
        return x.flatten(1, 2) + self.pos_embed

    def router_loss(self, gate: GateOutput, combo: Tensor) -> Tensor:
        """Σ over modality chunks of the router loss of one sparse layer (one vectorised pass)."""
        return flexmoe_router_loss(gate, combo.repeat_interleave(self.num_patches),
                                   self.specialize, self.generalize, self.exclude_top1,
                                   groups=self.spec.num_modalities)

    def forward(self, batch: Batch) -> tuple[Tensor, Tensor]:
        x = self.embed(batch)
        m = self.spec.num_modalities
        aux = x.new_zeros(())
        for layer in self.layers:
            if isinstance(layer, SparseFusionLayer):
                x, gate = layer(x, m)
                aux = aux + self.router_loss(gate, batch.combo)
            else:
                x = layer(x)
        pooled = x.view(x.shape[0], m, self.num_patches, -1).mean(2).flatten(1)
        return self.head(pooled), self.gate_loss_weight * aux


register_model("flexmoe")(FlexMoE)
