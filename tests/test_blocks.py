"""The shared dropout: same distribution as ``nn.Dropout``, fast random-bit mask on CPU; how
often each model's transformer blocks drop the attention branch."""

import inspect

import pytest
import torch

from bench.blocks import Dropout, TransformerBlock, _bits_per_draw
from bench.registry import create_model, list_models, model_class
from tests.conftest import spec_of


@pytest.mark.parametrize("p, bits", [(0.5, 1), (0.25, 2), (0.75, 2), (0.125, 4),
                                     (1 / 256, 8), (0.1, None), (0.3, None), (0.0, 1)])
def test_bits_per_draw(p, bits):
    assert _bits_per_draw(p) == bits


@pytest.mark.parametrize("p", [0.5, 0.25, 0.75, 0.125, 0.1, 0.3])
def test_mask_values_and_keep_rate(p):
    torch.manual_seed(0)
    drop = Dropout(p).train()
    n = 200_003  # not a multiple of 32: the tail of the last random word is discarded
    x = torch.ones(n)
    y = drop(x)
    assert y.shape == x.shape
    kept = y != 0
    assert torch.allclose(y[kept], torch.full_like(y[kept], 1 / (1 - p)))
    sigma = (p * (1 - p) / n) ** 0.5
    assert abs(kept.float().mean().item() - (1 - p)) < 5 * sigma


def test_neighbouring_elements_are_independent():
    """Elements drawn from the same random byte must not share their decision."""
    torch.manual_seed(1)
    for p in (0.5, 0.25):
        kept = Dropout(p).train().mask(torch.ones(400_000)) != 0
        pairs = (kept[0::2] & kept[1::2]).float().mean().item()
        assert abs(pairs - (1 - p) ** 2) < 0.006


def test_seeded_masks_repeat_and_gradient_is_the_mask():
    drop = Dropout(0.5).train()
    x = torch.randn(8, 64, 128, requires_grad=True)
    torch.manual_seed(3)
    y = drop(x)
    torch.manual_seed(3)
    assert torch.equal(drop(x), y)
    y.sum().backward()
    torch.manual_seed(3)
    assert torch.equal(x.grad, drop.mask(x))


def test_identity_in_eval_and_at_zero():
    x = torch.randn(4, 5)
    assert Dropout(0.5).eval()(x) is x
    assert Dropout(0.0).train()(x) is x


def test_table_is_not_state():
    assert "table" not in Dropout(0.5).state_dict()


@pytest.mark.parametrize("p", [-0.1, 1.0])
def test_bad_probability(p):
    with pytest.raises(ValueError, match=r"\[0, 1\)"):
        Dropout(p)


# --- dropouts on the attention branch of TransformerBlock -------------------------------------

def attention_branch(block: TransformerBlock, x: torch.Tensor) -> torch.Tensor:
    """What the attention sub-layer adds on top of its residual: ``attend(x) − x`` for the
    standard residual, ``attend(x) − a`` (the dropped copy of ``a``) for the official one."""
    seen = []
    handle = block.attn.register_forward_hook(lambda module, args, out: seen.append(out))
    try:
        y = block.attend(x)
    finally:
        handle.remove()
    return y - (seen[0] if block.attn_residual == "official" else x)


def attention_zero_fraction(block: TransformerBlock, seed: int = 0) -> float:
    """Fraction of exact zeros of the attention branch, in training mode, on a constant input.

    A constant input has LayerNorm output 0 (its bias at init), so q = k = v = 0 and the
    attention output is the projection's bias on every token: nonzero (checked in eval mode),
    so every zero of the branch is a dropout's.
    """
    hidden = block.norm1.normalized_shape[0]
    x = torch.zeros(64, 16, hidden)  # 131,072 elements per hidden 128
    was_training = block.training
    try:
        with torch.no_grad():
            assert (attention_branch(block.eval(), x) != 0).all()
            torch.manual_seed(seed)
            return (attention_branch(block.train(), x) == 0).float().mean().item()
    finally:
        block.train(was_training)


