"""I2MoE specifics: exact parameter count, re-weighting, the sign of every interaction loss,
the batched perturbed passes, eval without perturbation, the sparse backbone's gate loss and
the interpretation tables."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from baselines.i2moe import expert_names, interaction_losses
from baselines.i2moe_analysis import global_interpretation, local_interpretation
from bench.registry import create_model, resolve_hparams
from bench.training.complexity import count_params
from tests.conftest import batch_of, spec_of

SMALL = {"hidden": 8, "num_patches": 4, "num_heads": 2, "num_layers": 1, "hidden_rw": 16,
         "num_layers_rw": 2}


def _reference_losses(outputs: torch.Tensor) -> torch.Tensor:
    """The released code's loop: TripletMarginLoss per positive, normalised cosines."""
    m = outputs.shape[1] - 1
    triplet = nn.TripletMarginLoss(margin=1.0, p=2, eps=1e-7)
    losses = []
    for i in range(m):
        anchor, neg = outputs[i, 0], outputs[i, i + 1]
        pos = [outputs[i, j + 1] for j in range(m) if j != i]
        losses.append(sum(triplet(anchor, p, neg) for p in pos) / len(pos))

    def cos(e: int) -> torch.Tensor:
        a = F.normalize(outputs[e, 0], p=2, dim=1)
        return sum((a * F.normalize(o, p=2, dim=1)).sum(1).mean() for o in outputs[e, 1:]) / m

    return torch.stack([*losses, cos(m), 1 - cos(m + 1)])


def test_exact_parameter_count_two_modalities():
    model = create_model("i2moe", spec_of({"A": 20, "B": 40}, num_classes=3), **SMALL)
    # H=8, P=4. Tokenisers: A 8·ceil(20/4)+8 = 48; B 8·10+8 = 88 → 136.
    # Backbone: pos 2·4·8 = 64; one block: 2 LN 32 + attention (q 64, kv 128, proj 72) 264
    # + MLP (Linear(8,16) 144, Linear(16,8) 136) 280 = 576; head Linear(16,3) 51 → 691;
    # M+2 = 4 experts → 2,764. Re-weighting: Linear(16,16) 272 + Linear(16,4) 68 = 340.
    # Total 136 + 2,764 + 340 = 3,240.
    assert count_params(model) == 3_240


def test_experts_start_as_copies_of_one_backbone():
    model = create_model("i2moe", spec_of({"A": 20, "B": 40}), **SMALL)
    first = model.experts[0].state_dict()
    for expert in model.experts[1:]:
        assert all(torch.equal(v, first[k]) for k, v in expert.state_dict().items())
    assert [n for n, _ in model.named_parameters() if "experts.4." in n] == []


def test_defaults_per_family():
    spec = spec_of({"A": 4, "B": 4}, family="adni")
    hp = resolve_hparams("i2moe", spec)
    assert (hp["batch_size"], hp["epochs"], hp["num_patches"], hp["interaction_loss_weight"],
            hp["lr"]) == (32, 50, 16, 0.3, 1e-4)
    model = create_model("i2moe", spec)
    assert len(model.experts) == 4 and len(model.experts[0].layers) == 2  # fusion layers
    assert sum(isinstance(m, nn.Linear) for m in model.reweight) == 3  # num_layers_rw
    hp = resolve_hparams("i2moe", spec_of({"A": 4, "B": 4}, family="mimic"))
    assert (hp["batch_size"], hp["epochs"], hp["num_patches"],
            hp["interaction_loss_weight"]) == (32, 30, 4, 0.01)
    spec = spec_of({"A": 4, "B": 4}, family="custom")
    hp = resolve_hparams("i2moe", spec)
    assert (hp["batch_size"], hp["epochs"], hp["num_patches"]) == (8, 50, 16)  # constructor
    assert create_model("i2moe", spec).interaction_loss_weight == 0.01


