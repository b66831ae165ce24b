"""Flex-MoE laid out as the released code runs it: the baseline of the speed comparison.

The released code (docs/models §1, §1.11) builds its MoE layer on FastMoE with *fused* experts
(its ``FMoETransformerMLP`` passes no per-expert module, so ``experts_fused`` is True and the
Python per-expert loop of ``FixedFMoE.expert_fn`` never runs). One MoE call is: count the
token–expert assignments per expert and sort them by expert (``prepare_forward``), one scatter
of the rows into that order (``MOEScatter``), per linear layer one C++ loop issuing one GEMM per
non-empty expert over its contiguous rows, with the bias pre-filled (``MOELinear``), one gather
back to the token order (``MOEGather``) and one ``bmm`` with the gate weights. Around it the
released code feeds samples through a per-sample ``DataLoader`` (NumPy rows, a collate function,
4 worker processes, pinned memory, workers started anew every epoch), assembles each modality's
tokens by boolean-mask assignment, calls the MoE once per modality chunk (its gate computing a
router loss per call), uses ``nn.Dropout`` and the default ``torch.optim.Adam``.

This module rebuilds that design around a trained-or-fresh :class:`~flexmoe.model.FlexMoE`,
copying its weights, so ``run_bench.py perf --compare-official`` times both at identical
hyper-parameters and computation: with the same weights and routing the two give the same
outputs and gradients (tested). FastMoE's kernels need CUDA; here the expert step is pure
PyTorch: :class:`MoELinear` runs FastMoE's per-expert GEMM loop as a Python loop of plain
matmuls on contiguous slices, the closest pure-PyTorch equivalent of that C++ loop (each
iteration pays a Python and dispatcher overhead the C++ loop does not, and on CUDA FastMoE
issues the GEMMs on per-expert streams, where this loop uses the current stream).
"""

from __future__ import annotations

import copy
import os
from collections.abc import Iterator

import numpy as np
import torch
from torch import Tensor, nn
from torch.autograd.function import once_differentiable
from torch.utils.data import DataLoader, Dataset

from bench.blocks import Dropout
from bench.data.core import Batch, RunData
from flexmoe.model import FlexMoE, SparseFusionLayer
from flexmoe.moe import Experts, GateOutput, SparseMoE
from flexmoe.router import flexmoe_router_loss

#: The released ``main.py`` defaults: ``--num_workers 4``, ``--pin_memory True`` (the run script
#: keeps both); ``persistent_workers`` is not passed, so it is False.
RELEASED_NUM_WORKERS = 4


class MoELinear(torch.autograd.Function):
    """FastMoE's ``MOELinear`` (``fmoe_cuda.linear_forward`` / ``linear_backward``) in PyTorch.

    Rows are sorted by expert: expert e owns the ``counts[e]`` contiguous rows after those of
    experts < e. ``weight`` is [E, out, in] and ``bias`` [E, out], FastMoE's layout. Forward
    pre-fills the output with each row's expert bias (``bias.repeat_interleave(counts)``), then
    adds ``x_e @ weight[e]ᵀ`` per non-empty expert in place (the GEMM with β = 1). Backward runs,
    per non-empty expert, one GEMM for the input gradient, one for the weight gradient and a
    column sum for the bias gradient; an empty expert's weight and bias gradients are zeros.
    """

    @staticmethod
    def forward(ctx, x: Tensor, counts: list[int], weight: Tensor, bias: Tensor) -> Tensor:
        out = bias.repeat_interleave(torch.tensor(counts, device=bias.device), dim=0,
                                     output_size=x.shape[0])
        start = 0
        for e, n in enumerate(counts):
            if n:
                out[start:start + n].addmm_(x[start:start + n], weight[e].t())
            start += n
        ctx.counts = counts
        ctx.save_for_backward(x, weight)
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out: Tensor) -> tuple[Tensor | None, None, Tensor, Tensor]:
        x, weight = ctx.saved_tensors
        grad_out = grad_out.contiguous()
        grad_x = grad_out.new_empty(x.shape) if ctx.needs_input_grad[0] else None
        grad_w = grad_out.new_empty(weight.shape)
        grad_b = grad_out.new_empty(weight.shape[:2])
        start = 0
        for e, n in enumerate(ctx.counts):
            if not n:
                grad_w[e].zero_()
                grad_b[e].zero_()
                continue
            g = grad_out[start:start + n]
            if grad_x is not None:
                torch.mm(g, weight[e], out=grad_x[start:start + n])
            torch.mm(g.t(), x[start:start + n], out=grad_w[e])
            torch.sum(g, dim=0, out=grad_b[e])
            start += n
        return grad_x, None, grad_w, grad_b


