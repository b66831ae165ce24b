"""Seeded synthetic stand-in for the MIMIC-IV one-year-mortality task of Flex-MoE.

Why: MIMIC-IV needs credentialed access; this generator gives the suite a second,
binary, class-imbalanced data set with all seven modality combinations, so that code
paths for three modalities and class weights are exercised without the real data.

Mechanism (the data card, ``datasets/synthetic-mimic/README.md``, has the numbers):

* 4,000 admissions at ``scale=1`` (the real cohort is larger; ``scale`` grows it), with
  fixed per-combination counts: labs/vitals are almost always there, notes and codes less
  often, and 56 % of samples are fully observed (the suite draws validation and test sets
  from those). Each combination has its own mortality rate (labs-only stays die least),
  so missingness carries label information.
* Additive signal is weak per modality: each modality sees its own noisy copy of an
  acuity latent that is shifted for deceased patients; noise is partly shared.
* Interaction-only signal: pairs L x C and L x N share latent factors ``u``; the labs hold
  ``u``, the codes or the note embedding hold ``u * t`` with ``t = +1`` for deceased and
  ``-1`` for survivors. Each side alone has the same distribution in both classes.
* Nuisance: age, comorbidity burden and four organ-system latents tie the modalities
  together; lab values are log-normal (right-skewed) before standardisation; note
  embeddings share a common direction and note-type topics and are unit-normalised.
"""

from __future__ import annotations

import numpy as np

from bench.data.arrays import Modality, RawArrays
from bench.data.synthetic import layout, loaded, pack, scaled_counts, severity

Arr = np.ndarray
Rng = np.random.Generator

MODALITIES: tuple[Modality, ...] = (
    Modality("labs_vitals", "L", (60,), "vector"),
    Modality("notes", "N", (768,), "vector"),
    Modality("codes", "C", (300,), "vector"),
)
CLASS_NAMES: tuple[str, ...] = ("survived", "deceased")
CLASS_WEIGHTS: tuple[float, ...] = (0.25, 0.75)

#: Admissions per observed combination at ``scale=1`` (L 91 %, N 72 %, C 79 %, LNC 56 %).
COMBINATION_COUNTS: dict[str, int] = {
    "LNC": 2240, "LN": 400, "LC": 640, "NC": 160, "L": 360, "N": 80, "C": 120,
}
#: One-year mortality per combination (about 25 % overall).
DEATH_RATE: dict[str, float] = {
    "LNC": 0.27, "LN": 0.24, "LC": 0.21, "NC": 0.30, "L": 0.17, "N": 0.25, "C": 0.20,
}

ACUITY_GAIN = {"L": 0.5, "N": 0.55, "C": 0.75}  # deceased-minus-survived shift per modality
SHARED_NOISE = 0.1  # fraction of acuity noise common to all modalities
N_PAIR = 3  # latent factors per interacting pair (L x C and L x N)
PAIR_NOISE = 1.5  # noise on each recorded side of an interaction factor
NOTE_SIGNAL = 0.1  # length of the signal lines in an embedding before normalisation
N_ORGANS = 4  # renal, hepatic, haematological, inflammatory


def _labs(rng: Rng, acuity: Arr, age: Arr, organs: Arr, u_lc: Arr, u_ln: Arr) -> Arr:
    """8 vitals (symmetric) then 52 labs (log-normal); organ groups, acuity, pair columns."""
    n = acuity.shape[0]
    z = 0.8 * rng.standard_normal((n, 60))
    for k in range(N_ORGANS):  # each organ system drives a block of 13 labs
        z[:, 8 + 13 * k: 21 + 13 * k] += loaded(rng, organs[:, k], 13, 0.3, 0.8)
    z[:, 8:60] += loaded(rng, age, 52, -0.1, 0.2)
    cols = np.r_[0:2, 8:12, 21:24, 34:37, 47:49]  # acuity shows in vitals and scattered labs
    z[:, cols] += loaded(rng, acuity, cols.size, 0.35, 0.6)
    x = z.copy()
    x[:, 8:] = np.exp(rng.uniform(0.3, 0.7, 52) * z[:, 8:])  # right-skewed lab values
    x[:, 2:2 + N_PAIR] = u_lc + PAIR_NOISE * rng.standard_normal((n, N_PAIR))
    x[:, 5:5 + N_PAIR] = u_ln + PAIR_NOISE * rng.standard_normal((n, N_PAIR))
    return x


