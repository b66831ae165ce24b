"""The shared dropout: same distribution as ``nn.Dropout``, fast random-bit mask on CPU."""

import pytest
import torch

from bench.blocks import Dropout, _bits_per_draw


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