class FusedLinear(nn.Module):
    """FastMoE's ``FMoELinear``: E linear maps stored as one [E, out, in] weight, [E, out] bias."""

    def __init__(self, weight: Tensor, bias: Tensor) -> None:
        super().__init__()
        self.weight = nn.Parameter(weight.detach().clone().contiguous())
        self.bias = nn.Parameter(bias.detach().clone().contiguous())

    def forward(self, x: Tensor, counts: list[int]) -> Tensor:
        return MoELinear.apply(x, counts, self.weight, self.bias)


class FusedExperts(nn.Module):
    """FastMoE's ``_Expert`` (``htoh4`` → activation → ``h4toh``) over rows sorted by expert,
    with copies of a suite :class:`~flexmoe.moe.Experts`'s weights in FastMoE's layout."""

    def __init__(self, experts: Experts) -> None:
        super().__init__()
        self.htoh4 = FusedLinear(experts.w1.transpose(1, 2), experts.b1)
        self.h4toh = FusedLinear(experts.w2.transpose(1, 2), experts.b2)
        self.activation = nn.GELU() if experts.activation == "gelu" else nn.ReLU()

    def forward(self, x: Tensor, counts: list[int]) -> Tensor:
        return self.h4toh(self.activation(self.htoh4(x, counts)), counts)


class FusedMoE(nn.Module):
    """The same gate as a :class:`~flexmoe.moe.SparseMoE`; the experts run as FastMoE runs
    fused experts (``FixedFMoE.forward`` with ``experts_fused``, one worker):

    1. ``prepare_forward``: assignments counted per expert and sorted by expert (FastMoE's
       ``assign_pos`` kernel; a stable ``argsort`` here), counts brought to the host;
    2. ``MOEScatter``: one ``index_select`` of the token rows into that order;
    3. :class:`FusedExperts`: per layer one loop of a matmul per non-empty expert slice;
    4. ``MOEGather``: one ``index_copy`` back to the [N·k] assignment order;
    5. one ``bmm`` of the [N, 1, k] gate weights with the [N, k, d] expert outputs.
    """

    def __init__(self, moe: SparseMoE) -> None:
        super().__init__()
        if moe.combine != "sum":
            raise ValueError("the official-design reference implements the weighted-sum "
                             "combination only")
        self.gate = moe.gate
        self.experts = FusedExperts(moe.experts)
        self.num_experts = moe.experts.num_experts

    def forward(self, x: Tensor) -> tuple[Tensor, GateOutput]:
        gate = self.gate(x)
        n, k = gate.index.shape
        flat = gate.index.reshape(-1)
        pos = torch.argsort(flat, stable=True)
        counts = torch.bincount(flat, minlength=self.num_experts).tolist()
        rows = x.index_select(0, torch.div(pos, k, rounding_mode="floor"))
        out = self.experts(rows, counts)
        out = out.new_zeros(n * k, out.shape[-1]).index_copy(0, pos, out)
        y = torch.bmm(gate.gates.reshape(n, 1, k), out.view(n, k, -1)).view(n, -1)
        return y, gate


class PerModalityFusionLayer(SparseFusionLayer):
    """The sparse fusion layer calling its MoE once per modality chunk, as the released code:
    per chunk ``x_i + Dropout(MoE(LayerNorm2(x_i)))``."""

    def __init__(self, layer: SparseFusionLayer) -> None:
        nn.Module.__init__(self)
        self.attn_residual = layer.attn_residual
        self.norm1, self.attn, self.norm2, self.drop = (
            layer.norm1, layer.attn, layer.norm2, layer.drop)
        self.mlp = FusedMoE(layer.mlp)

    def forward(self, x: Tensor, num_modalities: int) -> tuple[Tensor, list[GateOutput]]:
        x = self.attend(x)
        outs, gates = [], []
        for chunk in x.chunk(num_modalities, dim=1):
            y, gate = self.mlp(self.norm2(chunk).reshape(-1, chunk.shape[-1]))
            outs.append(chunk + self.drop(y.view_as(chunk)))
            gates.append(gate)
        return torch.cat(outs, dim=1), gates


