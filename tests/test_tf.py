"""TF specifics: exact parameter count and the fused-tensor size rule."""

from __future__ import annotations

import torch

from bench.complexity import count_params
from bench.registry import create_model, resolve_hparams
from tests.conftest import spec_of


def test_exact_parameter_count_two_modalities():
    spec = spec_of({"A": 100, "B": 40}, num_classes=3)
    model = create_model("tf", spec)
    # Tokenisers, H=128, P=16: A 128·ceil(100/16)+128 = 1,024; B 128·3+128 = 512.
    # Subnets (d=128 for M=2): 3 × Linear(128,128) = 3 × 16,512 = 49,536 per modality → 99,072.
    # Post-fusion: fused (128+1)² = 16,641 → Linear(16,641,128) 2,130,176 + Linear(128,128)
    # 16,512 + Linear(128,3) 387 = 2,147,075.   Total 1,536 + 99,072 + 2,147,075 = 2,247,683.
    assert count_params(model) == 2_247_683


def test_subnet_width_keeps_fused_tensor_small():
    for letters, width in (("AB", 128), ("ABC", 32), ("ABCD", 16)):
        spec = spec_of(dict.fromkeys(letters, 10))
        assert resolve_hparams("tf", spec)["subnet_dim"] == width
        assert (width + 1) ** len(letters) <= 100_000


def test_constant_one_keeps_unimodal_terms_when_a_modality_is_missing():
    spec = spec_of({"A": 10, "B": 10})
    model = create_model("tf", spec).eval()
    from bench.data.core import Batch

    x = {"A": torch.randn(2, 10), "B": torch.randn(2, 10)}
    obs = torch.tensor([[True, False], [True, False]])
    batch = Batch(x, obs, torch.zeros(2, dtype=torch.long), torch.zeros(2, dtype=torch.long))
    logits, _ = model(batch)
    # the two samples differ only in A: the output must still depend on A alone
    assert not torch.allclose(logits[0], logits[1])
