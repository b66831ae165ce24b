"""Test-time missing modalities: a trained model scored again on its own test patients with
some of its modalities removed, through its own missing-modality path (bank, zero fill,
shared feature…) and without retraining, so robustness costs evaluation passes, not runs.

The metrics are stored with the run (the store's ``robustness`` column: removed letters →
``{"acc", "f1", "auc"}``), so no cell trains twice.
"""

from __future__ import annotations

import itertools
import logging
import math
from dataclasses import replace

from bench.data.core import RunData
from bench.model import BenchModel
from bench.training.metrics import metric_names
from bench.training.train import evaluate

logger = logging.getLogger(__name__)


def removal_sets(letters: str) -> tuple[str, ...]:
    """Every non-empty proper subset of ``letters``, the modalities removed at test time:
    by size (one removed first), ``itertools`` order within a size; none for one letter."""
    return tuple("".join(c) for size in range(1, len(letters))
                 for c in itertools.combinations(letters, size))


def test_time_metrics(model: BenchModel, data: RunData,
                      batch_size: int | None = None) -> dict[str, dict[str, float]]:
    """Removed letters → test ACC / macro-F1 / AUC of the trained ``model`` on
    ``data.without(removed)``, for each of :func:`removal_sets` (``{}`` for one modality).

    Under ``eval="all"`` a test sample that observes none of the kept modalities cannot be
    scored and is left out, as that rule leaves out samples with none of the run's; under
    the default ``complete`` rule every test patient is scored every time.
    """
    out: dict[str, dict[str, float]] = {}
    for removed in removal_sets(data.spec.letters):
        view = data.without(removed)
        test = view.splits["test"]
        scored = test[view.combo.index_select(0, test) >= 0]
        if scored.numel() == 0:
            out[removed] = dict.fromkeys(metric_names(), math.nan)
            continue
        if scored.numel() < test.numel():
            logger.info("without %s: %d of %d test samples observe no kept modality and are "
                        "not scored", removed, test.numel() - scored.numel(), test.numel())
            view = replace(view, splits={**view.splits, "test": scored})
        out[removed] = evaluate(model, view, "test", batch_size)
    return out
