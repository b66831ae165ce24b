"""ShaSpec — shared-specific feature modelling (Wang et al., CVPR 2023), on patch tokens.

Choices (docs/models §7; source read: billhhh/ShaSpec ``DualNet_SS.py``, ``train_SS.py``):

* [ours] Inputs: each modality's :class:`~bench.blocks.PatchEmbeddings` tokens ``[B, P, H]``
  (the shared :class:`~bench.blocks.ModalityTokenizer`), so that one weight-shared encoder can
  read every modality.
* [ours] Encoders: the shared encoder S (one set of weights for every modality) and one
  specific encoder T_m per modality are each ``encoder="transformer"`` (one pre-LN
  :class:`~bench.blocks.TransformerBlock`, standard residual, ``num_heads`` 4, ``mlp_ratio`` 2)
  or ``encoder="mlp"`` (the 2-layer token MLP :class:`~bench.blocks.Mlp`).
  S runs once on all observed (sample, modality) rows stacked together.
* [ours] The transformer encoders drop the attention branch once, as a standard pre-LN block
  (``attn_dropouts="once"``: the residual's dropout, none after the attention's output
  projection); ``"twice"`` is the Flex-MoE block, which drops it twice.
* [code] Compositional layer, shared by all modalities: ``f_m = s_m + W [s_m ; t_m]`` with
  ``W`` = Linear(2H → H, no bias) per token ([ours] for the repo's 3×3×3 convolution).
* [code] A missing modality's fused feature is the shared feature of one available modality,
  ``missing_source="random"``: in training a uniformly random available modality (the repo's
  training, ``mode=random``, draws the available modalities in random order with
  ``random.sample`` and takes ``mode_split[0]``; drawn here with torch's global RNG, which
  the runner seeds, so a run is deterministic under its seed), at evaluation the first
  available one (the repo's ``mode_split[0]`` of a given mode). Taken per sample here (the
  repo's mode is per batch).
  ``"first"`` takes the first available modality in training too; ``"mean"`` averages the
  available shared features (the repo's commented-out variant). The compositional layer is
  not applied to the substitute, as in the repo.
* [ours] Head: mean over each modality's fused tokens, concatenated, one Linear → C.
* [code] Aux loss ``alpha·L_shared + beta·L_spec`` (alpha 0.1, beta 0.02), returned through
  the contract. L_shared: L1 (mean absolute difference) over the cycle of modality pairs
  (1,2),(2,3),…,(M,1), summed over pairs (for M = 2 the one pair is counted once [ours]).
  L_spec: cross-entropy of a domain classifier Linear(H → M) on each modality's pooled
  specific feature, label = the modality's index.
* [ours] Loss scopes: ``shared_pairs="observed"`` averages each pair's L1 over the samples that
  observe both modalities (a pair that no sample has contributes 0); ``"all"`` averages over
  the batch as the repo does. ``spec_scope="observed"`` averages L_spec over observed
  (sample, modality) entries; ``"all"`` over every entry as the repo does.
* [ours] Missing modalities never reach an encoder (``missing_fill="zero_embed"``: tokens
  of missing rows are zeros and S, T_m skip them). ``missing_fill="zero_input"`` feeds a zero
  input to the tokeniser and runs S and T_m on every row, as the repo does with zeroed
  images; with ``shared_pairs="all"`` and ``spec_scope="all"`` it is the repo's behaviour.
* [ours] ``random_drop``: probability that a training sample's observed set is replaced by a
  random subset (size r ~ U{1..n_observed}, then a uniformly random subset of that size: the
  repo's stage-2 ``mode=random``, per sample over the truly observed modalities). Default 0.
* [ours] ``dropout`` 0.5 inside the encoders (the shared protocol, docs/models §0.4; the repo's
  CNN encoders have none).
* Training: the repo's SGD / batch 1 / iteration schedule does not fit this setting; the
  shared protocol applies (Adam lr 1e-4, batch 8, 50 epochs, H 128, P 16).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any, Literal, get_args

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from bench.blocks import (
    AttnDropouts,
    MissingFill,
    Mlp,
    ModalityTokenizer,
    TransformerBlock,
    encode_observed,
)
from bench.data.core import Batch, DataSpec
from bench.model import BenchModel
from bench.registry import register_model

Encoder = Literal["transformer", "mlp"]
MissingSource = Literal["random", "first", "mean"]
Scope = Literal["observed", "all"]
ENCODERS, MISSING_SOURCES, SCOPES = get_args(Encoder), get_args(MissingSource), get_args(Scope)


def cycle_pairs(num_modalities: int) -> list[tuple[int, int]]:
    """The repo's cycle (0,1),(1,2),…,(M−1,0) as unordered pairs without repeats."""
    pairs: list[tuple[int, int]] = []
    for i in range(num_modalities):
        j = (i + 1) % num_modalities
        if i != j and (j, i) not in pairs:
            pairs.append((i, j))
    return pairs


