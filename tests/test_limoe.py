"""LIMoE specifics: exact parameter count, MoE placement, the entropy losses on observed tokens."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from baselines.limoe import MoEBlock, entropy_losses
from bench.data.core import Batch
from bench.registry import create_model
from bench.training.complexity import count_params
from tests.conftest import spec_of
from tests.test_blocks import attention_zero_fraction

SMALL = {"hidden": 16, "num_patches": 4, "num_experts": 4, "top_k": 2, "num_heads": 2}


def test_exact_parameter_count_two_modalities():
    spec = spec_of({"A": 100, "B": 40}, num_classes=3)
    model = create_model("limoe", spec, **SMALL)
    # H=16, P=4, E=4, MLP ratio 4, 2 blocks (block 0 dense, block 1 MoE), C=3.
    # Tokenisers: A 16·ceil(100/4)+16 = 416; B 16·10+16 = 176                      →    592
    # Slot embedding M·P·H = 2·4·16                                                 →    128
    # Attention per block: q 16·16 + kv 16·32 + proj 16·16+16 = 1,040; 2 LN = 64.
    # Dense block: 64 + 1,040 + Linear(16,64) 1,088 + Linear(64,16) 1,040          →  3,232
    # MoE block: 64 + 1,040 + gate 16·4 (no noise weights) + 4 experts × 2,128     →  9,680
    # Final LN 32; head Linear(2·16, 3) 99                                          →    131
    # Total 592 + 128 + 3,232 + 9,680 + 131 = 13,763.
    assert count_params(model) == 13_763


def test_every_other_block_is_a_noiseless_softmax_over_all_experts_moe():
    model = create_model("limoe", spec_of({"A": 10, "B": 10}), num_layers=4, **SMALL)
    assert model.run_info()["moe_blocks"] == [1, 3]
    gate = model.blocks[1].mlp.gate
    assert isinstance(model.blocks[1], MoEBlock) and not isinstance(model.blocks[0], MoEBlock)
    assert gate.gate_softmax == "all" and not gate.noisy and gate.top_k == 2
    assert math.isclose(model.tau, math.log(4))


def _probs(b: int, m: int, p: int, e: int) -> torch.Tensor:
    return torch.softmax(torch.randn(b, m, p, e), dim=-1)


def test_local_entropy_is_minimal_for_one_hot_routing():
    torch.manual_seed(0)
    b, m, p, e = 3, 2, 4, 4
    observed = torch.ones(b, m, dtype=torch.bool)
    one_hot = F.one_hot(torch.randint(0, e, (b, m, p)), e).float()
    uniform = torch.full((b, m, p, e), 1.0 / e)
    local_hot, _ = entropy_losses(one_hot, observed, tau=1.0)
    local_soft, _ = entropy_losses(_probs(b, m, p, e), observed, tau=1.0)
    local_flat, _ = entropy_losses(uniform, observed, tau=1.0)
    torch.testing.assert_close(local_hot, torch.zeros(m))
    torch.testing.assert_close(local_flat, torch.full((m,), math.log(e)))
    assert (local_hot < local_soft).all() and (local_soft < local_flat).all()


def test_global_entropy_term_is_zero_above_tau_and_penalises_collapse():
    b, m, p, e = 2, 2, 4, 4
    observed = torch.ones(b, m, dtype=torch.bool)
    tau = math.log(3)
    # every token one-hot, the P tokens spread over the 4 experts: marginal entropy log 4 > τ
    spread = F.one_hot(torch.arange(p).expand(b, m, p), e).float()
    _, glob = entropy_losses(spread, observed, tau)
    torch.testing.assert_close(glob, torch.zeros(m))
    # every token on expert 0: marginal entropy 0, the term is τ
    collapsed = F.one_hot(torch.zeros(b, m, p, dtype=torch.long), e).float()
    _, glob = entropy_losses(collapsed, observed, tau)
    torch.testing.assert_close(glob, torch.full((m,), tau))


def test_entropies_ignore_tokens_of_missing_modalities():
    torch.manual_seed(1)
    b, m, p, e = 4, 3, 4, 4
    probs = _probs(b, m, p, e)
    observed = torch.tensor([[True, True, False], [True, False, False],
                             [True, True, False], [False, True, False]])
    local, glob = entropy_losses(probs, observed, tau=2.0)
    garbage = probs.clone()
    garbage[~observed] = F.one_hot(torch.zeros(p, dtype=torch.long), e).float()
    local_g, glob_g = entropy_losses(garbage, observed, tau=2.0)
    torch.testing.assert_close(local_g, local)
    torch.testing.assert_close(glob_g, glob)
    # modality 0: the mean over its 3 observed samples only
    rows = observed[:, 0]
    expected = -(probs[rows, 0] * probs[rows, 0].log()).sum(-1).mean()
    torch.testing.assert_close(local[0], expected)
    # a modality nobody observed contributes nothing (its marginal would be empty)
    assert local[2] == 0 and glob[2] == 0


def test_routing_loss_ignores_missing_modalities_tokens():
    torch.manual_seed(2)
    spec = spec_of({"A": 10, "B": 10})
    model = create_model("limoe", spec, **SMALL).eval()
    gate = model.blocks[1].mlp.gate
    observed = torch.tensor([[True, False], [True, True], [False, True]])
    x = torch.randn(3, 2, 4, 16)
    y = x.clone()
    y[~observed] = torch.randn(int((~observed).sum()), 4, 16) * 5
    losses = [model.routing_loss(gate(t.reshape(-1, 16)), observed) for t in (x, y)]
    torch.testing.assert_close(losses[0], losses[1])
    assert losses[0] > 0


def test_aux_loss_is_weighted_and_switches_off_with_zero_weights():
    spec = spec_of({"A": 10, "B": 10})
    batch = Batch({"A": torch.randn(4, 10), "B": torch.randn(4, 10)},
                  torch.tensor([[True, True], [True, False], [False, True], [True, True]]),
                  torch.zeros(4, dtype=torch.long), torch.zeros(4, dtype=torch.long))
    torch.manual_seed(0)
    on = create_model("limoe", spec, **SMALL).eval()
    torch.manual_seed(0)
    off = create_model("limoe", spec, w_local=0.0, w_global=0.0, w_balance=0.0, **SMALL).eval()
    (logits_on, aux_on), (logits_off, aux_off) = on(batch), off(batch)
    torch.testing.assert_close(logits_on, logits_off)
    assert aux_on > 0 and aux_off == 0


@pytest.mark.parametrize("kwargs, zeros", [({}, 0.5), ({"attn_dropouts": "once"}, 0.5),
                                           ({"attn_dropouts": "twice"}, 0.75)])
def test_attention_branch_is_dropped_once_as_in_the_vit_block(kwargs, zeros):
    """V-MoE's encoder block: attention → Dropout → + inputs (no projection dropout), in the
    dense and the MoE blocks alike: at dropout 0.5 half of the branch is zero."""
    model = create_model("limoe", spec_of({"A": 10, "B": 10}), num_layers=2, **kwargs)
    assert isinstance(model.blocks[1], MoEBlock) and not isinstance(model.blocks[0], MoEBlock)
    for i, block in enumerate(model.blocks):
        assert abs(attention_zero_fraction(block, seed=i) - zeros) < 0.01
