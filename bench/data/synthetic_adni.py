"""Seeded synthetic stand-in for the ADNI cohort of the Flex-MoE paper (NeurIPS 2024).

Why: real ADNI needs a data-use agreement, yet the suite must run end to end out of the
box. This generator keeps ADNI's modality layout, its exact observed-combination counts
and a similar difficulty, so that model rankings under missing modalities mean something.

Mechanism (the data card, ``datasets/synthetic-adni/README.md``, has the numbers):

* Missingness is informative. Each observed combination gets its own class mix (C-only
  patients are mostly CN, fully observed ones carry more MCI and Dementia); class counts
  per combination are allocated exactly, then rows are shuffled with the seed.
* Additive signal is weak per modality. Every modality sees its own noisy copy of a
  disease-severity latent (class means -g/0/+g, noise partly shared across modalities),
  spread over a handful of its features. One modality alone is weak; four add up.
* Some signal lives only in interactions. Two modality pairs (I x G and C x B) share
  latent factors ``u``: one side records ``u``, the other ``u * t(y)`` with ``t = +-1``.
  Each side alone is distributed identically for every class (``u`` is symmetric), so no
  single modality, and no linear model, can read it; the sign of the product can
  (``t`` is Dementia-vs-rest for I x G and MCI-vs-rest for C x B).
* Nuisance structure makes it look like data: age and head size shared across
  modalities, ancestry shared by the SNPs and the race one-hot, column noise.

Column loadings are drawn from the seed as well, so each seed is a fresh cohort from
the same family; the column layout (which block holds what) is fixed and documented.
"""

from __future__ import annotations

import numpy as np

from bench.data.arrays import Modality, RawArrays
from bench.data.synthetic import layout, loaded, pack, scaled_counts, severity

Arr = np.ndarray
Rng = np.random.Generator

MODALITIES: tuple[Modality, ...] = (
    Modality("image", "I", (256,), "vector"),
    Modality("genetic", "G", (500,), "vector"),
    Modality("clinical", "C", (40,), "vector"),
    Modality("biospecimen", "B", (12,), "vector"),
)
CLASS_NAMES: tuple[str, ...] = ("CN", "MCI", "Dementia")

#: ADNI's observed-combination counts (letters in canonical order), as in the paper.
COMBINATION_COUNTS: dict[str, int] = {
    "IGCB": 1474, "C": 479, "IC": 157, "ICB": 127, "GCB": 122, "CB": 21,
}
#: Class mix (CN, MCI, Dementia) per combination: how missingness carries label information.
CLASS_MIX: dict[str, tuple[float, ...]] = {
    "IGCB": (0.33, 0.42, 0.25),
    "C": (0.56, 0.34, 0.10),
    "IC": (0.36, 0.44, 0.20),
    "ICB": (0.33, 0.45, 0.22),
    "GCB": (0.30, 0.52, 0.18),
    "CB": (0.43, 0.43, 0.14),
}

SEVERITY_GAIN = {"I": 0.85, "G": 0.85, "C": 0.85, "B": 0.85}  # per-modality class separation
SHARED_NOISE = 0.1  # fraction of severity noise common to all modalities
N_PAIR = 3  # latent factors per interacting modality pair
PAIR_NOISE = 1.3  # noise on each recorded side of an interaction factor


def _image(rng: Rng, sev: Arr, age: Arr, head: Arr, u: Arr) -> Arr:
    """Log region volumes: head size and age act on all, severity on medial-temporal-like ones."""
    n, f = sev.shape[0], MODALITIES[0].num_features
    x = rng.normal(7.5, 1.0, f)[None, :] + 0.5 * rng.standard_normal((n, f))
    x += loaded(rng, head, f, 0.2, 0.5) - loaded(rng, age, f, 0.0, 0.25)
    x[:, :16] -= loaded(rng, sev, 16, 0.4, 0.7)  # atrophy with severity
    x[:, 16:16 + N_PAIR] = u + PAIR_NOISE * rng.standard_normal((n, N_PAIR))
    return x


def _genetic(rng: Rng, sev: Arr, ancestry: Arr, u: Arr, t: Arr) -> Arr:
    """SNP dosages 0/1/2 rescaled to -1/0/1; risk SNPs follow severity, some pair with I."""
    n, f = sev.shape[0], MODALITIES[1].num_features
    maf = rng.uniform(0.05, 0.5, f)
    logit = np.log(maf / (1 - maf))[None, :] + loaded(rng, ancestry, f, -0.3, 0.3)
    logit[:, :40] += loaded(rng, sev, 40, 0.3, 0.6)  # polygenic risk
    dose = rng.binomial(2, 1.0 / (1.0 + np.exp(-logit))).astype(np.float64)
    hidden = u * t[:, None] + PAIR_NOISE * rng.standard_normal((n, N_PAIR))
    dose[:, 40:40 + N_PAIR] = np.digitize(hidden, [-0.55, 0.55])
    return dose - 1.0