class OfficialDesignFlexMoE(FlexMoE):
    """Flex-MoE's computation in the released code's order of work.

    Each modality's tokens are written into a zero tensor made on the host and moved to the
    device (``torch.zeros(...).to(device)``, as the released ``run_epoch``) by boolean-mask
    assignment (encoder output for observed rows, bank blocks for the others), and each MoE
    call's gate computes its own router loss, as the released gate does inside every call.
    """

    def embed(self, batch: Batch) -> Tensor:
        b, p, h = batch.observed.shape[0], self.num_patches, self.pos_embed.shape[-1]
        blocks = []
        for j, c in enumerate(self.spec.letters):
            mask = batch.observed[:, j]
            tokens = torch.zeros(b, p, h).to(batch.observed.device)
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
    assembly, sparse layers run per modality with FastMoE's fused expert step (sort by
    expert, a matmul per expert slice, gather, ``bmm``) and a router loss per call,
    ``nn.Dropout``."""
    ref = copy.deepcopy(model)
    ref.__class__ = OfficialDesignFlexMoE  # same modules and state, the released order of work
    for i, layer in enumerate(ref.layers):
        if isinstance(layer, SparseFusionLayer):
            ref.layers[i] = PerModalityFusionLayer(layer)
    _torch_dropouts(ref)
    return ref


class PerSampleDataset(Dataset):
    """Rows of one split held as host NumPy arrays and served one sample at a time, as the
    released ``MultiModalDataset``: ``(features by letter, label, combination, observed)``.
    ``rows`` (data set row indices) replaces the split's rows, in that order."""

    def __init__(self, data: RunData, split: str = "train", rows: Tensor | None = None) -> None:
        rows = (data.splits[split] if rows is None else rows).cpu()
        self.features = {c: x.cpu().index_select(0, rows).numpy()
                         for c, x in data.features.items()}
        self.labels = data.labels.cpu().index_select(0, rows).numpy()
        self.combo = data.combo.cpu().index_select(0, rows).numpy()
        self.observed = data.observed.cpu().index_select(0, rows).numpy()

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[dict[str, np.ndarray], np.int64, np.int64, np.ndarray]:
        return ({c: x[i] for c, x in self.features.items()}, self.labels[i], self.combo[i],
                self.observed[i])


def collate(items: list) -> tuple[dict[str, Tensor], Tensor, Tensor, Tensor]:
    """The released ``collate_fn``: NumPy stacks turned into tensors. It returns a tuple (not a
    :class:`Batch`) so that ``pin_memory`` pins it; a module-level function, so that workers
    started by ``spawn`` or ``forkserver`` can unpickle it."""
    data, labels, combos, observed = zip(*items)
    x = {c: torch.tensor(np.stack([d[c] for d in data]), dtype=torch.float32) for c in data[0]}
    return (x, torch.tensor(np.array(labels), dtype=torch.long),
            torch.tensor(np.array(combos), dtype=torch.long), torch.tensor(np.vstack(observed)))


def released_num_workers() -> int:
    """The released loader's 4 worker processes, capped at this machine's cores."""
    return min(RELEASED_NUM_WORKERS, os.cpu_count() or 1)


def per_sample_loader(data: RunData, batch_size: int, seed: int = 0,
                      device: str | torch.device = "cpu",
                      num_workers: int | None = None, split: str = "train",
                      rows: Tensor | None = None, shuffle: bool = True) -> DataLoader:
    """A released loader (``data.py`` ``create_loaders``) over ``split``'s rows (or ``rows``,
    in their order), by default its shuffled training loader: per-sample items, the released
    collate, ``num_workers`` worker processes (default :func:`released_num_workers`),
    ``pin_memory`` where ``device`` is CUDA (the released default is ``True``; without an
    accelerator torch warns and pins nothing, so it is off there), no ``persistent_workers``
    (the workers start anew every epoch).

    It yields ``(x, y, combo, observed)`` tuples on the host; :func:`released_batches` moves
    them to the device as the released training loop does.
    """
    workers = released_num_workers() if num_workers is None else num_workers
    return DataLoader(PerSampleDataset(data, split, rows), batch_size=batch_size,
                      shuffle=shuffle,
                      generator=torch.Generator().manual_seed(seed) if shuffle else None,
                      collate_fn=collate, num_workers=workers,
                      pin_memory=torch.device(device).type == "cuda", persistent_workers=False)


def device_batch(item: tuple, device: torch.device) -> Batch:
    """One collated ``(x, y, combo, observed)`` item moved with ``.to(device,
    non_blocking=True)``, as the released ``run_epoch`` moves each batch inside the step."""
    x, y, combo, observed = item
    return Batch({c: v.to(device, non_blocking=True) for c, v in x.items()},
                 observed.to(device, non_blocking=True), combo.to(device, non_blocking=True),
                 y.to(device, non_blocking=True))


def released_batches(loader: DataLoader, device: str | torch.device) -> Iterator[Batch]:
    """``loader``'s batches epoch after epoch, each tensor moved with ``.to(device,
    non_blocking=True)`` as the released ``run_epoch`` does, as :class:`Batch` objects.

    ``close()`` the generator when done: it drops the epoch's iterator, whose worker processes
    then exit (they also exit at the end of every epoch).
    """
    if len(loader) == 0:
        raise ValueError("the loader serves no batch")
    dev = torch.device(device)
    while True:
        epoch = iter(loader)
        try:
            for item in epoch:
                yield device_batch(item, dev)
        finally:
            del epoch
