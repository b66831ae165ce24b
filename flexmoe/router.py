"""Flex-MoE's combination-aware router loss (Yun et al., NeurIPS 2024).

The released code has one noisy top-k gate whose loss depends on the batch composition:

* batches of fully observed samples only ("G-Router"): the balance loss
  cv²(Σ importance) + cv²(Σ load) over all tokens and all E experts;
* otherwise ("S-Router"): cross-entropy of the *noisy* logits of the tokens whose sample misses a
  modality, with the sample's combination index as the target expert (expert c ↔ combination
  c, expert 0 ↔ full), plus the balance loss of the full tokens over all E experts (0 when there
  are none) plus the balance loss of the other tokens over experts 1…E−1.

Routing itself is never forced: the paper's "the S-Router fixes the top-1 expert" is only pushed
for by the cross-entropy. The loss has the training-mode form in eval mode too (the released code
pools all tokens there, which only changes logged values).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from flexmoe.moe import GateOutput, cv_squared

__all__ = ["flexmoe_router_loss"]


def flexmoe_router_loss(
    gate_output: GateOutput,
    token_combo: Tensor,
    specialize: bool = True,
    generalize: bool = True,
    exclude_top1: bool = False,
    groups: int = 1,
) -> Tensor:
    """Router loss of ``groups`` gate calls, summed (one group per modality chunk).

    Args:
        gate_output: routing state of ``groups · n`` tokens over E experts, group-major (the
            tokens of group g are rows g·n … (g+1)·n − 1), as if each group were its own call.
        token_combo: [n] integer combination index of each token's sample (0 = every modality),
            expanded sample-major by the caller (``combo.repeat_interleave(P)``); the same
            samples make up every group.
        specialize: False is the "w/o ES" ablation: no cross-entropy, one balance loss over all
            tokens and all experts, whatever the batch composition.
        generalize: accepted for symmetry with the model's switches; "w/o EG" only changes the
            epoch order (no full-first warm-up), never this loss.
        exclude_top1: the paper's wording instead of the code's: for each non-full token, its own
            combination expert (its cross-entropy target) is left out of the balance sums, i.e.
            importance and load are Σ over non-full tokens of the token's row with the target
            column zeroed, and cv² runs over all E experts (expert 0 included). Full tokens and
            the cross-entropy are unchanged.
        groups: how many gate calls ``gate_output`` stacks; every term is computed per group
            in one vectorised pass and the groups' losses are added.

    Raises:
        ValueError: ``token_combo`` is not an integer vector of length n, or an index lies outside
            [0, E) (E must exceed the largest combination index; −1 marks a sample without any
            modality of the run, which has no target expert).
    """
    rows, e = gate_output.clean.shape
    n = rows // groups
    if token_combo.shape != (n,) or token_combo.is_floating_point() or n * groups != rows:
        raise ValueError(
            f"token_combo must be an integer tensor of shape ({n},) for {groups} group(s) of "
            f"{rows} tokens, got {token_combo.dtype} {tuple(token_combo.shape)}"
        )
    if n:
        low, high = (int(v) for v in torch.aminmax(token_combo))
        if low < 0 or high >= e:
            raise ValueError(
                f"combination indices must lie in [0, {e}) (num_experts={e} must exceed the "
                f"largest combination index), got min {low}, max {high}"
            )
    # importance and load of every token: [groups, 2, n, E]
    stats = torch.stack([gate_output.importance.view(groups, n, e),
                         gate_output.load.view(groups, n, e)], dim=1)
    if not specialize:
        return cv_squared(stats.sum(2)).sum()
    # token subsets as 0/1 weights instead of boolean indexing: one matmul sums both subsets,
    # and an empty subset gives zero sums, whose cv² is 0 (no branch on the batch composition)
    partial = (token_combo != 0).to(stats.dtype)
    full_sums = (1.0 - partial) @ stats  # [groups, 2, E]
    loss = cv_squared(full_sums).sum()
    if exclude_top1:
        weight = partial.unsqueeze(1) * (1.0 - F.one_hot(token_combo, e).to(stats.dtype))
        loss = loss + cv_squared((stats * weight).sum(2)).sum()
    else:
        loss = loss + cv_squared((partial @ stats)[..., 1:]).sum()
    # each group's mean cross-entropy over its (equally many) partial tokens, summed over groups
    ce = F.cross_entropy(gate_output.noisy, token_combo.repeat(groups), reduction="none")
    return loss + (ce.view(groups, n) * partial).sum() / partial.sum().clamp(min=1.0)