def random_subset_of_size(observed: Tensor) -> Tensor:
    """Per sample: r ~ U{1..n_observed}, keep r observed modalities chosen uniformly."""
    n = observed.sum(1, keepdim=True)
    r = (torch.rand(n.shape, device=observed.device) * n).floor() + 1
    scores = torch.where(observed, torch.rand(observed.shape, device=observed.device), 2.0)
    rank = scores.argsort(1).argsort(1)
    return observed & (rank < r)


def make_encoder(kind: str, hidden: int, num_heads: int, mlp_ratio: int, dropout: float,
                 attn_dropouts: AttnDropouts = "once") -> nn.Module:
    """One token encoder: a pre-LN transformer block or a 2-layer token MLP."""
    if kind == "transformer":
        return TransformerBlock(hidden, num_heads, mlp_ratio, dropout, "standard",
                                attn_dropouts=attn_dropouts)
    if kind == "mlp":
        return Mlp(hidden, mlp_ratio, dropout)
    raise ValueError(f"encoder must be one of {ENCODERS}, got {kind!r}")


def _check(name: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ValueError(f"{name} must be one of {allowed}, got {value!r}")


@register_model("shaspec")
class ShaSpec(BenchModel):
    """Shared + specific encoders, shared compositional layer, shared-feature substitution."""

    def __init__(self, spec: DataSpec, hidden: int = 128, num_patches: int = 16,
                 encoder: Encoder = "transformer", num_heads: int = 4, mlp_ratio: int = 2,
                 dropout: float = 0.5, alpha: float = 0.1, beta: float = 0.02,
                 missing_source: MissingSource = "random", shared_pairs: Scope = "observed",
                 spec_scope: Scope = "observed", random_drop: float = 0.0,
                 missing_fill: MissingFill = "zero_embed",
                 attn_dropouts: AttnDropouts = "once") -> None:
        super().__init__(spec)
        _check("missing_source", missing_source, MISSING_SOURCES)
        _check("shared_pairs", shared_pairs, SCOPES)
        _check("spec_scope", spec_scope, SCOPES)
        if not 0.0 <= random_drop <= 1.0:
            raise ValueError(f"random_drop must lie in [0, 1], got {random_drop}")
        m = spec.num_modalities
        self.alpha, self.beta = alpha, beta
        self.missing_source = missing_source
        self.shared_pairs, self.spec_scope = shared_pairs, spec_scope
        self.random_drop, self.missing_fill = random_drop, missing_fill
        self.token_shape = (num_patches, hidden)
        self.tokenizer = ModalityTokenizer(spec, num_patches, hidden, missing_fill)
        self.shared = make_encoder(encoder, hidden, num_heads, mlp_ratio, dropout, attn_dropouts)
        self.specific = nn.ModuleDict({
            c: make_encoder(encoder, hidden, num_heads, mlp_ratio, dropout, attn_dropouts)
            for c in spec.letters})
        self.compose = nn.Linear(2 * hidden, hidden, bias=False)
        self.domain_classifier = nn.Linear(hidden, m)
        self.head = nn.Linear(m * hidden, spec.num_classes)
        pairs = cycle_pairs(m)
        self.register_buffer("pair_i", torch.tensor([p[0] for p in pairs], dtype=torch.long),
                             persistent=False)
        self.register_buffer("pair_j", torch.tensor([p[1] for p in pairs], dtype=torch.long),
                             persistent=False)

    def run_info(self) -> dict[str, Any]:
        return {"missing_fill": f"shared_{self.missing_source}", "encoder_fill": self.missing_fill,
                "shared_pairs": self.shared_pairs, "spec_scope": self.spec_scope,
                "random_drop": self.random_drop}

    def _encode(self, module: nn.Module, x: Tensor, observed: Tensor) -> Tensor:
        """Observed rows only (``zero_embed``) or every row (``zero_input``, repo parity)."""
        if self.missing_fill == "zero_input":
            return module(x)
        return encode_observed(module, x, observed, self.token_shape)

    def features(self, batch: Batch) -> tuple[Tensor, Tensor, Tensor]:
        """Shared ``s``, specific ``t`` and fused ``f`` features, each ``[B, M, P, H]``."""
        obs = batch.observed
        tokens = self.tokenizer(batch)
        letters = self.spec.letters
        stacked = torch.stack([tokens[c] for c in letters], dim=1)
        b, m = obs.shape
        s = self._encode(self.shared, stacked.flatten(0, 1), obs.flatten()).view_as(stacked)
        t = torch.stack([self._encode(self.specific[c], tokens[c], obs[:, j])
                         for j, c in enumerate(letters)], dim=1)
        composed = s + self.compose(torch.cat([s, t], dim=-1))
        if self.missing_source == "mean":
            weights = obs.to(s.dtype) / obs.sum(1, keepdim=True).clamp(min=1)
            substitute = torch.einsum("bm,bmph->bph", weights, s)
        else:
            substitute = s[torch.arange(b, device=s.device), self.source_modality(obs)]
        fused = torch.where(obs.view(b, m, 1, 1), composed, substitute.unsqueeze(1))
        return s, t, fused

    def source_modality(self, observed: Tensor) -> Tensor:
        """Per sample, the index of the observed modality whose shared feature fills the
        missing ones: uniformly random among the observed in training with ``"random"``
        (torch's global RNG), else the first observed."""
        if self.missing_source == "random" and self.training:
            score = torch.rand(observed.shape, device=observed.device)
            return torch.where(observed, score, -1.0).argmax(1)
        return observed.int().argmax(1)

    def shared_loss(self, s: Tensor, observed: Tensor) -> Tensor:
        """Σ over the pair cycle of the mean absolute difference of shared features."""
        if self.pair_i.numel() == 0:
            return s.new_zeros(())
        diff = (s[:, self.pair_i] - s[:, self.pair_j]).abs().mean((2, 3))  # [B, pairs]
        if self.shared_pairs == "all":
            return diff.mean(0).sum()
        both = (observed[:, self.pair_i] & observed[:, self.pair_j]).to(diff.dtype)
        return ((diff * both).sum(0) / both.sum(0).clamp(min=1)).sum()

    def specific_loss(self, t: Tensor, observed: Tensor) -> Tensor:
        """Cross-entropy of the domain classifier on pooled specific features (label = m)."""
        b, m = observed.shape
        logits = self.domain_classifier(t.mean(2))  # [B, M, M]
        labels = torch.arange(m, device=t.device).expand(b, m)
        ce = F.cross_entropy(logits.reshape(b * m, m), labels.reshape(-1),
                             reduction="none").view(b, m)
        if self.spec_scope == "all":
            return ce.mean()
        mask = observed.to(ce.dtype)
        return (ce * mask).sum() / mask.sum().clamp(min=1)

    def forward(self, batch: Batch) -> tuple[Tensor, Tensor]:
        if self.training and self.random_drop > 0:
            pick = torch.rand(len(batch), 1, device=batch.observed.device) < self.random_drop
            batch = replace(batch, observed=torch.where(
                pick, random_subset_of_size(batch.observed), batch.observed))
        s, t, fused = self.features(batch)
        logits = self.head(fused.mean(2).flatten(1))
        aux = (self.alpha * self.shared_loss(s, batch.observed)
               + self.beta * self.specific_loss(t, batch.observed))
        return logits, aux
