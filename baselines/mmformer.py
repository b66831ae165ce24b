"""mmFormer — multimodal medical transformer (Zhang et al., MICCAI 2022), on patch tokens.

Choices (docs/models §8; source read: YaoZhang93/mmFormer ``mmformer.py``, ``train.py``):

* [ours] Inputs: each modality's :class:`~bench.blocks.PatchEmbeddings` tokens ``[B, P, D]``
  stand for the "hybrid encoder" output (D = H = ``hidden``).
* [code] Intra-modal transformer per modality (own weights), ``depth`` steps; at every step
  ``x = x + pos_m`` (learned, zero-initialised, re-added at each step, not once), then the
  pre-LN block ``x + Dropout(Attn(LN x))``, ``x + FFN(LN x)`` with FFN Linear(D, mlp)–GELU–
  Dropout–Linear(mlp, D)–Dropout. That is :class:`~bench.blocks.TransformerBlock` with
  ``attn_residual="standard"``; its :class:`~bench.blocks.Attention` (separate q and kv
  Linear, no bias; proj with bias; scale head_dim^-0.5; dropout on weights and after proj)
  has the same parameter count (3D² + D² + D) and math as the repo's fused qkv Linear(D, 3D,
  no bias), so it is reused.
* [code] Masking: after the intra-modal stage the features of missing modalities are zero.
  Here they are never computed: the intra-modal transformers run on observed rows only
  (missing rows are zero by construction, the mask is applied explicitly as well).
* [code] Inter-modal transformer (same block type, ``depth`` steps) over the concatenation
  of all modalities' tokens ``[B, M·P, D]`` with the concatenation of the same per-modality
  positional embeddings (no new parameters), re-added at each step; a missing modality's
  tokens enter it as zeros plus its positional embedding, as in the repo.
* [ours] Classification replaces the segmentation decoder: reshape the inter output per
  modality, mean over tokens, concatenate ``[B, M·D]``, one Linear → C.
* [ours] L_sep replaces the shared separate decoder: one head Linear(D → C) shared by all
  modalities on each modality's mean-pooled intra-modal output. ``L_sep = Σ_m CE_m`` over the
  observed modalities, CE_m averaged over the samples of the batch that have m (0 when none),
  with the task's class weights when the data set has them (``sep_class_weights``);
  weight ``sep_weight`` 1 (the repo's). The repo computes its separate loss for every
  modality, since its missing modalities are simulated; here absent ones have no features.
  The repo's deep-supervision loss L_prm is skipped.
* [ours] D = H = 128, ``num_heads`` 4, ``mlp_ratio`` 4 (mlp 4H), ``depth`` 1, ``dropout`` 0.1
  (the repo: D 512, heads 8, mlp 4096, depth 1, dropout 0.1).
* [ours] ``random_drop``: probability that a training sample's observed set is replaced by one
  of its non-empty subsets drawn uniformly (the repo draws one of the 2^M − 1 masks per
  sample; here only truly observed modalities can be kept). Default 0: the real mask only.
* Training: the repo's Adam(amsgrad) lr 2e-4, weight decay 1e-4, poly schedule, 1000 epochs
  do not fit this setting; the shared protocol applies (Adam lr 1e-4, batch 8, 50 epochs).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from bench.blocks import ModalityTokenizer, TransformerBlock, encode_observed
from bench.data.core import Batch, DataSpec
from bench.model import BenchModel
from bench.registry import register_model


def random_nonempty_subset(observed: Tensor) -> Tensor:
    """Per sample, a uniformly drawn non-empty subset of its observed modalities."""
    n = observed.sum(1, keepdim=True)
    # an integer k in [1, 2^n − 1]; bit q of k keeps the q-th observed modality
    k = (torch.rand(n.shape, device=observed.device) * (2 ** n - 1)).floor().long() + 1
    position = observed.long().cumsum(1) - 1
    return observed & ((k >> position.clamp(min=0)) & 1).bool()


def transformer_blocks(hidden: int, depth: int, num_heads: int, mlp_ratio: int,
                       dropout: float) -> nn.ModuleList:
    """``depth`` pre-LN blocks of the repo's type (standard residuals)."""
    return nn.ModuleList(TransformerBlock(hidden, num_heads, mlp_ratio, dropout, "standard")
                         for _ in range(depth))


