"""TF — Tensor Fusion Network (Zadeh et al., EMNLP 2017), on per-modality patch tokens.

Choices (MODELS.md §2):

* [ours] Encoding: each modality's :class:`~bench.blocks.PatchEmbeddings` tokens are
  mean-pooled to ``hidden`` and passed through a SubNet-style MLP (Dropout → three
  Linear–ReLU layers) to a small width ``subnet_dim``. The original SubNet starts with
  BatchNorm1d; it is off by default (``batchnorm=False``) because subnets run on the
  observed rows only, which can be a single row at batch 8.
* ``subnet_dim`` defaults by the number of modalities M so the fused tensor stays near or
  below 10^5 entries: 128 for M ≤ 2, 32 for M = 3, 16 for M = 4, 8 for M = 5, 4 for M ≥ 6.
* Fusion: ``z̃_m = [1, z_m]`` and the flattened outer product over all modalities
  (``Π (subnet_dim + 1)`` entries), then Dropout → Linear–ReLU → Linear–ReLU → Linear → C,
  as the paper (the stored reference script's reshape bug and missing ReLUs are not copied).
* Missing modalities: no native mechanism; ``z_m = 0`` for a missing modality (the encoder
  and subnet never see it), so the constant-1 terms keep the other modalities' lower-order
  interactions. ``missing_fill="zero_input"`` encodes a zero input instead.
* Hyper-parameters: the Flex-MoE paper's TF settings are unknown; the shared protocol
  applies (H 128, P 16, dropout 0.5, Adam lr 1e-4, batch 8, 50 epochs) with post-fusion
  width 128 from the original's searched range 32–128.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from bench.blocks import Dropout, MissingFill, ModalityTokenizer, encode_observed
from bench.data.core import Batch, DataSpec
from bench.model import BenchModel
from bench.registry import register_model


def default_subnet_dim(num_modalities: int) -> int:
    """Largest width in {128, 32, 16, 8, 4} that keeps the fused tensor small (see module doc)."""
    return {1: 128, 2: 128, 3: 32, 4: 16, 5: 8}.get(num_modalities, 4)


class SubNet(nn.Module):
    """Dropout → three Linear–ReLU layers (the original TFN's audio/video SubNet)."""

    def __init__(self, d_in: int, d_out: int, dropout: float, batchnorm: bool) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.BatchNorm1d(d_in) if batchnorm else nn.Identity(), Dropout(dropout),
            nn.Linear(d_in, d_out), nn.ReLU(), nn.Linear(d_out, d_out), nn.ReLU(),
            nn.Linear(d_out, d_out), nn.ReLU())

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


@register_model("tf")
class TensorFusion(BenchModel):
    """Tensor Fusion Network: outer product of [1, z_m] over modalities (Zadeh et al. 2017)."""

    def __init__(self, spec: DataSpec, hidden: int = 128, num_patches: int = 16,
                 subnet_dim: int = 16, post_fusion_dim: int = 128, dropout: float = 0.5,
                 post_fusion_dropout: float = 0.5, batchnorm: bool = False,
                 missing_fill: MissingFill = "zero_embed") -> None:
        super().__init__(spec)
        self.missing_fill = missing_fill
        self.tokenizer = ModalityTokenizer(spec, num_patches, hidden, missing_fill)
        self.subnets = nn.ModuleDict({
            c: SubNet(hidden, subnet_dim, dropout, batchnorm) for c in spec.letters})
        self.subnet_dim = subnet_dim
        fused = (subnet_dim + 1) ** spec.num_modalities
        self.post = nn.Sequential(
            Dropout(post_fusion_dropout), nn.Linear(fused, post_fusion_dim), nn.ReLU(),
            nn.Linear(post_fusion_dim, post_fusion_dim), nn.ReLU(),
            nn.Linear(post_fusion_dim, spec.num_classes))

    @classmethod
    def default_hparams(cls, spec: DataSpec) -> dict[str, Any]:
        return {**super().default_hparams(spec),
                "subnet_dim": default_subnet_dim(spec.num_modalities)}

    def run_info(self) -> dict[str, Any]:
        return {"missing_fill": self.missing_fill,
                "fused_dim": (self.subnet_dim + 1) ** self.spec.num_modalities}

    def forward(self, batch: Batch) -> tuple[Tensor, Tensor]:
        tokens = self.tokenizer(batch)
        fused = None
        for j, c in enumerate(self.spec.letters):
            pooled = tokens[c].mean(1)
            if self.missing_fill == "zero_embed":
                z = encode_observed(self.subnets[c], pooled, batch.observed[:, j],
                                    (self.subnet_dim,))
            else:
                z = self.subnets[c](pooled)
            z = torch.cat([torch.ones_like(z[:, :1]), z], dim=1)
            fused = z if fused is None else (fused.unsqueeze(2) * z.unsqueeze(1)).flatten(1)
        return self.post(fused), fused.new_zeros(())