def _one_hot(codes: Arr, k: int) -> Arr:
    """One-hot block with ``k`` columns."""
    return np.eye(k)[np.clip(codes, 0, k - 1)]


def _clinical(rng: Rng, sev: Arr, age: Arr, ancestry: Arr, u: Arr) -> tuple[Arr, Arr]:
    """19 one-hot columns (sex, education, marital, race, ethnicity, handedness), 21 numeric."""
    n = sev.shape[0]
    edu = rng.normal(0, 1, n)
    race = np.where(ancestry > 1.0, 1, 0) + rng.choice(5, n, p=[.8, .05, .05, .05, .05])
    blocks = [
        _one_hot(rng.integers(0, 2, n), 2),
        _one_hot(np.digitize(edu + 0.3 * rng.standard_normal(n), [-1, 0, 1]), 4),
        _one_hot(rng.choice(4, n, p=[0.65, 0.15, 0.12, 0.08]), 4),
        _one_hot(race, 5),
        _one_hot((rng.random(n) < 0.05).astype(int), 2),
        _one_hot((rng.random(n) < 0.1).astype(int), 2),
    ]
    num = 0.8 * rng.standard_normal((n, 21))
    num[:, 0] = age
    num[:, 1] = edu + 0.2 * rng.standard_normal(n)
    num[:, 2:8] += loaded(rng, 0.7 * age, 6, -0.5, 0.5)  # vitals / body measures
    num[:, 8:14] += loaded(rng, sev, 6, 0.5, 0.8)  # history / neuro-exam scores
    num[:, 14:14 + N_PAIR] = u + PAIR_NOISE * rng.standard_normal((n, N_PAIR))
    return np.concatenate(blocks, axis=1), num


def _biospecimen(rng: Rng, sev: Arr, age: Arr, u: Arr, t: Arr) -> Arr:
    """CSF Abeta/tau/p-tau follow severity; APOE4 count; pair markers; age-linked markers."""
    n = sev.shape[0]
    x = 0.8 * rng.standard_normal((n, 12))
    x[:, 0] -= 0.6 * sev
    x[:, 1:3] += loaded(rng, sev, 2, 0.45, 0.6) + 0.4 * rng.standard_normal(n)[:, None]
    p4 = 1.0 / (1.0 + np.exp(-(np.log(0.2 / 0.8) + 0.4 * sev)))
    x[:, 4:4 + N_PAIR] = u * t[:, None] + PAIR_NOISE * rng.standard_normal((n, N_PAIR))
    x[:, 8:12] += loaded(rng, age, 4, 0.2, 0.6)
    x[:, 3] = rng.binomial(2, p4)  # APOE4 allele count (0/1/2), left unscaled
    return x


#: Version of the generator: bump it with any change that changes a generated value, so
#: runs keyed on the old data are not matched (it is the data set's content digest).
VERSION = 1


def generate(seed: int = 0, scale: float = 1.0) -> RawArrays:
    """Build synthetic-adni: ADNI's combination counts times ``scale``, seeded throughout."""
    rng = np.random.default_rng(seed)
    letters = "".join(m.letter for m in MODALITIES)
    observed, labels = layout(scaled_counts(COMBINATION_COUNTS, scale), CLASS_MIX, letters, rng)
    n = labels.shape[0]
    sev = severity(labels, len(CLASS_NAMES), rng, SEVERITY_GAIN, SHARED_NOISE)
    age = 0.25 * (labels - 1.0) + rng.standard_normal(n)
    head, ancestry = rng.standard_normal(n), rng.standard_normal(n)
    u_ig, u_cb = rng.standard_normal((n, N_PAIR)), rng.standard_normal((n, N_PAIR))
    t_ig = np.where(labels == 2, 1.0, -1.0)
    t_cb = np.where(labels == 1, 1.0, -1.0)
    onehot, numeric = _clinical(rng, sev["C"], age, ancestry, u_cb)
    raw = {
        "I": _image(rng, sev["I"], age, head, u_ig),
        "G": _genetic(rng, sev["G"], ancestry, u_ig, t_ig),
        "C": np.concatenate([onehot, numeric], axis=1),
        "B": _biospecimen(rng, sev["B"], age, u_cb, t_cb),
    }
    scaled = {"I": slice(None), "C": slice(19, None), "B": np.r_[0:3, 4:12]}
    return pack(raw, observed, labels, MODALITIES, scaled, "ADNI-S", CLASS_NAMES)
