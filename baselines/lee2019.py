"""Lee et al. (Sci. Rep. 2019): one GRU per modality, final hidden states fused by a Linear.

No code is public (docs/models §10). Choices:

* [ours] Sequence: the original GRUs run over longitudinal visits; our samples have one
  visit, so each modality's GRU runs over its ``P`` patch tokens from the shared
  :class:`~bench.blocks.ModalityTokenizer` (``[B, P, H]``). The patch order, i.e. the order
  of the features in the vector, becomes the "time" order; it is fixed by the tokeniser.
* [ours] One GRU per modality (``hidden`` H = 128, ``num_layers`` 1, batch_first, separate
  weights); the modality feature is its last hidden state ``[B, H]``. The M GRUs run in a
  loop over modalities (M ≤ 4), each over the observed rows of its modality.
* [unverified] Features concatenated ``[B, M·H]``; a logistic-regression-style Linear → C
  (the model notes' reading of the paper; no source reached). [unverified] Dropout 0.5 (the
  shared protocol's) on the concatenated features.
* Missing modalities: no native mechanism; ``missing_fill="zero_embed"`` (default) makes a
  missing modality's feature zero (neither its tokeniser nor its GRU sees the row);
  ``"zero_input"`` runs the GRU on a zero token sequence instead (the feature then carries
  the GRU's biases); the tokeniser never sees a missing row in either setting.
* Hyper-parameters: unknown, so the shared protocol applies (H 128, P 16, Adam lr 1e-4,
  batch 8, 50 epochs).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from bench.blocks import (
    Dropout,
    MissingFill,
    ModalityTokenizer,
    check_missing_fill,
    encode_observed,
)
from bench.data.core import Batch, DataSpec
from bench.model import BenchModel
from bench.registry import register_model


class LastHiddenGRU(nn.Module):
    """A GRU over a token sequence ``[B, P, H]`` that returns its last layer's final state."""

    def __init__(self, d_in: int, hidden: int, num_layers: int) -> None:
        super().__init__()
        self.gru = nn.GRU(d_in, hidden, num_layers, batch_first=True)

    def forward(self, tokens: Tensor) -> Tensor:
        return self.gru(tokens)[1][-1]


@register_model("lee2019")
class Lee2019(BenchModel):
    """Per-modality GRU over patch tokens, last hidden states concatenated, Linear head."""

    def __init__(self, spec: DataSpec, hidden: int = 128, num_patches: int = 16,
                 num_layers: int = 1, dropout: float = 0.5,
                 missing_fill: MissingFill = "zero_embed") -> None:
        super().__init__(spec)
        self.hidden = hidden
        self.missing_fill = check_missing_fill(missing_fill)
        self.tokenizer = ModalityTokenizer(spec, num_patches, hidden)
        self.grus = nn.ModuleDict({
            c: LastHiddenGRU(hidden, hidden, num_layers) for c in spec.letters})
        self.drop = Dropout(dropout)
        self.head = nn.Linear(spec.num_modalities * hidden, spec.num_classes)

    def run_info(self) -> dict[str, Any]:
        return {"missing_fill": self.missing_fill}

    def features(self, batch: Batch) -> Tensor:
        """Concatenated last hidden states ``[B, M·H]`` (zeros for missing modalities)."""
        tokens = self.tokenizer(batch)
        return torch.cat([
            encode_observed(self.grus[c], tokens[c], batch.observed[:, j], (self.hidden,),
                            self.missing_fill)
            for j, c in enumerate(self.spec.letters)], dim=1)

    def forward(self, batch: Batch) -> tuple[Tensor, Tensor]:
        fused = self.features(batch)
        return self.head(self.drop(fused)), fused.new_zeros(())