def test_weights_sum_to_one_and_mix_the_clean_expert_outputs():
    spec = spec_of({"A": 12, "B": 9, "C": 20})
    model = create_model("i2moe", spec, **SMALL).eval()
    batch = batch_of(spec, [[True, True, True], [True, False, True], [False, True, False]])
    with torch.no_grad():
        tokens = model.tokens(batch)
        weights = model.interaction_weights(tokens)
        outputs, _ = model.expert_passes(tokens, perturb=False)
        logits, aux = model(batch)
    assert weights.shape == (3, 5)
    torch.testing.assert_close(weights.sum(1), torch.ones(3))
    assert (weights > 0).all()
    torch.testing.assert_close(logits, (weights.T.unsqueeze(-1) * outputs[:, 0]).sum(0))
    assert aux.item() == 0.0
    assert model.expert_names == ["U_A", "U_B", "U_C", "S", "R"] == expert_names("ABC")


def test_losses_match_the_reference_loop():
    torch.manual_seed(0)
    outputs = torch.randn(5, 4, 6, 3)  # M = 3: experts U_1..U_3, S, R
    torch.testing.assert_close(interaction_losses(outputs), _reference_losses(outputs))


def test_redundancy_and_synergy_signs():
    anchor = torch.randn(4, 3)
    same = anchor.expand(3, 3, 4, 3)  # M = 2: every pass equals o⁰
    losses = interaction_losses(torch.cat([torch.randn(2, 3, 4, 3), same[:2]]))
    assert losses[-1].item() == pytest.approx(0.0, abs=1e-6)  # R: nothing to pull together
    assert losses[-2].item() == pytest.approx(1.0, abs=1e-6)  # S: maximal, to be pushed apart
    opposite = torch.stack([anchor, -anchor, -anchor]).expand(2, 3, 4, 3)
    losses = interaction_losses(torch.cat([torch.randn(2, 3, 4, 3), opposite]))
    assert losses[-1].item() == pytest.approx(2.0, abs=1e-6)
    assert losses[-2].item() == pytest.approx(-1.0, abs=1e-6)


def test_uniqueness_prefers_its_own_modality_to_matter():
    torch.manual_seed(1)
    anchor, far = torch.randn(4, 3), 5 * torch.randn(4, 3)
    m = 3
    own = torch.stack([anchor, anchor, anchor, anchor])  # passes o⁰, o¹, o², o³
    reverse = own.clone()
    own[1] = far  # U_1: removing modality 1 changes the output, the others do not
    reverse[2:] = far  # the opposite: o¹ = o⁰ while o², o³ differ
    filler = torch.randn(m + 1, m + 1, 4, 3)
    good = interaction_losses(torch.cat([own.unsqueeze(0), filler]))[0]
    bad = interaction_losses(torch.cat([reverse.unsqueeze(0), filler]))[0]
    assert good.item() == pytest.approx(0.0, abs=1e-6)
    assert bad.item() > 1.0 > good.item()


def test_uniqueness_of_a_single_modality_is_zero():
    losses = interaction_losses(torch.randn(3, 2, 4, 3))
    assert losses.shape == (3,) and losses[0].item() == 0.0


@pytest.mark.parametrize("sparse", [False, True], ids=["dense", "sparse"])
def test_batched_perturbed_pass_equals_separate_passes(sparse):
    spec = spec_of({"A": 12, "B": 9, "C": 20})
    model = create_model("i2moe", spec, fusion_sparse=sparse, num_experts=8, top_k=2,
                         **{**SMALL, "num_layers": 2}).eval()
    batch = batch_of(spec, [[True, True, True], [True, False, True], [False, True, True],
                          [True, True, False]])
    with torch.no_grad():
        tokens = model.tokens(batch)  # [B, M, P, H]
        torch.manual_seed(7)
        outputs, gate_loss = model.expert_passes(tokens, perturb=True)
        torch.manual_seed(7)
        noise = torch.randn(5, 3, *tokens.shape[:1], *tokens.shape[2:])  # [E, M, B, P, H]
        for e, expert in enumerate(model.experts):
            for k in range(4):
                x = tokens.clone()
                if k:
                    x[:, k - 1] = noise[e, k - 1]
                out, gate = expert(x.flatten(1, 2))
                torch.testing.assert_close(outputs[e, k], out)
                torch.testing.assert_close(gate_loss[e, k], gate[0])
    assert outputs.shape == (5, 4, 4, 3)
    assert (gate_loss > 0).all() if sparse else (gate_loss == 0).all()


