"""TF — Tensor Fusion Network (Zadeh et al., EMNLP 2017), on vector modalities.

Choices (docs/models §2):

* [code] Encoding: one SubNet per modality (BatchNorm1d → Dropout → three Linear–ReLU
  layers) to a small width ``subnet_dim``; its input is the modality's whole feature
  vector, so every feature reaches the fusion through its own weights.
* [code] ``subnet_input="raw"`` (default): the SubNet reads the raw, flattened feature vector
  ``[B, F]``, as the original TFN's audio and video SubNets read their (time-averaged)
  feature vectors, and as the Flex-MoE authors' public tensor-fusion baseline (I2MoE's
  LRTF, ``--patch False`` by default) reads a per-modality ``MLP(F → H)`` of the raw features
  rather than patch tokens. No :class:`~bench.blocks.PatchEmbeddings` is built.
* [ours] ``subnet_input="tokens"``: the SubNet reads the modality's flattened
  :class:`~bench.blocks.PatchEmbeddings` tokens ``[B, P·H]`` (the tokeniser the suite's
  other models share, docs/models §0.1), so the first SubNet layer is ``Linear(P·H, d)``.
  The tokens are flattened, not mean-pooled: the mean of the P tokens equals one Linear of
  the averaged patch, which collapses a modality to ``ceil(F/P)`` numbers (ADNI
  biospecimen's 12 features to their sum) and makes TF blind to the order of patches.
* [ours] ``batchnorm=False``: the original SubNet starts with BatchNorm1d; it is off by
  default because subnets run on the observed rows only, which can be a single row at
  batch 8 (``True`` restores it).
* [ours] ``subnet_dim`` defaults by the number of modalities M so the fused tensor stays near
  or below 10^5 entries: 128 for M ≤ 2, 32 for M = 3, 16 for M = 4, 8 for M = 5, 4 for M ≥ 6.
* [paper] Fusion: ``z̃_m = [1, z_m]`` and the flattened outer product over all modalities
  (``Π (subnet_dim + 1)`` entries), then Dropout → Linear–ReLU → Linear–ReLU → Linear → C,
  as the paper (the stored reference script's reshape bug and missing ReLUs are not copied).
* [ours] Missing modalities: no native mechanism; ``z_m = 0`` for a missing modality (its
  SubNet — and, with tokens, its tokeniser — never sees the row), so the constant-1 terms
  keep the other modalities' lower-order interactions. ``missing_fill="zero_input"``
  encodes a zero input instead.
* Hyper-parameters: [unverified] the Flex-MoE paper's TF settings are unknown; the shared
  protocol applies (dropout 0.5, Adam lr 1e-4, batch 8, 50 epochs; H 128, P 16 for the
  tokens) with post-fusion width 128 from the original's searched range 32–128.
"""

from __future__ import annotations

from typing import Any, Literal, get_args

import torch
from torch import Tensor, nn

from bench.blocks import Dropout, MissingFill, ModalityTokenizer, encode_observed
from bench.data.core import Batch, DataSpec
from bench.model import BenchModel
from bench.registry import register_model

#: What a SubNet reads: the raw feature vector or the flattened patch tokens.
SubnetInput = Literal["raw", "tokens"]
SUBNET_INPUTS: tuple[str, ...] = get_args(SubnetInput)


def default_subnet_dim(num_modalities: int) -> int:
    """Largest width in {128, 32, 16, 8, 4} that keeps the fused tensor small (see module doc)."""
    return {1: 128, 2: 128, 3: 32, 4: 16, 5: 8}.get(num_modalities, 4)


class SubNet(nn.Module):
    """(BatchNorm1d) → Dropout → three Linear–ReLU layers: the original TFN's audio/video SubNet
    on the flattened input."""

    def __init__(self, d_in: int, d_out: int, dropout: float, batchnorm: bool) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.BatchNorm1d(d_in) if batchnorm else nn.Identity(), Dropout(dropout),
            nn.Linear(d_in, d_out), nn.ReLU(), nn.Linear(d_out, d_out), nn.ReLU(),
            nn.Linear(d_out, d_out), nn.ReLU())

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x.flatten(1))


@register_model("tf")
class TensorFusion(BenchModel):
    """Tensor Fusion Network: outer product of [1, z_m] over modalities (Zadeh et al. 2017)."""

    def __init__(self, spec: DataSpec, hidden: int = 128, num_patches: int = 16,
                 subnet_dim: int = 16, post_fusion_dim: int = 128, dropout: float = 0.5,
                 post_fusion_dropout: float = 0.5, batchnorm: bool = False,
                 subnet_input: SubnetInput = "raw",
                 missing_fill: MissingFill = "zero_embed") -> None:
        super().__init__(spec)
        if subnet_input not in SUBNET_INPUTS:
            raise ValueError(f"subnet_input must be one of {SUBNET_INPUTS}, got {subnet_input!r}")
        self.missing_fill, self.subnet_input = missing_fill, subnet_input
        self.tokenizer = (ModalityTokenizer(spec, num_patches, hidden, missing_fill)
                          if subnet_input == "tokens" else None)
        widths = {m.letter: num_patches * hidden if subnet_input == "tokens" else m.num_features
                  for m in spec.modalities}
        # the SubNets are the modalities' encoders (named so: they see observed rows only)
        self.encoders = nn.ModuleDict({
            c: SubNet(widths[c], subnet_dim, dropout, batchnorm) for c in spec.letters})
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
        return {"missing_fill": self.missing_fill, "subnet_input": self.subnet_input,
                "fused_dim": (self.subnet_dim + 1) ** self.spec.num_modalities}

    def forward(self, batch: Batch) -> tuple[Tensor, Tensor]:
        inputs = (self.tokenizer(batch) if self.tokenizer is not None
                  else {c: batch.x[c].flatten(1) for c in self.spec.letters})
        fused = None
        for j, c in enumerate(self.spec.letters):
            if self.tokenizer is not None and self.missing_fill == "zero_input":
                z = self.encoders[c](inputs[c])  # the tokeniser already encoded a zero input
            else:
                z = encode_observed(self.encoders[c], inputs[c], batch.observed[:, j],
                                    (self.subnet_dim,), self.missing_fill)
            z = torch.cat([torch.ones_like(z[:, :1]), z], dim=1)
            fused = z if fused is None else (fused.unsqueeze(2) * z.unsqueeze(1)).flatten(1)
        return self.post(fused), fused.new_zeros(())
