"""Missingness imposed on a data set's training split by a named mechanism.

Why: the paper compares models under one fixed pattern (ADNI's); how a model copes with
missing modalities needs the same data under controlled kinds and amounts of missingness.
``load_data`` applies the options ``missing``, ``missing_rate`` and ``missing_seed`` after
loading, on the training split only — validation and test keep the data set's own
modalities and evaluation rule, so every setting is scored on the same samples — and so
every data set takes them, ``folder:PATH`` and ``mfeat`` included.

Rules shared by every mechanism:

* only training rows change, and a sample only loses modalities, never gains one;
* ``missing_rate`` is the expected fraction of the training split's observed (sample,
  modality) entries that the mechanism drops, before the keep-one rule;
* keep-one rule: a sample left with no modality gets one of its originally observed ones
  back, chosen at random (seeded by ``missing_seed``, like every draw here);
* features of newly missing entries are zeroed, as for any missing modality.

Mechanisms (a modality's *score*: the mean of its features, each standardised over the
training rows that observe the modality, itself standardised over those rows):

* ``mcar``: each observed entry is dropped independently with probability ``rate``.
* ``mar``: the *driver* — the modality observed most often in the training split (ties: the
  first in the data set's order) — is never dropped. Each other observed entry of a sample
  that observes the driver is dropped with probability ``sigmoid(a + STRENGTH · z)``, z the
  sample's driver score; a sample without the driver loses each entry at the mean of that
  probability. ``a`` is solved so that the expected drops are ``rate`` × the observed
  entries, so the other modalities lose more than ``rate`` each, and a rate above the share
  of non-driver entries is refused.
* ``mnar``: each observed entry is dropped with probability ``sigmoid(a_j + STRENGTH · z_ij)``,
  z_ij the score of that modality itself, ``a_j`` solved per modality so that its mean is
  ``rate``: high values go missing more often.
* ``mnar-label``: the same with the sample's class in place of the modality's value — z the
  class index (the data set's class order) standardised over the training rows — so the
  later classes lose modalities more often (ADNI: Alzheimer's disease more than cognitively
  normal), and what is missing tells the label.
* ``pattern=adni`` (alias ``adni``): ADNI's observed combinations of the Flex-MoE paper's
  Figure 2 (IGCB 1474, C 479, IC 157, ICB 127, GCB 122, CB 21): each training sample is
  given one of them, in exact shares (rounded down, the remainder to IGCB) assigned at
  random, and keeps the modalities it observed that the combination holds. A data set with
  the letters I, G, C, B uses them directly; one that declares a role map (ADNI letter →
  its letters, ``meta["adni_roles"]``, as ``mfeat``) uses it; any other with exactly four
  modalities maps them in its order onto I, G, C, B. ``missing_rate`` does not apply.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import replace
from typing import Any, Literal

import numpy as np
import torch

from bench.data.core import MultimodalData
from bench.data.synthetic_adni import COMBINATION_COUNTS
from bench.errors import UserError

logger = logging.getLogger(__name__)

NONE, PATTERN = "none", "pattern=adni"
#: The accepted values of the ``missing`` option (``adni`` is normalised to ``pattern=adni``).
Mechanism = Literal["none", "mcar", "mar", "mnar", "mnar-label", "pattern=adni", "adni"]
MECHANISMS: tuple[str, ...] = (NONE, "mcar", "mar", "mnar", "mnar-label", PATTERN)
ALIASES = {"adni": PATTERN}
#: Mechanisms that take ``missing_rate``.
RATED: tuple[str, ...] = ("mcar", "mar", "mnar", "mnar-label")
#: One line per mechanism, for ``list datasets`` and the data cards.
DESCRIPTIONS = {
    NONE: "no missingness imposed",
    "mcar": "each modality of each training sample dropped independently with probability "
            "missing_rate",
    "mar": "the most observed modality is kept; the others are dropped more often the "
           "higher its value",
    "mnar": "each modality dropped more often the higher its own value",
    "mnar-label": "each modality dropped more often the later the sample's class",
    PATTERN: "(alias adni) ADNI's observed combinations (Flex-MoE paper, Figure 2) in their "
             "shares; missing_rate does not apply",
}
#: Log-odds of a drop per standard deviation of the score (``mar``, ``mnar``).
STRENGTH = 2.0
ADNI_LETTERS = "IGCB"
#: ADNI's observed combinations and their counts (letters I, G, C, B).
ADNI_PATTERN: tuple[tuple[str, int], ...] = tuple(COMBINATION_COUNTS.items())
#: Features standardised per block of columns, so a wide modality is never copied whole.
_BLOCK = 4096


class MissingnessError(UserError):
    """A mechanism that cannot be imposed on this data set (too few modalities for the ADNI
    pattern, a ``mar`` rate above what keeping the driver allows)."""


def normalise(mechanism: str) -> str:
    """The canonical name of a mechanism; an unknown one is an error naming the accepted."""
    name = ALIASES.get(mechanism, mechanism)
    if name not in MECHANISMS:
        raise UserError(f"unknown missingness mechanism {mechanism!r}; accepted: "
                        f"{', '.join(MECHANISMS)} (alias adni)")
    return name


def applicable(options: Mapping[str, Any], default: str = NONE) -> dict[str, Any]:
    """``options`` with ``missing`` normalised and the missingness options that do not apply
    left out — ``missing_rate`` unless the mechanism takes a rate, ``missing_seed`` when
    nothing is imposed, ``missing`` itself when it is ``none`` and so is the data set's
    ``default`` — so a run without imposed missingness keeps the key it always had."""
    out = dict(options)
    mechanism = normalise(out.get("missing", default))
    out["missing"] = mechanism
    if mechanism not in RATED:
        out.pop("missing_rate", None)
    if mechanism == NONE:
        out.pop("missing_seed", None)
        if normalise(default) == NONE:
            del out["missing"]
    return out


def _standardised(values: np.ndarray) -> np.ndarray:
    sd = values.std()
    return (values - values.mean()) / sd if sd > 0 else np.zeros_like(values)


def modality_scores(features: Mapping[str, np.ndarray], observed: np.ndarray,
                    rows: np.ndarray, letters: str) -> np.ndarray:
    """``[len(rows), M]``: each modality's standardised score (module docstring) for the
    samples ``rows``, computed over those that observe it; 0 where it is not observed."""
    out = np.zeros((len(rows), len(letters)))
    for j, c in enumerate(letters):
        present = observed[rows, j]
        if not present.any():
            continue
        flat = np.asarray(features[c]).reshape(len(observed), -1)
        index = rows[present]
        total = np.zeros(len(index))
        for start in range(0, flat.shape[1], _BLOCK):  # mean of standardised columns
            block = flat[index, start:start + _BLOCK].astype(np.float64)
            sd = block.std(0)
            total += (block / np.where(sd > 0, sd, 1.0)).sum(1)
        out[present, j] = _standardised(total)
    return out


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * x))


def _logistic(z: np.ndarray, mean: float) -> np.ndarray:
    """``sigmoid(a + STRENGTH · z)`` with the intercept ``a`` solved (bisection) so that its
    mean over ``z`` is ``mean``."""
    if mean <= 0.0 or len(z) == 0:
        return np.zeros(len(z))
    low, high = -60.0, 60.0
    for _ in range(100):
        mid = 0.5 * (low + high)
        low, high = (mid, high) if _sigmoid(mid + STRENGTH * z).mean() < mean else (low, mid)
    return _sigmoid(0.5 * (low + high) + STRENGTH * z)


def mar_driver(observed: np.ndarray) -> int:
    """Column of the ``mar`` driver: the modality observed most often (ties: the first)."""
    return int(np.argmax(observed.sum(0)))


def _drop_probability(mechanism: str, obs: np.ndarray, scores: np.ndarray | None,
                      rate: float, letters: str) -> np.ndarray:
    """Per observed entry of the training rows ``obs``, the mechanism's drop probability
    (``scores``: the modalities' own, or for ``mnar-label`` the class score in every column)."""
    p = np.zeros(obs.shape)
    if mechanism == "mcar":
        p[obs] = rate
    elif mechanism in ("mnar", "mnar-label"):
        for j in range(obs.shape[1]):
            p[obs[:, j], j] = _logistic(scores[obs[:, j], j], rate)
    else:  # mar
        driver = mar_driver(obs)
        droppable = obs.copy()
        droppable[:, driver] = False
        share = droppable.sum() / max(int(obs.sum()), 1)
        if rate >= share:
            raise MissingnessError(f"missing=mar keeps the driver modality {letters[driver]!r}, "
                             f"so at most {share:.3f} of the observed training entries can be "
                             f"dropped; missing_rate={rate:g} is too high")
        target = rate / share
        with_driver = droppable & obs[:, [driver]]
        z = np.broadcast_to(scores[:, [driver]], obs.shape)[with_driver]
        p[with_driver] = _logistic(z, target)
        p[droppable & ~obs[:, [driver]]] = target
    return p


def adni_roles(letters: str, declared: Mapping[str, str] | None = None) -> dict[str, str]:
    """ADNI letter → the data set's letters that play its role (module docstring)."""
    if declared:
        roles = {a: str(declared.get(a, "")) for a in ADNI_LETTERS}
        used = "".join(roles.values())
        if sorted(used) != sorted(letters) or set(declared) - set(ADNI_LETTERS):
            raise MissingnessError(f"the ADNI role map {dict(declared)} must give each of the "
                             f"modalities {letters!r} to exactly one of I, G, C, B")
        return roles
    if sorted(letters) == sorted(ADNI_LETTERS):
        return {a: a for a in ADNI_LETTERS}
    if len(letters) == len(ADNI_LETTERS):
        return dict(zip(ADNI_LETTERS, letters))
    raise MissingnessError(f"missing=pattern=adni needs four modalities (mapped in order onto "
                     f"ADNI's I, G, C, B) or a role map; this data set has {len(letters)} "
                     f"({letters})")


def _pattern_keep(n: int, letters: str, roles: Mapping[str, str],
                  rng: np.random.Generator) -> np.ndarray:
    """``[n, M]``: the ADNI combination given to each of ``n`` samples, as a mask."""
    shares = np.array([count for _, count in ADNI_PATTERN], dtype=float)
    counts = np.floor(shares / shares.sum() * n).astype(int)
    counts[0] += n - counts.sum()
    masks = np.array([[any(c in roles[a] for a in combo) for c in letters]
                      for combo, _ in ADNI_PATTERN])
    keep = np.empty((n, len(letters)), dtype=bool)
    keep[rng.permutation(n)] = masks[np.repeat(np.arange(len(ADNI_PATTERN)), counts)]
    return keep


def simulate(observed: np.ndarray, features: Mapping[str, np.ndarray], train: np.ndarray,
             letters: str, mechanism: str, rate: float = 0.0, seed: int = 0,
             roles: Mapping[str, str] | None = None,
             labels: np.ndarray | None = None) -> np.ndarray:
    """A new observed mask ``[N, M]``: ``observed`` with ``mechanism`` imposed on the rows
    ``train`` (module docstring); ``roles`` is a data set's declared ADNI role map,
    ``labels`` the class indices ``[N]`` (``mnar-label`` only)."""
    mechanism = normalise(mechanism)
    out = np.array(observed, dtype=bool, copy=True)
    train = np.asarray(train, dtype=np.int64)
    if mechanism == NONE or len(train) == 0:
        return out
    rng = np.random.default_rng(seed)
    before = out[train]
    if mechanism == PATTERN:
        keep = _pattern_keep(len(train), letters, adni_roles(letters, roles), rng)
    else:
        if not 0.0 <= rate < 1.0:
            raise UserError(f"missing_rate must lie in [0, 1), got {rate}")
        if mechanism == "mnar-label":
            if labels is None:
                raise UserError("missing=mnar-label needs the samples' labels")
            z = _standardised(np.asarray(labels, dtype=np.float64)[train])
            scores = np.repeat(z[:, None], len(letters), axis=1)
        else:
            scores = (modality_scores(features, out, train, letters) if mechanism != "mcar"
                      else None)
        p = _drop_probability(mechanism, before, scores, rate, letters)
        keep = rng.random(before.shape) >= p
    after = before & keep
    empty = np.flatnonzero(before.any(1) & ~after.any(1))
    if len(empty):  # keep-one rule
        draw = np.where(before[empty], rng.random((len(empty), len(letters))), -1.0)
        after[empty, draw.argmax(1)] = True
    out[train] = after
    return out


def impose(data: MultimodalData, missing: str, missing_rate: float = 0.0,
           missing_seed: int = 0) -> MultimodalData:
    """``data`` with ``missing`` imposed on its training split: a new object (features of
    the modalities that lose entries copied and zeroed there), ``data`` untouched."""
    before = data.observed.numpy()
    try:
        after = simulate(before, {c: x.numpy() for c, x in data.features.items()},
                         data.splits["train"].numpy(), data.letters, missing, missing_rate,
                         missing_seed, data.meta.get("adni_roles"), data.labels.numpy())
    except MissingnessError as exc:
        raise MissingnessError(f"data set {data.name!r}: {exc}") from None
    lost = before & ~after
    features = dict(data.features)
    for j, c in enumerate(data.letters):
        if lost[:, j].any():
            features[c] = features[c].clone()
            features[c][torch.from_numpy(lost[:, j])] = 0.0
    train = data.splits["train"].numpy()
    share = lost[train].sum() / max(int(before[train].sum()), 1)
    driver = (f", driver {data.letters[mar_driver(before[train])]}"
              if normalise(missing) == "mar" else "")
    logger.info("%s: missing=%s imposed on the training split (seed %d%s): %.1f %% of its "
                "observed entries dropped", data.name, normalise(missing), missing_seed,
                driver, 100.0 * share)
    return replace(data, observed=torch.from_numpy(after), features=features)
