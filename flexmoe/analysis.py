"""The data behind the paper's Figures 4 and 5, as tidy DataFrames (plotting lives elsewhere).

* :func:`bank_similarity` (Figure 4): cosine similarities between the missing-modality
  bank's own entries — between its rows (observed combinations) and between its columns
  (modalities), "corresponding to row and column in missing modality bank" (paper §4.3) —
  plus, as an extra panel that the paper does not have, each entry against the mean encoder
  embedding of the modality it stands in for.
* :func:`specialisation` : the share of tokens of samples missing a modality whose top-1
  expert is their combination's expert — what the S-Router's cross-entropy pushes for (the
  released code never forces it).
* :func:`expert_activation` (Figure 5): for every expert, the share of its routed tokens
  (top-k assignments counted) that come from each observed combination. Validation and
  test samples have every modality under the paper's protocol, so the default split is
  ``train``, the only one that holds every combination.
"""

from __future__ import annotations

from typing import Literal

import pandas as pd
import torch
import torch.nn.functional as F
from torch import Tensor

from bench.data.core import RunData
from flexmoe.model import FlexMoE, SparseFusionLayer

BANK_COLUMNS = ["panel", "row", "column", "cosine", "samples"]
BankEntries = Literal["missing", "all"]


def _cosine_matrix(vectors: Tensor) -> Tensor:
    """Pairwise cosine similarity of the rows of ``vectors`` [n, d]; NaN where a row is 0."""
    norms = vectors.norm(dim=1)
    cos = (vectors @ vectors.T) / (norms[:, None] * norms[None, :])
    cos = cos.clamp(-1.0, 1.0)
    defined = norms > 0
    cos.diagonal()[defined] = 1.0  # exact, not 1 ± rounding
    return cos.masked_fill(~(defined[:, None] & defined[None, :]), float("nan"))


def _matrix_records(panel: str, labels: list[str], cos: Tensor,
                    samples: dict[str, int] | None) -> list[dict]:
    return [{"panel": panel, "row": a, "column": b, "cosine": float(cos[i, j]),
             "samples": None if samples is None else samples[a]}
            for i, a in enumerate(labels) for j, b in enumerate(labels)]


@torch.inference_mode()
def bank_similarity(model: FlexMoE, data: RunData | None = None, split: str = "train",
                    entries: BankEntries = "missing", embedding: bool = True) -> pd.DataFrame:
    """Figure 4: cosine similarities within the missing-modality bank, as one tidy frame.

    Columns ``panel, row, column, cosine, samples``; every matrix is listed cell by cell
    (both triangles and the diagonal), rows and columns in the order below.

    The bank is ``[2^M − 1, M_full, P, H]``; only the run's M modalities are used (the
    others' entries are never read). Its rows are the combinations of ``model.spec.combos``
    (largest first, index 0 the full set) — with ``data``, only those that occur in
    ``split`` (the training split holds every combination the model has read), else all.

    * ``panel == "row"`` (the paper's left panel): combination × combination. Each
      combination is the vector of its bank row, flattened over modalities and tokens
      (M·P·H numbers). ``samples``: samples of ``split`` with the ``row`` combination.
    * ``panel == "column"`` (the paper's right panel): modality × modality
      (``model.spec.letters``). Each modality is the vector of its bank column, flattened
      over the combinations above and tokens. ``samples``: samples of ``split`` missing the
      ``row`` modality.
    * ``panel == "embedding"`` (extra, not in the paper; only with ``data`` and
      ``embedding``): combination × each modality it misses, the cosine between the entry
      (mean over its P tokens) and the mean encoder output of that modality over the
      samples of ``split`` that have it (also mean over tokens). ``samples``: samples with
      the combination.

    Which entries count (``entries``): a bank entry ``[combination, modality]`` is read
    only when the modality is *missing* in the combination; the entries of observed
    modalities are never read, get no gradient and keep their N(0, 1) initialisation.
    ``"missing"`` (default) sets those never-read entries to zero before flattening, so a
    cosine measures what training made of the bank: between two combinations it runs over
    the modalities both miss (0 when they miss none in common), between two modalities over
    the combinations missing both. The full combination misses nothing, so its row has no
    read entry and its cosines are NaN (the same for a modality missing in no combination).
    ``"all"`` flattens every entry as stored, initial noise included: this gives the full
    combination cosines, but they compare independent N(0, 1) draws (≈ 0 ± 1/√(M·P·H)).
    The released code ships no script for Figure 4, and its full-combination bank row is
    never read, so no flattening of the released bank gives that row the paper's
    similarities of about 0.5; both readings are offered, ``"missing"`` being the one that
    measures what was trained.
    """
    if model.bank is None:
        raise ValueError("this Flex-MoE has no bank (bank=False)")
    if entries not in ("missing", "all"):
        raise ValueError(f"entries must be 'missing' or 'all', not {entries!r}")
    model.eval()
    letters, combos = model.spec.letters, model.spec.combos
    present = data.combo_counts(split) if data is not None else None
    rows = [k for k, c in enumerate(combos) if present is None or c in present]
    labels = [combos[k] for k in rows]
    bank = model.bank.detach().to("cpu", torch.float64)
    block = bank[rows][:, list(model.global_index)]  # [n, M, P, H]
    if entries == "missing":
        missing = torch.tensor([[c not in combo for c in letters] for combo in labels])
        block = block * missing[:, :, None, None]
    miss_counts = (None if present is None else
                   {c: sum(n for combo, n in present.items() if c not in combo) for c in letters})
    records = _matrix_records("row", labels, _cosine_matrix(block.flatten(1)), present)
    records += _matrix_records("column", list(letters),
                               _cosine_matrix(block.transpose(0, 1).flatten(1)), miss_counts)
    if data is not None and embedding:
        records += _embedding_records(model, data, split, present)
    frame = pd.DataFrame(records, columns=BANK_COLUMNS)
    frame["samples"] = frame["samples"].astype("Int64")
    return frame


