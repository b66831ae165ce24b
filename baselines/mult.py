"""MulT — Multimodal Transformer (Tsai et al., ACL 2019), on per-modality patch tokens.

Choices (docs/models §3):

* [ours] Sequences: each modality's :class:`~bench.blocks.PatchEmbeddings` tokens
  ``[B, P, H]`` with ``d = H``; the original's bias-free 1×1 temporal convolution to ``d`` is
  skipped because the tokens already have width ``d`` (the tokeniser's Linear projects).
* [ours] ``text_modality``: which run modality plays the original's text (language) role.
  The family default (``TEXT_MODALITY``, written into the run's settings by
  ``default_hparams`` and recorded in ``run_info``) is MIMIC-IV's clinical notes N — the one
  text modality, as the original's word embeddings — and ADNI's clinical records C, the
  family's clinician-recorded modality and its most available one (MAG's anchor too); ADNI
  has no language modality, so this is a choice, not a mapping. A run without that letter,
  any other family, or ``text_modality=None`` has no text source.
* [code] Attention-weight dropout by the cross-modal block's SOURCE (key/value) modality, as
  the original's ``get_network``: ``attn_dropout`` (0.1) where the source is the text
  modality (CM_{l→a}, CM_{l→v}), ``attn_dropout_av`` (0.0, the original's
  ``attn_dropout_a`` = ``attn_dropout_v`` = 0.0) for every other source, ``attn_dropout``
  in all memory transformers. The M(M−1) blocks stay one batched call: the per-pair
  probabilities go to :class:`PairDropout`, one draw compared against each pair's
  probability (a plain :class:`~bench.blocks.Dropout` when all pairs share one).
* [ours] The original applies ``embed_dropout`` to the raw text input only, before its
  projection; here every modality's tokens are already projected, so that dropout is not
  tied to ``text_modality``: ``token_dropout`` (default 0, i.e. off) drops every modality's
  tokens before the cross-modal blocks.
* [code] General M: for every target i and source j ≠ i a cross-modal transformer
  CM_{j→i} (query i, key/value j), ``num_layers`` deep; the M−1 outputs of a target are
  concatenated on the feature axis and go through a self-attention ("memory") transformer of
  width (M−1)·d and depth ``max(num_layers, mem_min_layers)``; the per-target states are
  concatenated (width M(M−1)·d) and pass the residual head
  ``h + Linear(Dropout(ReLU(Linear(h))))`` then Linear → C.
* [ours] ``include_self=False``: the source set excludes j = i as the original
  (MultiBench's generic MulT includes it: ``True``, width M·d per target).
* [code] Encoder: input ·√width + sinusoidal positions (fairseq, starting at 1) + dropout
  ``embed_dropout``, applied to the key/value input too (separate dropout draws for key and
  value); pre-LN layers ``x + Drop_res(MHA(LN(x), LN(k), LN(v)))`` with one LayerNorm for q, k
  and v, then ``x + Drop_res(fc2(Drop_relu(ReLU(fc1(LN(x))))))`` with fc1 width 4·width;
  final LayerNorm. MHA: fused 3·width in-projection with bias and out-projection, xavier
  uniform weights, zero biases, attention-weight dropout.
* [ours] ``attn_mask=False``: no causal (future) mask, which has no meaning for unordered
  patches; ``True`` adds the original's mask with offset ``1 + |T_kv − T_q|``.
* [ours] ``padding_positions=False``: every token gets its position. ``True`` keeps the
  original quirk: a token whose first feature is exactly 0 is treated as padding and gets
  no positional embedding (this hits every zero-filled token of a missing modality).
* [code] ``pool="last"``: the memory transformer's last time step; ``"mean"`` [ours]
  averages its tokens instead.
* [ours] Missing modalities: no native mechanism; tokens of a missing modality are zeros at the
  encoder output (``missing_fill="zero_embed"``, docs/models §0.3; the encoder never sees the
  row); ``"zero_input"`` encodes a zero input instead. Recorded in ``run_info``.
* Hyper-parameters: [ours] d = H = 128, 4 heads, ``num_layers=1`` (docs/models: 1–2 in the
  Flex-MoE setting; the memory transformers keep depth 3) and the shared protocol for
  training (Adam lr 1e-4, batch 8, 50 epochs); [code] the original's dropouts: attention
  0.1 (text source, memory) / 0.0 (audio or vision source), ReLU 0.1, residual 0.1,
  output 0.0, embedding 0.25.

All cross-modal transformers run as one batched call per layer: each keeps its own weights,
stacked on a leading axis, and the M(M−1) (query, key/value) pairs are multiplied with one
batched matmul; the M memory transformers are batched the same way.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, Literal, get_args

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from bench.blocks import Dropout, MissingFill, ModalityTokenizer, attend_heads
from bench.data.core import Batch, DataSpec
from bench.model import BenchModel
from bench.registry import register_model

Pool = Literal["last", "mean"]
POOLS = get_args(Pool)
#: The modality that plays the original's text (language) role, per data family (see above).
TEXT_MODALITY = {"adni": "C", "mimic": "N"}


def default_text_modality(spec: DataSpec) -> str | None:
    """The family's text-role letter when the run has it, else None (no text source)."""
    c = TEXT_MODALITY.get(spec.family)
    return c if c is not None and c in spec.letters else None


