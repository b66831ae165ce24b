"""A new baseline in a dozen lines: late fusion of per-modality MLP logits.

Use it with ``run_bench.py run --plugin examples/late_fusion.py --models late-fusion``.
"""

import torch
from torch import nn

from bench.blocks import ModalityTokenizer
from bench.model import BenchModel
from bench.registry import register_model


@register_model("late-fusion")
class LateFusion(BenchModel):
    """Average of per-modality classifiers over the observed modalities."""

    def __init__(self, spec, hidden: int = 64, num_patches: int = 16):
        super().__init__(spec)
        self.tokenizer = ModalityTokenizer(spec, num_patches, hidden)
        self.heads = nn.ModuleDict({c: nn.Linear(hidden, spec.num_classes) for c in spec.letters})

    def forward(self, batch):
        tokens = self.tokenizer(batch)
        logits = torch.stack([self.heads[c](tokens[c].mean(1)) for c in self.spec.letters], 1)
        weights = batch.observed.float().unsqueeze(-1)
        return (logits * weights).sum(1) / weights.sum(1), logits.new_zeros(())
