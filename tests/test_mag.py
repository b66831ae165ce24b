"""MAG specifics: exact parameter count, the gate on a hand example, the anchor rule."""

from __future__ import annotations

import pytest
import torch

from baselines.mag import MAGGate
from bench.data.core import combinations
from bench.registry import create_model, resolve_hparams
from bench.training.complexity import count_params
from tests.conftest import batch_of, spec_of
from tests.test_blocks import attention_zero_fraction

SMALL = {"hidden": 8, "num_patches": 4, "num_heads": 2, "num_layers": 1}


def _hand_gate(beta: float) -> MAGGate:
    """H = 2, one auxiliary: g = ReLU([x0, t1]), shift = x + 1."""
    gate = MAGGate(hidden=2, num_aux=1, beta_shift=beta, dropout=0.0)
    with torch.no_grad():
        gate.gates[0].weight.copy_(torch.tensor([[1.0, 0, 0, 0], [0, 0, 0, 1.0]]))
        gate.gates[0].bias.zero_()
        gate.shifts[0].weight.copy_(torch.eye(2))
        gate.shifts[0].bias.fill_(1.0)
    return gate.eval()


def test_exact_parameter_count_three_modalities():
    model = create_model("mag", spec_of({"A": 10, "B": 7, "C": 5}), anchor="A", **SMALL)
    # Tokenisers, H=8, P=4: A 8·ceil(10/4)+8 = 32; B 8·2+8 = 24; C 8·2+8 = 24 → 80.
    # Gate, two auxiliaries: W_h Linear(16, 8) 136 + W Linear(8, 8) 72 = 208 each → 416;
    #   LayerNorm 16.  Positional embedding P·H = 32.
    # One TransformerBlock: 2 LayerNorms 32; attention q 64 + kv 128 + proj 72 = 264;
    #   MLP (ratio 2) Linear(8, 16) 144 + Linear(16, 8) 136 = 280 → 576.
    # Head Linear(8, 3) 27.   Total 80 + 416 + 16 + 32 + 576 + 27 = 1,147.
    assert count_params(model) == 1_147


def test_gate_formula_on_a_hand_example():
    t, x = torch.tensor([[3.0, 4.0]]), torch.tensor([[2.0, -1.0]])
    alpha, h = _hand_gate(1.0).displacement(t, [x])
    # g = ReLU([2, 4]) = [2, 4]; W x + b = [3, 0]; h = [6, 0]; α = 1·‖t‖/‖h‖ = 5/6
    torch.testing.assert_close(h, torch.tensor([[6.0, 0.0]]))
    torch.testing.assert_close(alpha, torch.tensor([[5.0 / (6.0 + 1e-6)]]))
    # t + α h = [8, 4] → LayerNorm: mean 6, variance 4 → ±2 / sqrt(4 + 1e-5)
    out = _hand_gate(1.0)(t, [x])
    s = 2.0 / (4.0 + 1e-5) ** 0.5
    torch.testing.assert_close(out, torch.tensor([[s, -s]]))


def test_alpha_is_capped_at_one():
    t, x = torch.tensor([[3.0, 4.0]]), torch.tensor([[2.0, -1.0]])
    alpha, _ = _hand_gate(2.0).displacement(t, [x])  # β·5/6 = 5/3 → 1
    assert alpha.item() == 1.0
    out = _hand_gate(2.0)(t, [x])  # t + h = [9, 4]: mean 6.5, variance 6.25
    s = 2.5 / (6.25 + 1e-5) ** 0.5
    torch.testing.assert_close(out, torch.tensor([[s, -s]]))


def test_zero_anchor_gives_alpha_zero():
    gate = _hand_gate(1.0)
    alpha, h = gate.displacement(torch.zeros(1, 2), [torch.tensor([[2.0, -1.0]])])
    assert alpha.item() == 0.0 and h.abs().sum() > 0


def test_missing_anchor_discards_the_auxiliaries():
    spec = spec_of({"A": 10, "B": 7, "C": 5}, family="custom")
    model = create_model("mag", spec, **SMALL).eval()
    assert model.anchor == "A"
    for anchor_seen in (True, False):
        # the two samples differ in every observed feature (B and C, and A when seen)
        logits, _ = model(batch_of(spec, [[anchor_seen, True, True]] * 2))
        assert torch.allclose(logits[0], logits[1]) != anchor_seen


@pytest.mark.parametrize("family", ["adni", "mimic"])
def test_default_anchor_is_the_most_available_training_modality(family, adni, mimic):
    data = adni if family == "adni" else mimic
    for combo in (c for c in combinations(data.letters) if len(c) >= 2):
        run = data.restrict(combo)
        counts = run.observed.index_select(0, run.splits["train"]).sum(0)
        best = combo[int(counts.argmax())]
        assert resolve_hparams("mag", run.spec)["anchor"] == best
        assert create_model("mag", run.spec).run_info()["anchor"] == best


def test_anchor_rule_for_other_families_and_bad_anchor():
    spec = spec_of({"X": 4, "Y": 4}, family="custom")
    assert create_model("mag", spec).anchor == "X"
    assert create_model("mag", spec, anchor="Y").aux_letters == "X"
    with pytest.raises(ValueError, match="anchor"):
        create_model("mag", spec, anchor="Z")


@pytest.mark.parametrize("kwargs, zeros", [({}, 0.5), ({"attn_dropouts": "once"}, 0.5),
                                           ({"attn_dropouts": "twice"}, 0.75)])
def test_attention_branch_is_dropped_once_as_in_bert(kwargs, zeros):
    """BERT's BertSelfOutput drops the attention output once (dense → dropout → LN(· + x));
    at dropout 0.5 a fraction 0.5 of the branch is zero (0.75 when dropped twice)."""
    model = create_model("mag", spec_of({"A": 10, "B": 7}), **kwargs)
    assert len(model.blocks) == 2
    for i, block in enumerate(model.blocks):
        assert abs(attention_zero_fraction(block, seed=i) - zeros) < 0.01