def test_perturbation_replaces_encoded_tokens_even_of_a_missing_modality():
    spec = spec_of({"A": 12, "B": 9})
    model = create_model("i2moe", spec, **SMALL).eval()
    batch = batch_of(spec, [[True, False], [True, True]])
    with torch.no_grad():
        tokens = model.tokens(batch)
        inputs = model.perturbed_inputs(tokens)  # [E, M+1, B, M, P, H]
    assert (tokens[0, 1] == 0).all()  # zero-filled at the encoder output
    assert inputs.shape == (4, 3, 2, 2, 4, 8)
    torch.testing.assert_close(inputs[:, 0], tokens.expand(4, *tokens.shape))
    torch.testing.assert_close(inputs[:, 2, :, 0], tokens[:, 0].expand(4, 2, 4, 8))  # kept
    assert (inputs[:, 2, 0, 1] != 0).all()  # the missing modality's zeros become noise
    assert not torch.equal(inputs[0, 1, :, 0], inputs[1, 1, :, 0])  # fresh noise per expert


def test_eval_runs_no_perturbed_passes_and_training_does():
    spec = spec_of({"A": 12, "B": 9, "C": 20})
    model = create_model("i2moe", spec, **SMALL)
    batch = batch_of(spec, [[True, True, True], [True, False, True]])
    rows: list[int] = []
    hooks = [e.register_forward_pre_hook(lambda mod, args: rows.append(args[0].shape[0]))
             for e in model.experts]
    model.eval()
    with torch.no_grad():
        _, aux = model(batch)
    assert rows == [2] * 5 and aux.item() == 0.0
    rows.clear()
    model.train()
    _, aux = model(batch)
    assert rows == [2 * 4] * 5  # M + 1 = 4 passes stacked on the batch axis, per expert
    assert aux.item() > 0
    for h in hooks:
        h.remove()


def test_interaction_loss_weight_scales_aux():
    spec = spec_of({"A": 12, "B": 9})
    batch = batch_of(spec, [[True, True], [True, False], [False, True]])
    auxes = []
    for weight in (0.3, 0.6):
        torch.manual_seed(0)
        model = create_model("i2moe", spec, interaction_loss_weight=weight, dropout=0.0,
                             dropout_rw=0.0, **SMALL).train()
        torch.manual_seed(3)
        auxes.append(model(batch)[1].item())
    assert auxes[1] == pytest.approx(2 * auxes[0], rel=1e-5)


def test_sparse_gate_loss_keeps_its_gradient():
    spec = spec_of({"A": 12, "B": 9})
    model = create_model("i2moe", spec, fusion_sparse=True, num_experts=8, top_k=2,
                         interaction_loss_weight=0.0, gate_loss_weight=1.0, **SMALL).train()
    batch = batch_of(spec, [[True, True], [True, False], [False, True]])
    _, aux = model(batch)
    assert aux.item() > 0
    aux.backward()
    for expert in model.experts:
        gate = expert.layers[0].mlp.gate
        assert gate.w_gate.grad is not None and gate.w_gate.grad.abs().sum() > 0
        assert gate.w_noise.grad is not None and gate.w_noise.grad.abs().sum() > 0


def test_interpretation_tables(toy_data):
    data = toy_data.restrict("ABC")
    model = create_model("i2moe", data.spec, **SMALL)
    local = local_interpretation(model, data, "train")
    n = data.splits["train"].numel()
    assert list(local.columns) == ["sample", "id", "combo", "expert", "weight"]
    assert len(local) == 5 * n and model.training is False
    sums = local.groupby("sample")["weight"].sum().to_numpy()
    assert sums == pytest.approx([1.0] * n, abs=1e-5)
    assert set(local["combo"]) == set(data.combo_counts("train"))
    overall = global_interpretation(model, data, "train")
    assert list(overall["expert"]) == ["U_A", "U_B", "U_C", "S", "R"]
    assert overall["weight"].sum() == pytest.approx(1.0, abs=1e-5)
    assert overall["weight"].to_numpy() == pytest.approx(
        local.groupby("expert", sort=False)["weight"].mean().to_numpy())
    per_combo = global_interpretation(model, data, "train", by_combo=True)
    counts = data.combo_counts("train")
    assert list(per_combo.columns) == ["combo", "expert", "weight", "samples"]
    assert list(dict.fromkeys(per_combo["combo"])) == [c for c in data.spec.combos
                                                         if c in counts]
    assert dict(zip(per_combo["combo"], per_combo["samples"])) == counts
