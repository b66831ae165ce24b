"""Flex-MoE: exact parameter counts, the bank, the schedule and every ablation switch."""

from __future__ import annotations

import pytest
import torch

from bench.data.arrays import Modality
from bench.data.core import Batch, DataSpec
from bench.registry import create_model, resolve_hparams
from bench.training.complexity import count_params

ADNI = tuple(Modality(n, c, (w,)) for n, c, w in
             (("image", "I", 256), ("genetic", "G", 500), ("clinical", "C", 40),
              ("biospecimen", "B", 12)))


def adni_spec(letters: str) -> DataSpec:
    return DataSpec("synthetic-adni", "adni", tuple(m for m in ADNI if m.letter in letters), ADNI,
                    3)


@pytest.mark.parametrize("letters, expected", [("IG", 1_154_435), ("IGC", 1_189_635),
                                               ("IGCB", 1_257_603)])
def test_fusion_plus_bank_parameter_count_matches_official_architecture(letters, expected):
    # H 128, P 16, E 16, k 4, 4 heads, 1 layer, C 3: fusion(M) = 1,124,995 + 2,432·M
    # (pos 2,048·M, LN 512, attention 65,664, experts 1,054,720, gate 4,096, head 384·M + 3)
    # plus the bank (2^M − 1) · 4 · 16 · 128.
    model = create_model("flexmoe", adni_spec(letters))
    assert count_params(model) - count_params(model.tokenizer) == expected


def test_table6_defaults_per_family():
    adni = resolve_hparams("flexmoe", adni_spec("IGCB"), profile="paper")
    assert (adni["num_experts"], adni["top_k"], adni["lr"], adni["batch_size"], adni["epochs"]) \
        == (16, 4, 1e-4, 8, 50)
    mimic_mods = tuple(Modality(n, c, (w,)) for n, c, w in
                       (("labs", "L", 60), ("notes", "N", 768), ("codes", "C", 300)))
    mimic = resolve_hparams("flexmoe", DataSpec("m", "mimic", mimic_mods, mimic_mods, 2))
    assert (mimic["num_experts"], mimic["top_k"]) == (32, 3)


def _batch(spec: DataSpec, observed: list[list[bool]]) -> Batch:
    obs = torch.tensor(observed)
    letters = spec.letters
    lookup = {c: i for i, c in enumerate(spec.combos)}
    combo = torch.tensor([lookup["".join(c for c, o in zip(letters, row) if o)]
                          for row in observed])
    x = {m.letter: torch.randn(len(observed), m.num_features) for m in spec.modalities}
    return Batch(x, obs, combo, torch.zeros(len(observed), dtype=torch.long))


def test_missing_block_comes_from_the_bank_entry_of_combination_and_modality():
    spec = adni_spec("IGCB")
    model = create_model("flexmoe", spec).eval()
    batch = _batch(spec, [[True, False, True, True], [True, True, True, True]])
    tokens = model.embed(batch) - model.pos_embed
    g = spec.letters.index("G")
    combo = int(batch.combo[0])  # "ICB" → index 3
    assert spec.combos[combo] == "ICB"
    torch.testing.assert_close(tokens[0, g * 16:(g + 1) * 16], model.bank[combo, 1])
    off = create_model("flexmoe", spec, bank=False).eval()
    assert off.bank is None
    assert (off.embed(batch)[0, g * 16:(g + 1) * 16] == 0).all()


def test_bank_uses_global_modality_index_when_run_has_fewer_modalities():
    spec = adni_spec("GB")
    model = create_model("flexmoe", spec).eval()
    batch = _batch(spec, [[False, True]])
    assert model.bank.shape == (3, 4, 16, 128)
    tokens = model.embed(batch) - model.pos_embed
    torch.testing.assert_close(tokens[0, :16], model.bank[int(batch.combo[0]), 1])  # G is global 1


def test_schedule_sorted_warm_up_then_shuffle():
    spec = adni_spec("IGCB")
    assert [create_model("flexmoe", spec).epoch_order(e) for e in (0, 4, 5)] == \
        ["descending", "descending", "shuffle"]
    assert create_model("flexmoe", spec, warmup_order="random").epoch_order(0) == "fixed-random"
    assert create_model("flexmoe", spec, warmup_order="ascending").epoch_order(0) == "ascending"
    assert create_model("flexmoe", spec, specialize=False, generalize=False).epoch_order(0) == \
        "shuffle"


def test_too_few_experts_for_the_combinations_is_refused():
    with pytest.raises(ValueError, match="must exceed the largest combination index 14"):
        create_model("flexmoe", adni_spec("IGCB"), num_experts=14)


def test_variants_change_only_the_switch_they_name():
    spec = adni_spec("IGCB")
    base = resolve_hparams("flexmoe", spec)
    expected = {"flexmoe-no-es": {"specialize": False},
                "flexmoe-no-es-eg": {"specialize": False, "generalize": False},
                "flexmoe-no-bank": {"bank": False},
                "flexmoe-sort-random": {"warmup_order": "random"},
                "flexmoe-sort-ascending": {"warmup_order": "ascending"}}
    for name, change in expected.items():
        hp = resolve_hparams(name, spec)
        diff = {k: v for k, v in hp.items() if base.get(k) != v}
        assert diff == change, name


