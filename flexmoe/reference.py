"""Flex-MoE laid out as the released code runs it: the baseline of the speed comparison.

The released code (MODELS.md §1) feeds samples through a per-sample ``DataLoader``, assembles
each modality's tokens by boolean-mask assignment, calls the MoE once per modality chunk (its
gate computing a router loss per call), runs the experts one after another, uses
``nn.Dropout`` and the default ``torch.optim.Adam``. This module rebuilds
that design around a trained-or-fresh :class:`~flexmoe.model.FlexMoE`, sharing its weights, so
``run_bench.py perf --compare-official`` times both at identical hyper-parameters and
computation: with the same weights and routing the two give the same outputs (tested).
"""

from __future__ import annotations

import copy

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from bench.blocks import Dropout
from bench.data.core import Batch, RunData
from flexmoe.model import FlexMoE, SparseFusionLayer
from flexmoe.moe import Experts, GateOutput, SparseMoE
from flexmoe.router import flexmoe_router_loss


class LoopExperts(nn.Module):
    """E separate Linear–GELU–Linear experts, each run on its own tokens in a Python loop."""

    def __init__(self, experts: Experts) -> None:
        super().__init__()
        self.mlps = nn.ModuleList()
        for e in range(experts.num_experts):
            first = nn.Linear(experts.w1.shape[1], experts.w1.shape[2])
            second = nn.Linear(experts.w2.shape[1], experts.w2.shape[2])
            with torch.no_grad():
                first.weight.copy_(experts.w1[e].t())
                first.bias.copy_(experts.b1[e])
                second.weight.copy_(experts.w2[e].t())
                second.bias.copy_(experts.b2[e])
            act = nn.GELU() if experts.activation == "gelu" else nn.ReLU()
            self.mlps.append(nn.Sequential(first, act, second))

    def forward(self, x: Tensor, index: Tensor, gates: Tensor) -> Tensor:
        out = torch.zeros_like(x)
        for e, mlp in enumerate(self.mlps):
            token, slot = (index == e).nonzero(as_tuple=True)
            if token.numel():
                out = out.index_add(0, token, gates[token, slot, None] * mlp(x[token]))
        return out


class LoopMoE(nn.Module):
    """The same gate as a :class:`~flexmoe.moe.SparseMoE`, experts run by :class:`LoopExperts`."""

    def __init__(self, moe: SparseMoE) -> None:
        super().__init__()
        if moe.combine != "sum":
            raise ValueError("the loop reference implements the weighted-sum combination only")
        self.gate = moe.gate
        self.experts = LoopExperts(moe.experts)

    def forward(self, x: Tensor) -> tuple[Tensor, GateOutput]:
        gate = self.gate(x)
        return self.experts(x, gate.index, gate.gates), gate


class PerModalityFusionLayer(SparseFusionLayer):
    """The sparse fusion layer calling its MoE once per modality chunk, as the released code."""

    def __init__(self, layer: SparseFusionLayer) -> None:
        nn.Module.__init__(self)
        self.attn_residual = layer.attn_residual
        self.norm1, self.attn, self.norm2, self.drop = (
            layer.norm1, layer.attn, layer.norm2, layer.drop)
        self.mlp = LoopMoE(layer.mlp)

    def forward(self, x: Tensor, num_modalities: int) -> tuple[Tensor, list[GateOutput]]:
        x = self.attend(x)
        outs, gates = [], []
        for chunk in self.norm2(x).chunk(num_modalities, dim=1):
            y, gate = self.mlp(chunk.reshape(-1, chunk.shape[-1]))
            outs.append(y.view_as(chunk))
            gates.append(gate)
        return x + self.drop(torch.cat(outs, dim=1)), gates


class OfficialDesignFlexMoE(FlexMoE):
    """Flex-MoE's computation in the released code's order of work.

    Each modality's tokens are written into a zero tensor by boolean-mask assignment (encoder
    output for observed rows, bank blocks for the others), and each MoE call's gate computes
    its own router loss, as the released gate does inside every call.
    """

    def embed(self, batch: Batch) -> Tensor:
        b, p, h = batch.observed.shape[0], self.num_patches, self.pos_embed.shape[-1]
        blocks = []
        for j, c in enumerate(self.spec.letters):
            mask = batch.observed[:, j]
            tokens = torch.zeros(b, p, h, device=batch.observed.device)
            if mask.sum() > 0:
                tokens[mask] = self.tokenizer.encoders[c](batch.x[c][mask])
            if (~mask).sum() > 0 and self.bank is not None:
                combo = batch.combo[~mask].clamp(min=0)
                tokens[~mask] = self.bank[combo, self.global_index[j]]
            blocks.append(tokens)
        return torch.cat(blocks, dim=1) + self.pos_embed

    def router_loss(self, gate: list[GateOutput], combo: Tensor) -> Tensor:
        """Σ of the per-call losses of one :class:`PerModalityFusionLayer` (every sparse layer
        of the copy is one)."""
        token_combo = combo.repeat_interleave(self.num_patches)
        return sum(flexmoe_router_loss(g, token_combo, self.specialize, self.generalize,
                                       self.exclude_top1) for g in gate)


def _torch_dropouts(module: nn.Module) -> None:
    """Swap the suite's fast-mask dropouts for ``nn.Dropout``, which the released code uses."""
    for name, child in module.named_children():
        if isinstance(child, Dropout):
            setattr(module, name, nn.Dropout(child.p))
        else:
            _torch_dropouts(child)


def official_design(model: FlexMoE) -> FlexMoE:
    """A copy of ``model`` (same weights) laid out as the released code: boolean-mask token
    assembly, sparse layers run per modality with a per-expert loop and a router loss per
    call, ``nn.Dropout``."""
    ref = copy.deepcopy(model)
    ref.__class__ = OfficialDesignFlexMoE  # same modules and state, the released order of work
    for i, layer in enumerate(ref.layers):
        if isinstance(layer, SparseFusionLayer):
            ref.layers[i] = PerModalityFusionLayer(layer)
    _torch_dropouts(ref)
    return ref


class PerSampleDataset(Dataset):
    """Rows of one split served one sample at a time, as the released data layer does."""

    def __init__(self, data: RunData, split: str = "train") -> None:
        self.data, self.rows = data, data.splits[split]

    def __len__(self) -> int:
        return int(self.rows.numel())

    def __getitem__(self, i: int) -> tuple[dict[str, Tensor], Tensor, Tensor, Tensor]:
        r = int(self.rows[i])
        d = self.data
        return ({c: x[r] for c, x in d.features.items()}, d.observed[r], d.combo[r], d.labels[r])


def per_sample_loader(data: RunData, batch_size: int, seed: int = 0) -> DataLoader:
    """A shuffling ``DataLoader`` collating per-sample items into :class:`Batch` objects."""
    return DataLoader(PerSampleDataset(data), batch_size=batch_size, shuffle=True,
                      generator=torch.Generator().manual_seed(seed),
                      collate_fn=lambda items: Batch(*torch.utils.data.default_collate(items)))
