"""MAG — Multimodal Adaptation Gate (Rahman et al., ACL 2020), on per-modality patch tokens.

Choices (docs/models §4):

* [ours] Main sequence = the P tokens of an **anchor** modality (the original's text);
  auxiliaries = the tokens of the other M−1 modalities, aligned by token index.
* [ours] ``anchor=None`` picks the modality with the highest availability in the training
  split. A model sees only the :class:`~bench.data.core.DataSpec`, which carries no counts,
  so the rule is a per-family preference table of the data sets' marginal availabilities
  (``ANCHOR_PREFERENCE``): ADNI C > I > B > G (C 2,380, I 1,758, B 1,744, G 1,596 patients,
  the counts of the paper's Figure 2 that synthetic-adni reproduces); MIMIC-IV L > C > N
  (synthetic-mimic: L 91 %, C 79 %, N 72 % of admissions). The first preferred letter in the
  run is the anchor; other families take the run's first letter. ``default_hparams`` writes
  the chosen letter into the run's settings and ``run_info`` records it.
* [code] Gate per token: ``g_j = ReLU(W_hj [x_j; t] + b)``, ``h = Σ_j g_j ⊙ (W_j x_j + b_j)``,
  ``α = min(β·‖t‖ / (‖h‖ + 1e-6), 1)`` with ‖h‖ = 0 replaced by 1, norms over the feature
  axis; output ``Dropout(LayerNorm(t + α·h))``. A zero anchor gives α = 0: the auxiliary
  information is discarded (docs/models §4.3).
* [ours] No pre-trained language model follows the gate: ``num_layers`` pre-LN
  :class:`~bench.blocks.TransformerBlock` s (standard residual, MLP ratio ``mlp_ratio``),
  with a learned positional embedding (zero-initialised, as Flex-MoE's) added *after* the
  gate (``pos_embed=True``), so the gate still sees the bare anchor tokens and a missing
  anchor keeps α = 0; then mean over the P tokens → Dropout → Linear → C (the original
  pools BERT's [CLS] → dropout → Linear).
* [code] Dropout in those blocks as BERT's layer that they replace: the attention weights and
  the attention output are each dropped once (``attn_dropouts="once"``: the residual's
  dropout, no dropout after the attention's output projection), as ``BertSelfAttention``
  (dropout on the probabilities) and ``BertSelfOutput`` (dense → dropout → LayerNorm(· +
  input)); ``"twice"`` is the Flex-MoE block, which drops the attention output twice.
* Missing modalities: no native mechanism; tokens of a missing modality are zeros at the
  encoder output (``missing_fill="zero_embed"``, docs/models §0.3; the encoder never sees the
  row), so a missing auxiliary contributes its bias-driven term ``g ⊙ b_j``;
  ``"zero_input"`` encodes a zero input instead. Recorded in ``run_info``.
* Hyper-parameters: [code] β = 1.0 (``beta_shift``), dropout 0.5; [ours] H 128, P 16,
  4 heads, 2 transformer blocks (docs/models: 1–2); training follows the shared protocol
  (Adam lr 1e-4, batch 8, 50 epochs) since the original's BERT fine-tuning settings
  (lr 1e-5, batch 48, warm-up) do not fit a model trained from scratch.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from bench.blocks import AttnDropouts, Dropout, MissingFill, ModalityTokenizer, TransformerBlock
from bench.data.core import Batch, DataSpec
from bench.model import SHARED_TRAINING, BenchModel
from bench.registry import register_model

#: Letters by decreasing availability in the training split, per data family (see above).
ANCHOR_PREFERENCE = {"adni": "CIBG", "mimic": "LCN"}


def default_anchor(spec: DataSpec) -> str:
    """The run's most available modality by the family's table; else its first letter."""
    for c in ANCHOR_PREFERENCE.get(spec.family, ""):
        if c in spec.letters:
            return c
    return spec.letters[0]


class MAGGate(nn.Module):
    """Shift the anchor tokens by a gated, norm-limited sum of the auxiliary tokens."""

    def __init__(self, hidden: int, num_aux: int, beta_shift: float = 1.0,
                 dropout: float = 0.5, eps: float = 1e-6) -> None:
        super().__init__()
        self.beta_shift, self.eps = beta_shift, eps
        self.gates = nn.ModuleList(nn.Linear(2 * hidden, hidden) for _ in range(num_aux))
        self.shifts = nn.ModuleList(nn.Linear(hidden, hidden) for _ in range(num_aux))
        self.norm = nn.LayerNorm(hidden)
        self.drop = Dropout(dropout)

    def displacement(self, t: Tensor, aux: list[Tensor]) -> tuple[Tensor, Tensor]:
        """``(α [..., 1], h [..., H])`` for anchor tokens ``t`` and auxiliaries ``aux``."""
        h = torch.zeros_like(t)
        for x, gate, shift in zip(aux, self.gates, self.shifts):
            h = h + torch.relu(gate(torch.cat([x, t], dim=-1))) * shift(x)
        h_norm = h.norm(dim=-1, keepdim=True)
        h_norm = torch.where(h_norm == 0, torch.ones_like(h_norm), h_norm)
        alpha = (self.beta_shift * t.norm(dim=-1, keepdim=True) / (h_norm + self.eps))
        return alpha.clamp(max=1.0), h

    def forward(self, t: Tensor, aux: list[Tensor]) -> Tensor:
        alpha, h = self.displacement(t, aux)
        return self.drop(self.norm(t + alpha * h))


@register_model("mag")
class MAG(BenchModel):
    """Multimodal Adaptation Gate on an anchor modality, then a small transformer."""

    def __init__(self, spec: DataSpec, hidden: int = 128, num_patches: int = 16,
                 num_heads: int = 4, num_layers: int = 2, mlp_ratio: int = 2,
                 dropout: float = 0.5, beta_shift: float = 1.0, anchor: str | None = None,
                 pos_embed: bool = True, missing_fill: MissingFill = "zero_embed",
                 attn_dropouts: AttnDropouts = "once") -> None:
        super().__init__(spec)
        self.anchor = default_anchor(spec) if anchor is None else anchor
        if self.anchor not in spec.letters:
            raise ValueError(f"anchor {self.anchor!r} is not a modality of this run "
                             f"({spec.letters!r})")
        self.aux_letters = spec.letters.replace(self.anchor, "")
        self.missing_fill = missing_fill
        self.tokenizer = ModalityTokenizer(spec, num_patches, hidden, missing_fill)
        self.gate = MAGGate(hidden, len(self.aux_letters), beta_shift, dropout)
        self.pos_embed = (nn.Parameter(torch.zeros(1, num_patches, hidden)) if pos_embed
                          else None)
        self.blocks = nn.Sequential(*(
            TransformerBlock(hidden, num_heads, mlp_ratio, dropout, "standard",
                             attn_dropouts=attn_dropouts)
            for _ in range(num_layers)))
        self.head_drop = Dropout(dropout)
        self.head = nn.Linear(hidden, spec.num_classes)

    @classmethod
    def default_hparams(cls, spec: DataSpec) -> dict[str, Any]:
        return {**SHARED_TRAINING, "anchor": default_anchor(spec)}

    def run_info(self) -> dict[str, Any]:
        return {"missing_fill": self.missing_fill, "anchor": self.anchor}

    def forward(self, batch: Batch) -> tuple[Tensor, Tensor]:
        tokens = self.tokenizer(batch)
        x = self.gate(tokens[self.anchor], [tokens[c] for c in self.aux_letters])
        if self.pos_embed is not None:
            x = x + self.pos_embed
        pooled = self.blocks(x).mean(1)
        return self.head(self.head_drop(pooled)), pooled.new_zeros(())