def test_specialize_switch_changes_only_the_router_loss():
    spec = adni_spec("IGCB")
    batch = _batch(spec, [[True, False, True, True], [False, False, True, False],
                          [True, True, True, True]])
    outs = {}
    for specialize in (True, False):
        torch.manual_seed(0)
        model = create_model("flexmoe", spec, specialize=specialize).eval()
        outs[specialize] = model(batch)
    torch.testing.assert_close(outs[True][0], outs[False][0])
    assert not torch.allclose(outs[True][1], outs[False][1])


def test_attention_residual_option():
    spec = adni_spec("IG")
    batch = _batch(spec, [[True, True], [True, False]])
    torch.manual_seed(0)
    official = create_model("flexmoe", spec).eval()
    torch.manual_seed(0)
    standard = create_model("flexmoe", spec, attn_residual="standard").eval()
    assert not torch.allclose(official(batch)[0], standard(batch)[0])


def test_two_layers_alternate_sparse_and_dense():
    # docs/models §12.1: two layers (sparse + dense), M = 4 → fusion 1,266,819; bank 122,880.
    model = create_model("flexmoe", adni_spec("IGCB"), num_layers=2)
    assert count_params(model) - count_params(model.tokenizer) == 1_266_819 + 122_880
    assert [type(layer).__name__ for layer in model.layers] == ["SparseFusionLayer",
                                                               "TransformerBlock"]


@pytest.mark.parametrize("switches", [{}, {"specialize": False}, {"exclude_top1": True}])
def test_router_loss_of_stacked_chunks_equals_the_sum_of_per_chunk_calls(switches):
    from flexmoe.moe import GateOutput, SparseMoE
    from flexmoe.router import flexmoe_router_loss

    torch.manual_seed(0)
    moe = SparseMoE(32, num_experts=16, top_k=4)
    combo = torch.tensor([0, 3, 0, 14, 5]).repeat_interleave(4)  # 5 samples × 4 patches
    _, gate = moe(torch.randn(3 * combo.numel(), 32))  # 3 modality chunks
    n = combo.numel()
    per_chunk = sum(
        flexmoe_router_loss(GateOutput(*(t[j * n:(j + 1) * n] if t is not None else None
                                         for t in gate)), combo, **switches)
        for j in range(3))
    torch.testing.assert_close(flexmoe_router_loss(gate, combo, groups=3, **switches), per_chunk)


def test_analysis_hooks_return_tidy_frames(adni):
    from flexmoe.analysis import bank_similarity, expert_activation

    data = adni.restrict("IGCB")
    torch.manual_seed(0)
    model = create_model("flexmoe", data.spec)
    sim = bank_similarity(model, data)
    present = data.combo_counts("train")
    assert list(dict.fromkeys(sim["panel"])) == ["row", "column", "embedding"]
    assert len(sim[sim["panel"] == "row"]) == len(present) ** 2
    emb = sim[sim["panel"] == "embedding"]  # the extra panel: bank entry vs encoder mean
    assert set(emb["row"]) == set(present) - {"IGCB"}
    for _, row in emb.iterrows():
        assert row["column"] not in row["row"] and -1 <= row["cosine"] <= 1
    assert len(emb) == sum(4 - len(c) for c in present if c != "IGCB")
    act = expert_activation(model, data)
    tokens_routed = 4 * 16 * 4 * int(data.splits["train"].numel())  # k × P × M × samples
    assert act["tokens"].sum() == tokens_routed
    for _, group in act.groupby("expert"):
        assert abs(group["share"].sum() - 1) < 1e-6


def test_top1_of_non_full_tokens_moves_to_the_combination_expert_during_training():
    from bench.data.load import load_data
    from bench.training.train import make_adam, seed_everything, train_step
    from flexmoe.analysis import specialisation

    data = load_data("synthetic-adni", {"scale": 0.3}).restrict("IGCB")
    seed_everything(0)
    model = create_model("flexmoe", data.spec)
    before = specialisation(model, data)
    optimizer = make_adam(model, 1e-4, 0.0)
    generator = torch.Generator().manual_seed(0)
    model.train()
    for step, batch in enumerate(data.batches("train", 8, "shuffle", generator)):
        train_step(model, batch, optimizer)
        if step == 60:
            break
    after = specialisation(model, data)
    assert before < 0.1 < 0.5 < after, (before, after)


def test_evaluation_does_not_depend_on_the_batch_size(adni):
    """Routing is per token and noise-free in eval, so CPU's smaller default eval batches
    give the predictions of one large batch."""
    from bench.training.train import eval_batch_size_for, predict, seed_everything

    data = adni.restrict("IGCB")
    seed_everything(0)
    model = create_model("flexmoe", data.spec)
    assert eval_batch_size_for(data.device) == 64 < data.splits["val"].numel()
    probs, labels = predict(model, data, "val")
    probs_one_batch, labels_one_batch = predict(model, data, "val", batch_size=1024)
    torch.testing.assert_close(torch.from_numpy(probs), torch.from_numpy(probs_one_batch),
                               rtol=1e-4, atol=1e-5)
    assert (labels == labels_one_batch).all()