class StackedLinear(nn.Module):
    """``n`` independent Linear layers: input ``[n, ..., d_in]`` → ``[n, ..., d_out]`` in one
    batched matmul. Xavier-uniform weights and zero biases, as MulT's fairseq layers."""

    def __init__(self, n: int, d_in: int, d_out: int) -> None:
        super().__init__()
        bound = math.sqrt(6.0 / (d_in + d_out))
        self.weight = nn.Parameter(torch.empty(n, d_in, d_out).uniform_(-bound, bound))
        self.bias = nn.Parameter(torch.zeros(n, d_out))

    def forward(self, x: Tensor, outputs: slice = slice(None)) -> Tensor:
        """Apply the layers, optionally computing only the output features ``outputs``."""
        w, b = self.weight[:, :, outputs], self.bias[:, outputs]
        flat = x.reshape(x.shape[0], -1, x.shape[-1])
        # bmm then the bias, not baddbmm: fvcore does not count baddbmm
        return (torch.bmm(flat, w) + b.unsqueeze(1)).view(*x.shape[:-1], -1)


class StackedLayerNorm(nn.Module):
    """``n`` independent LayerNorms over the last axis of ``[n, ..., d]``."""

    def __init__(self, n: int, d: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(n, d))
        self.bias = nn.Parameter(torch.zeros(n, d))

    def forward(self, x: Tensor) -> Tensor:
        shape = (x.shape[0],) + (1,) * (x.dim() - 2) + (x.shape[-1],)
        return torch.addcmul(self.bias.view(shape), F.layer_norm(x, x.shape[-1:]),
                             self.weight.view(shape))


def sinusoid_table(num_positions: int, d: int) -> Tensor:
    """Fairseq sinusoidal embeddings ``[num_positions, d]``; row 0 (padding) is zero."""
    half = d // 2
    freq = torch.exp(torch.arange(half) * -(math.log(10000.0) / max(half - 1, 1)))
    angles = torch.arange(num_positions).unsqueeze(1) * freq.unsqueeze(0)
    table = torch.cat([torch.sin(angles), torch.cos(angles)], dim=1)
    table = F.pad(table, (0, d - 2 * half))
    table[0] = 0.0
    return table


