"""I2MoE — Interpretable Multimodal Interaction-aware Mixture-of-Experts (Xin et al., ICML 2025).

Choices (docs/models §11; [code] = Raina-Xin/I2MoE):

* [code] Encoders: one :class:`~bench.blocks.PatchEmbeddings` per modality (the shared
  :class:`~bench.blocks.ModalityTokenizer`), run once per batch outside the experts, as the
  official loop encodes once and hands the same tokens to every expert.
* [code] Backbone f (one interaction expert): Flex-MoE's dense transformer stack — learned
  positional embedding (zero init) on the concatenated tokens ``[B, M·P, H]``,
  ``num_layers`` :class:`~bench.blocks.TransformerBlock` (``attn_residual="official"``:
  ``a + Dropout(a)``), mean over each modality's P tokens, concatenation, ``Linear(M·H, C)``.
  ``num_layers=2`` as the ADNI script.
* [code] ``fusion_sparse=True`` uses Flex-MoE's sparse layer (the shared
  :class:`~flexmoe.moe.SparseMoE` on each modality chunk) in layers 1, 3, …; the scripts
  run the dense backbone. [ours] Its gate loss is the balance loss cv²(Σ importance) +
  cv²(Σ load) per modality chunk (no combination cross-entropy), summed over chunks and
  sparse layers, averaged over every pass of every expert and weighted by
  ``gate_loss_weight`` (0.01 [code]: the ``--gate_loss_weight`` default of
  ``src/imoe/train_transformer.py``, which the scripts pass too); ``num_experts=16`` [code:
  the ``--num_experts`` default; the scripts pass 8 for ADNI, 4 for MIMIC-IV, unused by their
  dense backbone]; ``top_k=4`` [ours, Flex-MoE's]: the released top-k is 2 [code: the
  ``--top_k`` default, that of its ``TransformerEncoderLayer`` and ``FMoETransformerMLP``, and
  the scripts' value]. Unlike the released code, which averages the gate losses
  through ``torch.tensor(list)`` and so detaches them, the loss here keeps its gradient.
* [code] M + 2 interaction experts, deep copies of one initialised backbone (they start
  identical): uniqueness U_1…U_M, synergy S, redundancy R.
* [code] Training: every expert runs M + 1 passes, o⁰ on all tokens and o^j with modality
  j's *encoded* tokens replaced by ``randn_like`` noise (fresh noise per expert). The M + 1
  passes of one expert run as one pass over the batch axis (the perturbed token tensors
  stacked); the experts run one after another: batching them too with ``torch.func.vmap``
  over stacked weights gave no clear gain on CPU, where a step is compute-bound (each
  expert's call already multiplies (M + 1)·B·M·P tokens), and cannot take the sparse
  backbone's data-dependent routing.
* [code] Interaction losses on the logits: U_i = mean over j ≠ i of
  TripletMargin(anchor o⁰, positive o^j, negative o^i; margin 1, p 2, eps 1e-7);
  S = mean_j mean_b cos(o⁰, o^j) (pushes the perturbed outputs away);
  R = mean_j mean_b (1 − cos(o⁰, o^j)) (pulls them together);
  L_int = (Σ_i U_i + S + R) / (M + 2); aux = ``interaction_loss_weight`` · L_int.
  [ours] With one modality U_1 has no positive and is 0 (the released code divides by 0).
* [code] Re-weighting: MLP on the concatenated per-modality means of the encoder tokens
  ``[B, M·H]`` → ``num_layers_rw`` layers (width ``hidden_rw``, ReLU, dropout 0.5) → M + 2
  scores → softmax(scores / ``temperature``); prediction Σ_e w_e · o⁰_e.
* [code] Inference (eval mode): o⁰ of every expert only, no perturbed passes, so no
  interaction loss (aux holds only the sparse gate loss, if any).
* Missing modalities [ours]: the released scripts train on complete cases only
  (``use_common_ids=True``); here a missing modality's encoder tokens are zeros
  (``missing_fill="zero_embed"``, the encoder never sees the row; ``"zero_input"`` encodes
  a zero input), recorded in ``run_info``. The perturbation replaces *encoded* tokens, so a
  zero-filled modality and its random replacement differ: o^j of a sample missing j still
  differs from its o⁰, and the interaction losses see that difference.
* Hyper-parameters: the I2MoE scripts for the paper's own ADNI and MIMIC-IV runs fit the
  Flex-MoE protocol's "original paper's settings" rule, so they apply where known: Adam
  lr 1e-4, batch 32, H 128, heads 4, dropout 0.5, ``num_layers_rw=3``, T 1; ADNI 50
  epochs, P 16, λ_int 0.3; MIMIC 30 epochs, P 4, λ_int 0.01. ``hidden_rw=256`` (the code's
  default and the MIMIC script's value; [unverified] for ADNI, whose script searches
  {64, 128, 256} without saying which won). Other
  data families get the shared protocol (lr 1e-4, batch 8, 50 epochs), P 16 and the
  code's default λ_int 0.01.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from bench.blocks import AttnResidual, MissingFill, ModalityTokenizer, TransformerBlock, mlp_head
from bench.data.core import Batch, DataSpec
from bench.model import SHARED_TRAINING, BenchModel
from bench.registry import register_model
from flexmoe.model import SparseFusionLayer
from flexmoe.moe import GateOutput, SparseMoE, cv_squared

#: The I2MoE scripts' settings for the data sets of the Flex-MoE paper (see module doc).
FAMILY_DEFAULTS: dict[str, dict[str, Any]] = {
    "adni": {"batch_size": 32, "epochs": 50, "num_patches": 16, "interaction_loss_weight": 0.3},
    "mimic": {"batch_size": 32, "epochs": 30, "num_patches": 4, "interaction_loss_weight": 0.01},
}

TRIPLET_MARGIN = 1.0
TRIPLET_EPS = 1e-7


def expert_names(letters: str) -> list[str]:
    """``U_<letter>`` per modality, then ``S`` (synergy) and ``R`` (redundancy)."""
    return [f"U_{c}" for c in letters] + ["S", "R"]


def interaction_losses(outputs: Tensor, margin: float = TRIPLET_MARGIN,
                       eps: float = TRIPLET_EPS) -> Tensor:
    """Per-expert interaction losses ``[M + 2]`` (U_1…U_M, S, R) from the pass outputs.

    ``outputs`` is ``[M + 2, M + 1, B, C]``: expert e's logits with all tokens (pass 0) and
    with modality j's tokens replaced by noise (pass j + 1).
    """
    m = outputs.shape[1] - 1
    uni, syn, red = outputs[:m], outputs[m], outputs[m + 1]
    # uniqueness: triplet(anchor o⁰, positive o^j, negative o^i) for expert i, every j ≠ i
    dist = F.pairwise_distance(uni[:, :1], uni[:, 1:], p=2, eps=eps)  # [M(i), M(j), B]
    negative = dist.diagonal(dim1=0, dim2=1).t()  # d(o⁰_i, o^i_i): [M, B]
    triplet = (margin + dist - negative.unsqueeze(1)).clamp_min(0).mean(-1)  # [M, M]
    off = ~torch.eye(m, dtype=torch.bool, device=outputs.device)
    uniqueness = (triplet * off).sum(1) / max(m - 1, 1)

    def mean_cosine(passes: Tensor) -> Tensor:
        anchor = F.normalize(passes[0], dim=-1)
        return (anchor * F.normalize(passes[1:], dim=-1)).sum(-1).mean()

    return torch.cat([uniqueness, mean_cosine(syn).view(1), (1 - mean_cosine(red)).view(1)])


class FusionBackbone(nn.Module):
    """One interaction expert: pos-embed, transformer layers, per-modality mean pool, Linear."""

    def __init__(self, num_modalities: int, num_classes: int, hidden: int, num_patches: int,
                 num_heads: int, num_layers: int, dropout: float, attn_residual: str,
                 sparse: bool, num_experts: int, top_k: int) -> None:
        super().__init__()
        self.num_modalities, self.num_patches = num_modalities, num_patches
        self.pos_embed = nn.Parameter(torch.zeros(1, num_modalities * num_patches, hidden))
        self.layers = nn.ModuleList(
            SparseFusionLayer(hidden, num_heads, dropout, attn_residual,
                              SparseMoE(hidden, num_experts, top_k)) if sparse and i % 2 == 0
            else TransformerBlock(hidden, num_heads, 2, dropout, attn_residual)
            for i in range(num_layers))
        self.head = nn.Linear(num_modalities * hidden, num_classes)

    def balance(self, gate: GateOutput, passes: int) -> Tensor:
        """Balance loss of one sparse layer per pass ``[passes]``, summed over modality chunks.

        The layer routes modality-major chunks of the pass-major batch, so the token axis
        splits as (modality, pass, sample·token).
        """
        e = gate.clean.shape[1]
        importance = gate.importance.view(self.num_modalities, passes, -1, e).sum(2)
        load = gate.load.view(self.num_modalities, passes, -1, e).sum(2)
        return (cv_squared(importance) + cv_squared(load)).sum(0)

    def forward(self, x: Tensor, passes: int = 1) -> tuple[Tensor, Tensor]:
        """Tokens ``[passes·B, M·P, H]`` → logits ``[passes·B, C]`` and gate loss ``[passes]``."""
        x = x + self.pos_embed
        gate_loss = x.new_zeros(passes)
        for layer in self.layers:
            if isinstance(layer, SparseFusionLayer):
                x, gate = layer(x, self.num_modalities)
                gate_loss = gate_loss + self.balance(gate, passes)
            else:
                x = layer(x)
        pooled = x.view(x.shape[0], self.num_modalities, self.num_patches, -1).mean(2)
        return self.head(pooled.flatten(1)), gate_loss


@register_model("i2moe")
class I2MoE(BenchModel):
    """M + 2 interaction experts (uniqueness per modality, synergy, redundancy), re-weighted
    per sample by an MLP (Xin et al. 2025)."""

    def __init__(self, spec: DataSpec, hidden: int = 128, num_patches: int = 16,
                 num_heads: int = 4, num_layers: int = 2, dropout: float = 0.5,
                 attn_residual: AttnResidual = "official", hidden_rw: int = 256,
                 num_layers_rw: int = 3,
                 dropout_rw: float = 0.5, temperature: float = 1.0,
                 interaction_loss_weight: float = 0.01, fusion_sparse: bool = False,
                 num_experts: int = 16, top_k: int = 4, gate_loss_weight: float = 0.01,
                 missing_fill: MissingFill = "zero_embed") -> None:
        super().__init__(spec)
        m = spec.num_modalities
        self.temperature = temperature
        self.interaction_loss_weight = interaction_loss_weight
        self.gate_loss_weight = gate_loss_weight
        self.fusion_sparse, self.missing_fill = fusion_sparse, missing_fill
        self.expert_names = expert_names(spec.letters)
        self.tokenizer = ModalityTokenizer(spec, num_patches, hidden, missing_fill)
        backbone = FusionBackbone(m, spec.num_classes, hidden, num_patches, num_heads,
                                  num_layers, dropout, attn_residual, fusion_sparse,
                                  num_experts, top_k)
        self.experts = nn.ModuleList(copy.deepcopy(backbone) for _ in range(m + 2))
        self.reweight = mlp_head(m * hidden, m + 2, hidden_rw, num_layers_rw, dropout_rw)

    @classmethod
    def default_hparams(cls, spec: DataSpec) -> dict[str, Any]:
        return {**SHARED_TRAINING, **FAMILY_DEFAULTS.get(spec.family, {})}

    def run_info(self) -> dict[str, Any]:
        return {"missing_fill": self.missing_fill,
                "backbone": "sparse" if self.fusion_sparse else "dense"}

    def tokens(self, batch: Batch) -> Tensor:
        """Encoder tokens ``[B, M, P, H]`` (zeros, or the encoded zero input, where missing)."""
        tokens = self.tokenizer(batch)
        return torch.stack([tokens[c] for c in self.spec.letters], dim=1)

    def interaction_weights(self, tokens: Tensor) -> Tensor:
        """Per-sample expert weights ``[B, M + 2]`` (rows sum to one)."""
        scores = self.reweight(tokens.mean(2).flatten(1))
        return torch.softmax(scores / self.temperature, dim=1)

    def perturbed_inputs(self, tokens: Tensor) -> Tensor:
        """``[M + 2, M + 1, B, M, P, H]``: per expert the clean tokens, then for every j the
        tokens with modality j replaced by fresh standard-normal noise."""
        e, (b, m, p, h) = len(self.experts), tokens.shape
        noise = torch.randn(e, m, b, p, h, dtype=tokens.dtype, device=tokens.device)
        swap = torch.eye(m, dtype=torch.bool, device=tokens.device).view(1, m, 1, m, 1, 1)
        perturbed = torch.where(swap, noise.unsqueeze(3), tokens)
        return torch.cat([tokens.expand(e, 1, *tokens.shape), perturbed], dim=1)

    def expert_passes(self, tokens: Tensor, perturb: bool) -> tuple[Tensor, Tensor]:
        """Logits ``[M + 2, K, B, C]`` and gate losses ``[M + 2, K]`` of every expert, with
        K = M + 1 passes (``perturb``) or K = 1 (o⁰ only); one batched call per expert."""
        if perturb:
            inputs = self.perturbed_inputs(tokens)
        else:
            inputs = tokens.expand(len(self.experts), 1, *tokens.shape)
        b, k = tokens.shape[0], inputs.shape[1]
        logits, gate_loss = [], []
        for expert, x in zip(self.experts, inputs):
            out, gate = expert(x.flatten(0, 1).flatten(1, 2), k)  # [K·B, M·P, H]
            logits.append(out.view(k, b, -1))
            gate_loss.append(gate)
        return torch.stack(logits), torch.stack(gate_loss)

    def forward(self, batch: Batch) -> tuple[Tensor, Tensor]:
        tokens = self.tokens(batch)
        weights = self.interaction_weights(tokens)
        outputs, gate_loss = self.expert_passes(tokens, perturb=self.training)
        logits = torch.einsum("be,ebc->bc", weights, outputs[:, 0])
        aux = tokens.new_zeros(())
        if self.training:
            aux = aux + self.interaction_loss_weight * interaction_losses(outputs).mean()
        if self.fusion_sparse:
            aux = aux + self.gate_loss_weight * gate_loss.mean()
        return logits, aux
