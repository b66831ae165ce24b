"""Context for every results table: what no model and a linear model score on the same data.

Two reference predictors per combination, computed by the suite on exactly the run's split
and evaluation samples: the majority class of the training samples, and a logistic
regression (scikit-learn) on the run's modalities' features side by side, zeros where a
modality is missing (the data are standardised, so zero is the training mean), with the
data set's class weights and its L2 strength chosen on the validation samples among
:data:`C_GRID` (the models too are selected on validation; strong regularisation is what a
linear model needs with hundreds of features and a few hundred patients). A reader sees
at a glance which models beat a linear model, and a table in which models sit at the
majority rate is not read as a ranking.
"""

from __future__ import annotations

import json
import logging
import warnings
from functools import lru_cache
from typing import Any

import numpy as np
import sklearn
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression

from bench.data.load import load_data
from bench.training.metrics import classification_metrics

logger = logging.getLogger(__name__)

#: What computes the logistic regression, named beside its numbers: its last digits can
#: move with the library's version.
LIBRARY = f"scikit-learn {sklearn.__version__}"

MAJORITY = "majority class"
LOGREG = "logistic regression"
#: Context lines in the order tables show them.
CONTEXT = (MAJORITY, LOGREG)
#: Inverse L2 strengths tried for the logistic regression (the best validation accuracy
#: wins, the smallest C on ties).
C_GRID = (1e-4, 1e-3, 1e-2)


def _matrix(data, split: str) -> tuple[np.ndarray, np.ndarray]:
    idx = data.splits[split]
    x = np.concatenate([data.features[c].index_select(0, idx).reshape(len(idx), -1).numpy()
                        for c in data.spec.letters], axis=1)
    return x, data.labels.index_select(0, idx).numpy()


@lru_cache(maxsize=256)
def _scores(dataset: str, options_json: str, split_seed: int,
            combo: str) -> dict[str, dict[str, float]]:
    data = load_data(dataset, json.loads(options_json), split_seed).restrict(combo)
    num_classes = data.spec.num_classes
    x_train, y_train = _matrix(data, "train")
    x_val, y_val = _matrix(data, "val")
    x_test, y_test = _matrix(data, "test")
    counts = np.bincount(y_train, minlength=num_classes)
    majority = np.zeros((len(y_test), num_classes))
    majority[:, int(counts.argmax())] = 1.0
    weights = data.spec.class_weights
    model = LogisticRegression(max_iter=2000, warm_start=True, class_weight=(
        dict(enumerate(weights)) if weights else None))
    best_acc, probs = -1.0, majority
    for c in C_GRID:  # weakest regularisation last: each fit starts from the previous one
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            model.set_params(C=c).fit(x_train, y_train)
        acc = float((model.predict(x_val) == y_val).mean())
        if acc > best_acc:
            best_acc = acc
            probs = np.zeros((len(y_test), num_classes))
            probs[:, model.classes_] = model.predict_proba(x_test)
    return {MAJORITY: classification_metrics(majority, y_test),
            LOGREG: classification_metrics(probs, y_test)}


def context_scores(dataset: str, data_options: dict[str, Any], split_seed: int,
                   combo: str) -> dict[str, dict[str, float]]:
    """``{"majority class": {acc, f1, auc}, "logistic regression": {...}}`` on the test
    samples of ``combo`` (fractions, as the store's metrics); cached per process."""
    return _scores(dataset, json.dumps(data_options, sort_keys=True), int(split_seed), combo)


def context_metric(rows: Any, metric: str) -> dict[str, dict[str, float]]:
    """Per combination, each context line's value of ``metric`` (``test_acc`` …, fractions)
    for the runs ``rows`` (a DataFrame with ``dataset``, ``data_options``, ``split_seed`` and
    ``combo``); combinations whose data cannot be loaded here are left out, with a log line."""
    split, name = metric.split("_", 1)
    if split != "test":
        return {}
    out: dict[str, dict[str, float]] = {}
    for combo, group in rows.groupby("combo", sort=False):
        first = group.iloc[0]
        options = first.get("data_options")
        seed = first.get("split_seed")
        seed = int(seed) if isinstance(seed, (int, float)) and seed == seed else 0
        options = options if isinstance(options, dict) else {}
        try:
            changed = _changed(group, first["dataset"], options, seed)
            if changed:
                logger.warning("no context lines for %s %s: %s", first["dataset"], combo,
                               changed)
                continue
            scores = context_scores(first["dataset"], options, seed, combo)
        except (OSError, ValueError, KeyError) as exc:
            logger.warning("no context lines for %s %s: %s", first["dataset"], combo, exc)
            continue
        out[combo] = {line: scores[line][name] for line in CONTEXT}
    return out


def _changed(group: Any, dataset: str, options: dict[str, Any], split_seed: int) -> str:
    """Why the data loaded now are not those the runs of ``group`` trained on ("" when they
    are): the content digest stored in their configuration, or their split's digest."""
    data = load_data(dataset, options, split_seed)
    stored = {c.get("data_digest") for c in group.get("config", []) if isinstance(c, dict)}
    splits = set(group["split_digest"].dropna()) if "split_digest" in group else set()
    if stored - {None, data.content_digest} or splits - {data.split_digest}:
        return ("its data changed since these runs trained (the data digest or split stored "
                "with them differs from the files now); the table shows their results on the "
                "data they ran on — re-run the grid to compare on the current data")
    return ""