def run_with_pos(blocks: nn.ModuleList, x: Tensor, pos: Tensor) -> Tensor:
    """The repo's ``Transformer.forward``: ``x = block(x + pos)`` at every depth step.

    A plain function rather than a module taking ``pos`` as an argument: a parameter passed
    into a module's forward breaks ``FlopCounterMode``'s module tracking under inference mode.
    """
    for block in blocks:
        x = block(x + pos)
    return x


class IntraModal(nn.Module):
    """One modality's intra-modal transformer with its own positional embedding."""

    def __init__(self, num_patches: int, hidden: int, depth: int, num_heads: int,
                 mlp_ratio: int, dropout: float) -> None:
        super().__init__()
        self.pos = nn.Parameter(torch.zeros(1, num_patches, hidden))
        self.blocks = transformer_blocks(hidden, depth, num_heads, mlp_ratio, dropout)

    def forward(self, x: Tensor) -> Tensor:
        return run_with_pos(self.blocks, x, self.pos)


@register_model("mmformer")
class MmFormer(BenchModel):
    """Intra-modal transformers, zero-masking of missing modalities, inter-modal transformer."""

    def __init__(self, spec: DataSpec, hidden: int = 128, num_patches: int = 16,
                 num_heads: int = 4, mlp_ratio: int = 4, depth: int = 1, dropout: float = 0.1,
                 sep_weight: float = 1.0, sep_class_weights: bool = True,
                 random_drop: float = 0.0) -> None:
        super().__init__(spec)
        if not 0.0 <= random_drop <= 1.0:
            raise ValueError(f"random_drop must lie in [0, 1], got {random_drop}")
        m = spec.num_modalities
        self.num_patches, self.sep_weight, self.random_drop = num_patches, sep_weight, random_drop
        self.token_shape = (num_patches, hidden)
        self.tokenizer = ModalityTokenizer(spec, num_patches, hidden)
        self.intra = nn.ModuleDict({
            c: IntraModal(num_patches, hidden, depth, num_heads, mlp_ratio, dropout)
            for c in spec.letters})
        self.inter = transformer_blocks(hidden, depth, num_heads, mlp_ratio, dropout)
        self.sep_head = nn.Linear(hidden, spec.num_classes)
        self.head = nn.Linear(m * hidden, spec.num_classes)
        weights = (torch.tensor(spec.class_weights, dtype=torch.float32)
                   if sep_class_weights and spec.class_weights else None)
        self.register_buffer("class_weights", weights, persistent=False)

    def run_info(self) -> dict[str, Any]:
        return {"missing_fill": "mask_after_intra", "random_drop": self.random_drop}

    def intra_features(self, batch: Batch) -> Tensor:
        """Intra-modal outputs ``[B, M, P, D]``; zero for missing modalities."""
        tokens = self.tokenizer(batch)
        obs = batch.observed
        intra = torch.stack([encode_observed(self.intra[c], tokens[c], obs[:, j],
                                             self.token_shape)
                             for j, c in enumerate(self.spec.letters)], dim=1)
        return intra * obs.view(*obs.shape, 1, 1).to(intra.dtype)

    def sep_loss(self, intra: Tensor, observed: Tensor, y: Tensor) -> Tensor:
        """Σ over modalities of the shared head's CE, averaged over samples that have m."""
        b, m = observed.shape
        logits = self.sep_head(intra.mean(2))  # [B, M, C]
        ce = F.cross_entropy(logits.flatten(0, 1), y.repeat_interleave(m),
                             reduction="none").view(b, m)
        w = (self.class_weights[y] if self.class_weights is not None
             else torch.ones_like(ce[:, 0])).unsqueeze(1) * observed.to(ce.dtype)
        return ((ce * w).sum(0) / w.sum(0).clamp(min=torch.finfo(ce.dtype).tiny)).sum()

    def forward(self, batch: Batch) -> tuple[Tensor, Tensor]:
        if self.training and self.random_drop > 0:
            pick = torch.rand(len(batch), 1, device=batch.observed.device) < self.random_drop
            batch = replace(batch, observed=torch.where(
                pick, random_nonempty_subset(batch.observed), batch.observed))
        intra = self.intra_features(batch)
        b, m, p, d = intra.shape
        pos = torch.cat([self.intra[c].pos for c in self.spec.letters], dim=1)
        inter = run_with_pos(self.inter, intra.reshape(b, m * p, d), pos)
        logits = self.head(inter.view(b, m, p, d).mean(2).flatten(1))
        return logits, self.sep_weight * self.sep_loss(intra, batch.observed, batch.y)
