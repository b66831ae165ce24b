"""Classification metrics as the paper reports them: accuracy, macro-F1, AUC (one-vs-rest)."""

from __future__ import annotations

import logging
import math

import numpy as np
from sklearn.metrics import f1_score, roc_auc_score

logger = logging.getLogger(__name__)


def classification_metrics(probs: np.ndarray, y: np.ndarray) -> dict[str, float]:
    """``acc``, ``f1`` (macro) and ``auc`` as fractions in [0, 1].

    AUC is one-vs-rest on softmax probabilities for more than two classes and uses the
    positive-class column for two (the official multi-class call fails on binary data).
    It is NaN, with a warning, when ``y`` holds a single class.
    """
    probs = np.asarray(probs, dtype=np.float64)
    probs = probs / probs.sum(1, keepdims=True)
    y = np.asarray(y)
    num_classes = probs.shape[1]
    pred = probs.argmax(1)
    out = {
        "acc": float((pred == y).mean()),
        "f1": float(f1_score(y, pred, average="macro", labels=np.arange(num_classes),
                             zero_division=0)),
        "auc": math.nan,
    }
    if len(np.unique(y)) < 2:
        logger.warning("AUC undefined: the evaluated samples hold a single class")
    elif num_classes == 2:
        out["auc"] = float(roc_auc_score(y, probs[:, 1]))
    else:
        present = np.unique(y)
        if len(present) < num_classes:
            logger.warning("AUC over the %d classes present of %d", len(present), num_classes)
            sub = probs[:, present] / probs[:, present].sum(1, keepdims=True)
            out["auc"] = float(roc_auc_score(y, sub, multi_class="ovr", labels=present))
        else:
            out["auc"] = float(roc_auc_score(y, probs, multi_class="ovr"))
    return out