def expected_zero_fraction(p: float, dropouts: str) -> float:
    return p if dropouts == "once" else 1 - (1 - p) ** 2


@pytest.mark.parametrize("residual", ["standard", "official"])
@pytest.mark.parametrize("dropouts", ["once", "twice"])
@pytest.mark.parametrize("p", [0.5, 0.25, 0.1])
def test_attention_branch_is_dropped_once_or_twice(residual, dropouts, p):
    block = TransformerBlock(128, 4, dropout=p, attn_residual=residual, attn_dropouts=dropouts)
    assert block.attn_dropouts == dropouts
    frac = attention_zero_fraction(block)
    # at p = 0.5: once 0.5, twice 0.75; n = 131,072 gives σ ≤ 0.0014
    assert abs(frac - expected_zero_fraction(p, dropouts)) < 0.01, frac


def test_default_block_drops_the_attention_branch_twice_as_flex_moe():
    block = TransformerBlock(128, 4, dropout=0.5)
    assert block.attn_dropouts == "twice"
    assert abs(attention_zero_fraction(block) - 0.75) < 0.01


def test_once_and_twice_agree_in_eval_and_share_parameters():
    torch.manual_seed(0)
    once = TransformerBlock(32, 4, dropout=0.5, attn_dropouts="once")
    twice = TransformerBlock(32, 4, dropout=0.5, attn_dropouts="twice")
    twice.load_state_dict(once.state_dict())
    x = torch.randn(3, 5, 32)
    torch.testing.assert_close(once.eval()(x), twice.eval()(x))


def test_bad_attn_dropouts_is_rejected():
    with pytest.raises(ValueError, match="attn_dropouts"):
        TransformerBlock(32, 4, attn_dropouts="thrice")


#: Every model built on TransformerBlock → how its sources drop the attention branch: twice in
#: the released Flex-MoE, I2MoE and mmFormer code, once in BERT (MAG), ViT / V-MoE (LIMoE) and a
#: standard pre-LN block (ShaSpec, whose CNN encoders have no attention).
ATTENTION_DROPOUTS = [
    ("flexmoe", {}, "twice"),
    ("flexmoe", {"attn_residual": "standard", "num_layers": 2}, "twice"),
    ("flexmoe-no-es-eg", {}, "twice"),
    ("i2moe", {}, "twice"),
    ("i2moe", {"fusion_sparse": True, "num_layers": 2}, "twice"),
    ("mmformer", {}, "twice"),
    ("mag", {}, "once"),
    ("shaspec", {}, "once"),
    ("limoe", {}, "once"),
]


@pytest.mark.parametrize("name, kwargs, dropouts", ATTENTION_DROPOUTS,
                         ids=[f"{n}-{i}" for i, (n, _, _) in enumerate(ATTENTION_DROPOUTS)])
def test_each_model_drops_the_attention_branch_as_its_source(name, kwargs, dropouts):
    model = create_model(name, spec_of({"A": 12, "B": 9, "C": 20}), **kwargs)
    blocks = [m for m in model.modules() if isinstance(m, TransformerBlock)]
    assert blocks
    for i, block in enumerate(blocks):
        p = block.drop.p
        assert p > 0
        frac = attention_zero_fraction(block, seed=i)
        assert abs(frac - expected_zero_fraction(p, dropouts)) < 0.01, (i, p, frac)


def test_every_model_built_on_transformer_blocks_is_checked():
    checked = {model_class(name) for name, _, _ in ATTENTION_DROPOUTS}
    for name in list_models(variants=False):
        cls = model_class(name)
        source = inspect.getsource(inspect.getmodule(cls))
        if "TransformerBlock" in source or "SparseFusionLayer" in source:
            assert cls in checked, f"{name} uses TransformerBlock: add it to ATTENTION_DROPOUTS"