def _embedding_records(model: FlexMoE, data: RunData, split: str,
                       present: dict[str, int]) -> list[dict]:
    """The extra panel: each read bank entry against the mean encoder embedding."""
    letters = model.spec.letters
    sums: dict[str, Tensor | float] = dict.fromkeys(letters, 0.0)
    counts = dict.fromkeys(letters, 0)
    for batch in data.batches(split, 1024):
        tokens = model.tokenizer(batch)
        for j, c in enumerate(letters):
            rows = batch.observed[:, j]
            sums[c] = sums[c] + tokens[c][rows].mean(1).sum(0)
            counts[c] += int(rows.sum())
    records = []
    for index, combo in enumerate(model.spec.combos):
        if combo not in present:
            continue
        for j, c in enumerate(letters):
            if c in combo or not counts[c]:
                continue
            entry = model.bank[index, model.global_index[j]].mean(0)
            real = sums[c] / counts[c]
            records.append({"panel": "embedding", "row": combo, "column": c,
                            "cosine": float(F.cosine_similarity(entry, real, dim=0)),
                            "samples": present[combo]})
    return records


def _routes(model: FlexMoE, data: RunData, split: str, layer: int):
    """Yield (top-k expert index [T, k], combination of each token [T]) per eval batch."""
    sparse = model.layers[layer]
    if not isinstance(sparse, SparseFusionLayer):
        raise ValueError(f"layer {layer} is dense; sparse layers are 0, 2, 4, …")
    model.eval()
    captured = []
    hook = sparse.mlp.register_forward_hook(lambda mod, args, out: captured.append(out[1].index))
    m, p = model.spec.num_modalities, model.num_patches
    try:
        for batch in data.batches(split, 1024):
            captured.clear()
            model(batch)
            yield captured[0], batch.combo.repeat_interleave(p).repeat(m)  # modality-major
    finally:
        hook.remove()


@torch.inference_mode()
def specialisation(model: FlexMoE, data: RunData, split: str = "train", layer: int = 0) -> float:
    """Share of non-full tokens whose top-1 expert is their combination's expert."""
    hits = total = 0
    for index, token_combo in _routes(model, data, split, layer):
        partial = token_combo != 0
        hits += int((index[partial, 0] == token_combo[partial]).sum())
        total += int(partial.sum())
    return hits / total if total else float("nan")


@torch.inference_mode()
def expert_activation(model: FlexMoE, data: RunData, split: str = "train",
                      layer: int = 0) -> pd.DataFrame:
    """Columns ``expert, combo, tokens, share``: share of an expert's tokens per combination."""
    sparse = model.layers[layer]
    num_experts = sparse.mlp.gate.w_gate.shape[1]
    counts = torch.zeros(num_experts, len(model.spec.combos), dtype=torch.long)
    for index, token_combo in _routes(model, data, split, layer):
        pairs = index * len(model.spec.combos) + token_combo.unsqueeze(1)
        counts += torch.bincount(pairs.flatten().cpu(), minlength=counts.numel()).view_as(counts)
    total = counts.sum(1, keepdim=True).clamp(min=1)
    records = [{"expert": e, "combo": combo, "tokens": int(counts[e, k]),
                "share": float(counts[e, k] / total[e, 0])}
               for e in range(num_experts) for k, combo in enumerate(model.spec.combos)
               if counts[e, k]]
    return pd.DataFrame(records, columns=["expert", "combo", "tokens", "share"])
