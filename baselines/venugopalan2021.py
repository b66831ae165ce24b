"""Venugopalan et al. (Sci. Rep. 2021): stacked denoising autoencoders + intermediate fusion.

No code is public and only the abstract was reached (docs/models §9), so the architecture
below is an end-to-end adaptation. Choices:

* [ours] Inputs: every modality of our data sets is a feature vector, so every modality,
  the image (ROI vector) included, takes the SDAE path; the paper's 3D CNN applies to raw
  MRI volumes only, which these data sets do not have, and is not implemented.
* [ours] The SDAE reads the raw feature vector ``F`` (flattened), not patch tokens: an
  autoencoder reconstructs its own input, and the paper's SDAEs read the features directly.
* [ours] One SDAE per modality (``encoders[letter]``): masking noise on the input (each
  feature zeroed with probability ``noise`` = 0.2, no rescaling, training only), encoder
  ``F → 512 → 256 → H`` with Linear–ReLU layers and Dropout after the two hidden layers
  (widths ``sdae_dims``), decoder the mirror ``H → 256 → 512 → F`` (ReLU between layers,
  linear output because features are real-valued).
* [ours] The code of the noisy input feeds both the decoder and the classifier (one encoder
  pass per step, the denoising objective acting as a regulariser of the joint model).
* [ours] Reconstruction loss: per modality the MSE between the reconstruction and the clean
  input, averaged over features and over the **observed** rows only (zero when no row of
  the batch has the modality); summed over modalities and weighted by ``lambda_rec`` = 0.1
  (joint training). The optional SDAE pre-training phase (λ = 1) is not implemented:
  training is joint from the first step.
* [paper] Intermediate fusion: the modality codes are concatenated ``[B, M·H]`` (features,
  not predictions, are fused). [ours] Classifier ``MLP(M·H → H → C)`` (Linear–ReLU–Dropout–
  Linear) in place of the paper's shallow classifiers, trained end to end.
* Missing modalities: no native mechanism; ``missing_fill="zero_embed"`` (default) zeroes a
  missing modality's code and its SDAE never sees the row; ``"zero_input"`` encodes a zero
  input instead. Missing rows are never reconstructed in either setting.
* Hyper-parameters: unknown, so the shared protocol applies (H 128, dropout 0.5, Adam lr
  1e-4, batch 8, 50 epochs).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from bench.blocks import Dropout, MissingFill, check_missing_fill, encode_observed, mlp_head
from bench.data.core import Batch, DataSpec
from bench.model import BenchModel
from bench.registry import register_model


class MaskingNoise(nn.Module):
    """Zero each input feature with probability ``p`` in training (the denoising corruption).

    Unlike dropout the kept features are not rescaled: the decoder's target is the clean input.
    """

    def __init__(self, p: float = 0.2) -> None:
        super().__init__()
        if not 0.0 <= p < 1.0:
            raise ValueError(f"masking noise probability must lie in [0, 1), got {p}")
        self.p = p

    def forward(self, x: Tensor) -> Tensor:
        if not self.training or self.p == 0.0:
            return x
        return x * (torch.rand_like(x) >= self.p)

    def extra_repr(self) -> str:
        return f"p={self.p}"


class SDAE(nn.Module):
    """Denoising autoencoder of one modality; returns ``[code (H) | reconstruction (F)]``.

    Both come out of one tensor so that :func:`~bench.blocks.encode_observed` can run the
    whole autoencoder on the observed rows only.
    """

    def __init__(self, num_features: int, hidden: int, dims: tuple[int, ...], dropout: float,
                 noise: float) -> None:
        super().__init__()
        self.noise = MaskingNoise(noise)
        enc: list[nn.Module] = []
        width = num_features
        for d in dims:
            enc += [nn.Linear(width, d), nn.ReLU(), Dropout(dropout)]
            width = d
        self.encoder = nn.Sequential(*enc, nn.Linear(width, hidden), nn.ReLU())
        dec: list[nn.Module] = []
        width = hidden
        for d in reversed(dims):
            dec += [nn.Linear(width, d), nn.ReLU()]
            width = d
        self.decoder = nn.Sequential(*dec, nn.Linear(width, num_features))

    def forward(self, x: Tensor) -> Tensor:
        code = self.encoder(self.noise(x.flatten(1)))
        return torch.cat([code, self.decoder(code)], dim=1)


def observed_mse(recon: Tensor, x: Tensor, observed: Tensor) -> Tensor:
    """Mean squared error over the observed rows only (zero when none is observed).

    Missing rows are replaced before any arithmetic, so garbage there cannot leak (not even
    as a NaN gradient).
    """
    keep = observed.unsqueeze(1)
    target = torch.where(keep, x, 0.0)
    per_row = torch.where(keep, recon - target, 0.0).pow(2).mean(1)
    return per_row.sum() / observed.sum().clamp(min=1)


@register_model("venugopalan2021")
class Venugopalan2021(BenchModel):
    """Per-modality SDAE codes, concatenated, then an MLP classifier (Venugopalan et al. 2021)."""

    def __init__(self, spec: DataSpec, hidden: int = 128, sdae_dims: tuple[int, ...] = (512, 256),
                 dropout: float = 0.5, noise: float = 0.2, lambda_rec: float = 0.1,
                 missing_fill: MissingFill = "zero_embed") -> None:
        super().__init__(spec)
        self.hidden = hidden
        self.lambda_rec = lambda_rec
        self.missing_fill = check_missing_fill(missing_fill)
        self.encoders = nn.ModuleDict({
            m.letter: SDAE(m.num_features, hidden, tuple(sdae_dims), dropout, noise)
            for m in spec.modalities})
        self.classifier = mlp_head(spec.num_modalities * hidden, spec.num_classes, hidden,
                                   num_layers=2, dropout=dropout)

    def run_info(self) -> dict[str, Any]:
        return {"missing_fill": self.missing_fill, "lambda_rec": self.lambda_rec,
                "image_encoder": "sdae"}

    def encode(self, batch: Batch) -> tuple[Tensor, Tensor]:
        """Fused codes ``[B, M·H]`` (zeros for missing modalities) and the unweighted
        reconstruction loss summed over modalities."""
        codes, rec = [], None
        for j, m in enumerate(self.spec.modalities):
            x, obs = batch.x[m.letter].flatten(1), batch.observed[:, j]
            out = encode_observed(self.encoders[m.letter], x, obs,
                                  (self.hidden + m.num_features,), self.missing_fill)
            code, recon = out.split([self.hidden, m.num_features], dim=1)
            codes.append(code)
            loss = observed_mse(recon, x, obs)
            rec = loss if rec is None else rec + loss
        return torch.cat(codes, dim=1), rec

    def forward(self, batch: Batch) -> tuple[Tensor, Tensor]:
        fused, rec = self.encode(batch)
        return self.classifier(fused), self.lambda_rec * rec