def _notes(rng: Rng, acuity: Arr, age: Arr, u: Arr, t: Arr) -> Arr:
    """Unit-norm 768-d embeddings: common direction, note-type topics, weak signal lines."""
    n, d = acuity.shape[0], MODALITIES[1].num_features
    n_topics = 16
    basis = np.linalg.qr(rng.standard_normal((d, 3 + N_PAIR + n_topics)))[0].T
    mean_dir, acuity_dir, age_dir = basis[0], basis[1], basis[2]
    pair_dirs, topics = basis[3:3 + N_PAIR], basis[3 + N_PAIR:]
    mix = rng.dirichlet(np.full(n_topics, 0.3), n)
    e = rng.standard_normal((n, d)) / np.sqrt(d) + 0.9 * mean_dir[None, :] + 0.8 * mix @ topics
    e += NOTE_SIGNAL * acuity[:, None] * acuity_dir + 0.05 * age[:, None] * age_dir
    hidden = u * t[:, None] + PAIR_NOISE * rng.standard_normal((n, N_PAIR))
    e += NOTE_SIGNAL * hidden @ pair_dirs
    return e / np.linalg.norm(e, axis=1, keepdims=True)


def _codes(rng: Rng, acuity: Arr, burden: Arr, organs: Arr, u: Arr, t: Arr) -> Arr:
    """Multi-hot ICD-9 codes by prevalence rank: Zipf-like base rates, burden, organ links."""
    n, f = acuity.shape[0], MODALITIES[2].num_features
    p = np.clip(0.45 * np.arange(1, f + 1) ** -0.65, 0.002, 0.45)
    logit = np.log(p / (1 - p))[None, :] + loaded(rng, burden, f, 0.2, 0.5)
    for k in range(N_ORGANS):  # ten codes per organ system, spread over the ranks
        cols = np.arange(60 + k, 300, 24)[:10]
        logit[:, cols] += loaded(rng, organs[:, k], cols.size, 0.5, 1.0)
    logit[:, 30:70] += loaded(rng, acuity, 40, 0.5, 1.0)  # codes that track acuity
    hidden = u * t[:, None] + PAIR_NOISE * rng.standard_normal((n, N_PAIR))
    logit[:, 20:20 + N_PAIR] = -1.0 + 1.5 * hidden
    return (rng.random((n, f)) < 1.0 / (1.0 + np.exp(-logit))).astype(np.float64)


#: Version of the generator: bump it with any change that changes a generated value, so
#: runs keyed on the old data are not matched (it is the data set's content digest).
VERSION = 1


def generate(seed: int = 0, scale: float = 1.0) -> RawArrays:
    """Build synthetic-mimic: 4,000 admissions times ``scale``, seeded throughout."""
    rng = np.random.default_rng(seed)
    letters = "".join(m.letter for m in MODALITIES)
    mix = {k: (1.0 - r, r) for k, r in DEATH_RATE.items()}
    observed, labels = layout(scaled_counts(COMBINATION_COUNTS, scale), mix, letters, rng)
    n = labels.shape[0]
    acu = severity(labels, len(CLASS_NAMES), rng, ACUITY_GAIN, SHARED_NOISE)
    age = 0.3 * labels + rng.standard_normal(n)
    burden = 0.5 * age + np.sqrt(0.75) * rng.standard_normal(n)
    organs = 0.3 * burden[:, None] + rng.standard_normal((n, N_ORGANS))
    u_lc, u_ln = rng.standard_normal((n, N_PAIR)), rng.standard_normal((n, N_PAIR))
    t = np.where(labels == 1, 1.0, -1.0)
    raw = {
        "L": _labs(rng, acu["L"], age, organs, u_lc, u_ln),
        "N": _notes(rng, acu["N"], age, u_ln, t),
        "C": _codes(rng, acu["C"], burden, organs, u_lc, t),
    }
    return pack(raw, observed, labels, MODALITIES, {"L": slice(None)}, "MIMIC-S", CLASS_NAMES,
                CLASS_WEIGHTS)
