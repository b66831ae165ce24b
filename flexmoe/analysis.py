"""The data behind the paper's Figures 4 and 5, as tidy DataFrames (plotting lives elsewhere).

* :func:`bank_similarity` (Figure 4): for every observed combination that occurs in the data
  (rows) and every modality it misses (columns), the cosine similarity between the bank's
  learned block for that pair and the real embedding of that modality (the mean encoder
  output over the samples that have it), each mean-pooled over its P tokens first.
* :func:`specialisation` : the share of tokens of samples missing a modality whose top-1
  expert is their combination's expert — what the S-Router's cross-entropy pushes for (the
  released code never forces it).
* :func:`expert_activation` (Figure 5): for every expert, the share of its routed tokens
  (top-k assignments counted) that come from each observed combination. Validation and
  test samples have every modality under the paper's protocol, so the default split is
  ``train``, the only one that holds every combination.
"""

from __future__ import annotations

import pandas as pd
import torch
import torch.nn.functional as F

from bench.data.core import RunData
from flexmoe.model import FlexMoE, SparseFusionLayer


@torch.inference_mode()
def bank_similarity(model: FlexMoE, data: RunData, split: str = "train") -> pd.DataFrame:
    """Columns ``combo, modality, cosine, samples`` (``samples``: how many have the combo)."""
    if model.bank is None:
        raise ValueError("this Flex-MoE has no bank (bank=False)")
    model.eval()
    letters = model.spec.letters
    sums = {c: 0.0 for c in letters}
    counts = dict.fromkeys(letters, 0)
    for batch in data.batches(split, 1024):
        tokens = model.tokenizer(batch)
        for j, c in enumerate(letters):
            rows = batch.observed[:, j]
            sums[c] = sums[c] + tokens[c][rows].mean(1).sum(0)
            counts[c] += int(rows.sum())
    present = data.combo_counts(split)
    records = []
    for index, combo in enumerate(model.spec.combos):
        if combo not in present:
            continue
        for j, c in enumerate(letters):
            if c in combo or not counts[c]:
                continue
            entry = model.bank[index, model.global_index[j]].mean(0)
            real = sums[c] / counts[c]
            records.append({"combo": combo, "modality": c, "samples": present[combo],
                            "cosine": float(F.cosine_similarity(entry, real, dim=0))})
    return pd.DataFrame(records, columns=["combo", "modality", "samples", "cosine"])


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
