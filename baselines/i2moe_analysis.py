"""I2MoE's interpretations as tidy DataFrames (plotting lives elsewhere).

* :func:`local_interpretation`: the re-weighting model's expert weights for every sample of
  a split — how much each interaction (uniqueness of one modality, synergy, redundancy)
  drives that sample's prediction (the paper's local interpretation).
* :func:`global_interpretation`: those weights averaged over the split, per expert, and
  optionally per observed combination (the paper's data-set-level interpretation).

Validation and test samples have every modality under the paper's protocol, so only the
``train`` split holds every combination.
"""

from __future__ import annotations

import pandas as pd
import torch

from baselines.i2moe import I2MoE
from bench.data.core import RunData

LOCAL_COLUMNS = ["sample", "id", "combo", "expert", "weight"]


@torch.inference_mode()
def local_interpretation(model: I2MoE, data: RunData, split: str = "test",
                         batch_size: int = 1024) -> pd.DataFrame:
    """One row per (sample, expert): columns ``sample`` (row of ``data``), ``id``, ``combo``
    (observed modalities), ``expert`` (``U_<letter>``, ``S``, ``R``) and ``weight``."""
    model.eval()
    weights = []
    for batch in data.batches(split, batch_size):
        weights.append(model.interaction_weights(model.tokens(batch)).cpu())
    rows = data.splits[split].cpu()
    if not weights:
        return pd.DataFrame(columns=LOCAL_COLUMNS)
    w = torch.cat(weights)
    combos = data.combo.index_select(0, data.splits[split]).cpu()
    names = model.expert_names
    e = len(names)
    return pd.DataFrame({
        "sample": rows.repeat_interleave(e).numpy(),
        "id": data.ids[rows.numpy()].repeat(e),
        "combo": [model.spec.combos[int(k)] for k in combos.repeat_interleave(e)],
        "expert": names * len(rows),
        "weight": w.flatten().numpy(),
    }, columns=LOCAL_COLUMNS)


def global_interpretation(model: I2MoE, data: RunData, split: str = "test",
                          by_combo: bool = False, batch_size: int = 1024) -> pd.DataFrame:
    """Mean weight per expert over ``split``: columns ``expert, weight, samples``, with
    ``combo`` first when ``by_combo`` (one group per observed combination)."""
    local = local_interpretation(model, data, split, batch_size)
    keys = ["combo", "expert"] if by_combo else ["expert"]
    out = (local.groupby(keys, sort=False)
           .agg(weight=("weight", "mean"), samples=("sample", "nunique"))
           .reset_index())
    if by_combo:  # combinations in index order (largest first), experts in model order
        rank = {c: i for i, c in enumerate(model.spec.combos)}
        out = out.sort_values("combo", key=lambda s: s.map(rank), kind="stable")
    return out[[*keys, "weight", "samples"]].reset_index(drop=True)