class PairDropout(nn.Module):
    """Inverted dropout with its own probability per stacked encoder, in one call.

    The input's leading axis is ``n·B`` (encoder-major, as :meth:`StackedEncoderLayer.attention`
    lays out the attention weights); encoder ``e``'s elements are dropped with probability
    ``probs[e]`` and the survivors scaled by ``1 / (1 − probs[e])``: one random draw and a
    broadcast compare over all encoders, no loop. ``p`` is the largest probability, so
    :func:`~bench.blocks.attend_heads` takes the explicit-softmax path while any encoder drops.
    """

    def __init__(self, probs: Sequence[float]) -> None:
        super().__init__()
        if not all(0.0 <= q < 1.0 for q in probs):
            raise ValueError(f"dropout probabilities must lie in [0, 1), got {list(probs)}")
        self.p, self.prob_list = max(probs), [float(q) for q in probs]
        self.register_buffer("probs", torch.tensor(probs).unsqueeze(1), persistent=False)
        self.register_buffer("scale", 1.0 / (1.0 - self.probs), persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        if not self.training or self.p == 0.0:
            return x
        flat = x.reshape(self.probs.shape[0], -1)
        keep = torch.rand_like(flat) >= self.probs
        return (flat * keep * self.scale.to(x.dtype)).view(x.shape)

    def extra_repr(self) -> str:
        return f"probs={self.prob_list}"


def attention_dropout(n: int, p: float | Sequence[float]) -> Dropout | PairDropout:
    """Attention-weight dropout for ``n`` stacked encoders: one :class:`~bench.blocks.Dropout`
    when they share a probability (its fast mask), else a :class:`PairDropout`."""
    probs = [float(p)] * n if isinstance(p, (int, float)) else [float(q) for q in p]
    if len(probs) != n:
        raise ValueError(f"{len(probs)} attention-dropout probabilities for {n} encoders")
    return Dropout(probs[0]) if len(set(probs)) == 1 else PairDropout(probs)


class StackedEncoderLayer(nn.Module):
    """``n`` pre-LN MulT layers with their own weights; self- or cross-attention."""

    def __init__(self, n: int, d: int, num_heads: int, attn_dropout: float | Sequence[float],
                 relu_dropout: float, res_dropout: float) -> None:
        super().__init__()
        if d % num_heads:
            raise ValueError(f"width {d} is not divisible by {num_heads} heads")
        self.d, self.num_heads = d, num_heads
        self.norm_attn = StackedLayerNorm(n, d)
        self.in_proj = StackedLinear(n, d, 3 * d)
        self.out_proj = StackedLinear(n, d, d)
        self.norm_ff = StackedLayerNorm(n, d)
        self.fc1 = StackedLinear(n, d, 4 * d)
        self.fc2 = StackedLinear(n, 4 * d, d)
        self.attn_drop = attention_dropout(n, attn_dropout)
        self.relu_drop = Dropout(relu_dropout)
        self.res_drop = Dropout(res_dropout)

    def attention(self, q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None) -> Tensor:
        """Multi-head attention of ``[n, B, T, d]`` projections; ``mask`` True = may attend."""
        n, b, tq, d = q.shape
        q, k, v = (t.reshape(n * b, t.shape[2], self.num_heads, -1).transpose(1, 2)
                   for t in (q, k, v))
        a = attend_heads(q, k, v, self.attn_drop, mask)
        return a.transpose(1, 2).reshape(n, b, tq, d)

    def forward(self, x: Tensor, kv: tuple[Tensor, Tensor] | None = None,
                mask: Tensor | None = None) -> Tensor:
        d = self.d
        h = self.norm_attn(x)
        if kv is None:
            q, k, v = self.in_proj(h).split(d, dim=-1)
        else:
            q = self.in_proj(h, slice(0, d))
            xk, xv = kv
            if xk is xv:  # no dropout drew separate key and value inputs: one projection
                k, v = self.in_proj(self.norm_attn(xk), slice(d, 3 * d)).split(d, dim=-1)
            else:
                k = self.in_proj(self.norm_attn(xk), slice(d, 2 * d))
                v = self.in_proj(self.norm_attn(xv), slice(2 * d, 3 * d))
        x = x + self.res_drop(self.out_proj(self.attention(q, k, v, mask)))
        h = self.relu_drop(F.relu(self.fc1(self.norm_ff(x))))
        return x + self.res_drop(self.fc2(h))


class StackedEncoder(nn.Module):
    """``n`` MulT ``TransformerEncoder``s of width ``d`` run side by side on ``[n, B, T, d]``.

    With ``kv`` given, each is a cross-modal transformer (queries from ``x``, keys and values
    from ``kv``); otherwise a self-attention transformer. ``attn_dropout`` is one probability
    for all ``n`` or one per encoder.
    """

    def __init__(self, n: int, d: int, num_heads: int, num_layers: int, num_positions: int,
                 attn_dropout: float | Sequence[float], relu_dropout: float, res_dropout: float,
                 embed_dropout: float, attn_mask: bool, padding_positions: bool) -> None:
        super().__init__()
        self.scale = math.sqrt(d)
        self.attn_mask, self.padding_positions = attn_mask, padding_positions
        self.register_buffer("positions", sinusoid_table(num_positions + 1, d), persistent=False)
        self.embed_drop = Dropout(embed_dropout)
        self.layers = nn.ModuleList(
            StackedEncoderLayer(n, d, num_heads, attn_dropout, relu_dropout, res_dropout)
            for _ in range(num_layers))
        self.norm = StackedLayerNorm(n, d)

    def embed(self, x: Tensor) -> Tensor:
        """``x·√d`` plus positions 1…T (0 = none for "padding" tokens under the quirk)."""
        t = x.shape[2]
        if self.padding_positions:
            index = torch.arange(1, t + 1, device=x.device) * (x[..., 0] != 0)
            pos = self.positions[index]
        else:
            pos = self.positions[1:t + 1]
        return self.scale * x + pos

    def future_mask(self, tq: int, tk: int, device: torch.device) -> Tensor:
        """The original's causal mask (True = may attend), offset ``1 + |T_kv − T_q|``."""
        ones = torch.ones(tq, tk, dtype=torch.bool, device=device)
        return ~torch.triu(ones, diagonal=1 + abs(tk - tq))

    def forward(self, x: Tensor, kv: Tensor | None = None) -> Tensor:
        x_in = x
        x = self.embed_drop(self.embed(x_in))
        pair = None
        if kv is not None:
            src = self.embed(kv)
            pair = (self.embed_drop(src), self.embed_drop(src))
        tk = x_in.shape[2] if kv is None else kv.shape[2]
        mask = self.future_mask(x_in.shape[2], tk, x.device) if self.attn_mask else None
        for layer in self.layers:
            x = layer(x, pair, mask)
        return self.norm(x)


@register_model("mult")
class MulT(BenchModel):
    """Multimodal Transformer: pairwise cross-modal attention, then per-target self-attention."""

    def __init__(self, spec: DataSpec, hidden: int = 128, num_patches: int = 16,
                 num_heads: int = 4, num_layers: int = 1, mem_min_layers: int = 3,
                 attn_dropout: float = 0.1, attn_dropout_av: float = 0.0,
                 text_modality: str | None = None, relu_dropout: float = 0.1,
                 res_dropout: float = 0.1, out_dropout: float = 0.0, embed_dropout: float = 0.25,
                 token_dropout: float = 0.0, attn_mask: bool = False,
                 padding_positions: bool = False, include_self: bool = False,
                 pool: Pool = "last", missing_fill: MissingFill = "zero_embed") -> None:
        super().__init__(spec)
        m = spec.num_modalities
        if m < 2:
            raise ValueError(f"MulT needs at least two modalities; got {spec.letters!r}")
        if pool not in POOLS:
            raise ValueError(f"pool must be one of {POOLS}, got {pool!r}")
        if text_modality is not None and text_modality not in spec.letters:
            raise ValueError(f"text_modality {text_modality!r} is not a modality of this run "
                             f"({spec.letters!r}); use one of its letters or None")
        self.missing_fill, self.pool, self.text_modality = missing_fill, pool, text_modality
        sources = [[j for j in range(m) if include_self or j != i] for i in range(m)]
        self.num_sources = len(sources[0])
        self.register_buffer("target_index", torch.tensor(
            [i for i in range(m) for _ in sources[i]]), persistent=False)
        self.register_buffer("source_index", torch.tensor(
            [j for row in sources for j in row]), persistent=False)
        self.tokenizer = ModalityTokenizer(spec, num_patches, hidden, missing_fill)
        self.token_drop = Dropout(token_dropout)
        # the original picks a cross-modal block's attention dropout by its SOURCE modality:
        # attn_dropout from text, attn_dropout_a / _v from audio / vision (both 0.0)
        self.pair_attn_dropout = [
            attn_dropout if spec.letters[j] == text_modality else attn_dropout_av
            for row in sources for j in row]
        shared = (relu_dropout, res_dropout, embed_dropout, attn_mask, padding_positions)
        self.cross = StackedEncoder(m * self.num_sources, hidden, num_heads, num_layers,
                                    num_patches, self.pair_attn_dropout, *shared)
        width = self.num_sources * hidden
        self.mem_layers = max(num_layers, mem_min_layers)
        self.mem = StackedEncoder(m, width, num_heads, self.mem_layers, num_patches,
                                  attn_dropout, *shared)
        combined = m * width
        self.proj1 = nn.Linear(combined, combined)
        self.proj2 = nn.Linear(combined, combined)
        self.out_drop = Dropout(out_dropout)
        self.out_layer = nn.Linear(combined, spec.num_classes)

    @classmethod
    def default_hparams(cls, spec: DataSpec) -> dict[str, Any]:
        return {**super().default_hparams(spec), "text_modality": default_text_modality(spec)}

    def run_info(self) -> dict[str, Any]:
        return {"missing_fill": self.missing_fill, "mem_layers": self.mem_layers,
                "fused_dim": self.proj1.in_features, "text_modality": self.text_modality}

    def target_states(self, batch: Batch) -> Tensor:
        """Per-target pooled memory states, concatenated in canonical order ``[B, M·S·d]``
        (S = number of sources per target)."""
        tokens = self.tokenizer(batch)
        x = self.token_drop(torch.stack([tokens[c] for c in self.spec.letters]))  # [M,B,P,d]
        m, b, p, d = x.shape
        cross = self.cross(x.index_select(0, self.target_index),
                           x.index_select(0, self.source_index))  # [M·S, B, P, d]
        per_target = cross.view(m, self.num_sources, b, p, d).permute(0, 2, 3, 1, 4)
        mem = self.mem(per_target.reshape(m, b, p, self.num_sources * d))
        pooled = mem[:, :, -1] if self.pool == "last" else mem.mean(2)  # [M, B, S·d]
        return pooled.transpose(0, 1).reshape(b, -1)

    def forward(self, batch: Batch) -> tuple[Tensor, Tensor]:
        h = self.target_states(batch)
        h = h + self.proj2(self.out_drop(F.relu(self.proj1(h))))
        return self.out_layer(h), h.new_zeros(())
