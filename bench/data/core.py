"""The missing-modality data interface: whole data sets as tensors, combination views, batches.

A :class:`MultimodalData` holds one data set in memory (features per modality with zeros
where missing, an ``observed`` mask, labels, ids and a train/val/test split).
:meth:`MultimodalData.restrict` gives the :class:`RunData` view for one observed-modality
combination under the paper's protocol, and :meth:`RunData.batches` yields :class:`Batch`
objects by slicing tensors that already sit on the run's device.
"""

from __future__ import annotations

import hashlib
import itertools
import math
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from typing import Literal, get_args

import numpy as np
import torch
from torch import Tensor

from bench.data.arrays import Modality, RawArrays, validate_arrays
from bench.data.splits import make_split
from bench.errors import UserError

ORDERS = ("shuffle", "sequential", "fixed-random", "descending", "ascending")
#: ``complete``: validation and test score the samples that have every modality of the run
#: (the suite's rule: every model on the same samples); ``all``: every sample with at least
#: one of them, through each model's missing-modality path (the released Flex-MoE code).
EvalRule = Literal["complete", "all"]
EVAL_RULES: tuple[str, ...] = get_args(EvalRule)


def combinations(letters: str) -> tuple[str, ...]:
    """All non-empty subsets of ``letters``, largest first, ``itertools`` order within a size.

    Index 0 is the full set, the ordering the official Flex-MoE code uses for its
    combination index (and so for its missing-modality bank and expert targets).
    """
    out: list[str] = []
    for size in range(len(letters), 0, -1):
        out.extend("".join(c) for c in itertools.combinations(letters, size))
    return tuple(out)


def combo_of(mask: Tensor, letters: str) -> Tensor:
    """Per-row index into ``combinations(letters)`` of an observed mask ``[N, len(letters)]``
    (−1 where a row observes none): one lookup for whole data sets and test-time views."""
    weights = torch.tensor([1 << j for j in range(len(letters))], device=mask.device)
    code = (mask.long() * weights).sum(1)
    lookup = torch.full((1 << len(letters),), -1, dtype=torch.long, device=mask.device)
    for i, combo in enumerate(combinations(letters)):
        lookup[sum(1 << letters.index(c) for c in combo)] = i
    return lookup[code]


@dataclass(frozen=True)
class DataSpec:
    """What a model needs to know about its run's data (no tensors)."""

    dataset: str
    family: str
    modalities: tuple[Modality, ...]
    all_modalities: tuple[Modality, ...]
    num_classes: int
    class_names: tuple[str, ...] = ()
    class_weights: tuple[float, ...] | None = None

    @property
    def letters(self) -> str:
        return "".join(m.letter for m in self.modalities)

    @property
    def num_modalities(self) -> int:
        return len(self.modalities)

    @property
    def combos(self) -> tuple[str, ...]:
        """Combination index → letters (index 0 = all of the run's modalities)."""
        return combinations(self.letters)

    @property
    def global_index(self) -> tuple[int, ...]:
        """Position of each run modality among the data set's modalities."""
        order = [m.letter for m in self.all_modalities]
        return tuple(order.index(m.letter) for m in self.modalities)


@dataclass
class Batch:
    """One mini-batch: ``x[letter]`` [B, *shape], ``observed`` [B, M] bool, ``combo`` [B],
    ``y`` [B]."""

    x: dict[str, Tensor]
    observed: Tensor
    combo: Tensor
    y: Tensor

    def __len__(self) -> int:
        return int(self.y.shape[0])


def num_batches(n: int, batch_size: int) -> int:
    """How many batches :meth:`RunData.batches` yields for ``n`` samples (the last may be
    smaller): the training steps of one epoch."""
    return math.ceil(n / batch_size)


@dataclass
class RunData:
    """The view of a data set for one combination of modalities (one run)."""

    spec: DataSpec
    features: dict[str, Tensor]
    observed: Tensor
    combo: Tensor
    labels: Tensor
    ids: np.ndarray
    splits: dict[str, Tensor]
    split_digest: str = ""
    #: Evaluation samples left out because they observe none of the run's modalities
    #: (``eval="all"`` only), per split.
    excluded: dict[str, int] = field(default_factory=dict)

    @property
    def device(self) -> torch.device:
        return self.labels.device

    def to(self, device: str | torch.device) -> RunData:
        """Move every tensor once, so batches are slices on the run's device."""
        dev = torch.device(device)
        return replace(
            self,
            features={k: v.to(dev) for k, v in self.features.items()},
            observed=self.observed.to(dev),
            combo=self.combo.to(dev),
            labels=self.labels.to(dev),
            splits={k: v.to(dev) for k, v in self.splits.items()},
        )

    def batch(self, index: Tensor) -> Batch:
        """Gather the rows ``index`` of every tensor into a :class:`Batch`."""
        return Batch(
            x={k: v.index_select(0, index) for k, v in self.features.items()},
            observed=self.observed.index_select(0, index),
            combo=self.combo.index_select(0, index),
            y=self.labels.index_select(0, index),
        )

    def order(self, split: str, how: str = "sequential", generator: torch.Generator | None = None,
              fixed_seed: int = 0) -> Tensor:
        """Row indices of ``split`` in the order ``how`` (see ``ORDERS``).

        ``descending``/``ascending`` sort stably by the number of observed modalities (ties keep
        the data set's fixed sample order, unlike the official code's hash-dependent order);
        ``fixed-random`` is one permutation drawn from ``fixed_seed``, the same every epoch.
        """
        idx = self.splits[split]
        if how == "sequential":
            return idx
        if how == "shuffle":
            perm = torch.randperm(idx.numel(), generator=generator)
            return idx[perm.to(idx.device)]
        if how == "fixed-random":
            g = torch.Generator().manual_seed(fixed_seed)
            return idx[torch.randperm(idx.numel(), generator=g).to(idx.device)]
        if how in ("descending", "ascending"):
            count = self.observed.index_select(0, idx).sum(1).cpu()
            key = -count if how == "descending" else count
            return idx[torch.sort(key, stable=True).indices.to(idx.device)]
        raise UserError(f"unknown batch order {how!r}; expected one of {ORDERS}")

    def batches(self, split: str, batch_size: int, how: str = "sequential",
                generator: torch.Generator | None = None, fixed_seed: int = 0) -> Iterator[Batch]:
        """Yield batches of ``split`` (the last one may be smaller)."""
        idx = self.order(split, how, generator, fixed_seed)
        for start in range(0, idx.numel(), batch_size):
            yield self.batch(idx[start:start + batch_size])

    def combo_counts(self, split: str) -> dict[str, int]:
        """Number of samples of ``split`` per observed combination (non-zero only)."""
        combo = self.combo.index_select(0, self.splits[split].to(self.combo.device)).cpu()
        counts = torch.bincount(combo[combo >= 0], minlength=len(self.spec.combos))
        return {c: int(n) for c, n in zip(self.spec.combos, counts.tolist()) if n}

    def without(self, letters: str) -> RunData:
        """This view with the modalities ``letters`` unobserved for every sample: their
        features zeroed (new tensors, this view untouched) and each sample's combination
        recomputed, so a trained model meets them through its own missing-modality path.
        The spec is kept, since the model was built for it."""
        run = self.spec.letters
        if not letters or set(letters) - set(run) or len(set(letters)) != len(letters) \
                or len(letters) >= len(run):
            raise UserError(f"cannot remove {letters!r} at test time: expected a non-empty "
                            f"proper subset of the run's modalities {run!r}, each letter once")
        observed = self.observed.clone()
        observed[:, [run.index(c) for c in letters]] = False
        return replace(
            self, observed=observed, combo=combo_of(observed, run),
            features={c: torch.zeros_like(x) if c in letters else x
                      for c, x in self.features.items()},
        )


@dataclass
class MultimodalData:
    """A whole data set in memory, with its split. One object per data set."""

    name: str
    family: str
    modalities: tuple[Modality, ...]
    features: dict[str, Tensor]
    observed: Tensor
    labels: Tensor
    ids: np.ndarray
    class_names: tuple[str, ...]
    splits: dict[str, Tensor]
    class_weights: tuple[float, ...] | None = None
    description: str = ""
    meta: dict = field(default_factory=dict)
    #: Digest of the files the data were read from (``bench.data.digest``); for generated
    #: data, of the generator's version. Part of every run's key.
    content_digest: str = ""
    #: Keep the letters' order as the user writes a combination (``folder:`` data, whose
    #: file order means nothing) instead of the data set's canonical order.
    keep_letter_order: bool = False
    #: Which validation and test samples a run scores (:data:`EVAL_RULES`).
    eval_rule: str = "complete"

    @property
    def letters(self) -> str:
        return "".join(m.letter for m in self.modalities)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def split_digest(self) -> str:
        """Short hash of the split (which ids are in which part), stored with every run."""
        h = hashlib.sha1()
        for part in ("train", "val", "test"):
            h.update(part.encode())
            h.update("\n".join(self.ids[self.splits[part].numpy()].tolist()).encode())
        return h.hexdigest()[:12]

    @classmethod
    def from_arrays(cls, raw: RawArrays, name: str, family: str, *, split_seed: int = 0,
                    val_frac: float = 0.15, test_frac: float = 0.15,
                    splits: dict[str, np.ndarray] | None = None, description: str = "",
                    meta: dict | None = None, content_digest: str = "",
                    keep_letter_order: bool = False) -> MultimodalData:
        """Validate arrays and build tensors; draw the split unless one is given."""
        validate_arrays(raw, name)
        if splits is None:
            splits = make_split(raw.observed, raw.labels, split_seed, val_frac, test_frac, name)
        return cls(
            name=name, family=family, modalities=tuple(raw.modalities),
            features={m.letter: _zero_missing(raw.features[m.letter], raw.observed[:, j])
                      for j, m in enumerate(raw.modalities)},
            observed=torch.tensor(np.asarray(raw.observed), dtype=torch.bool),
            labels=torch.tensor(np.asarray(raw.labels), dtype=torch.long),
            ids=np.asarray(raw.ids).astype(str),
            class_names=tuple(raw.class_names),
            splits={k: torch.as_tensor(np.sort(v), dtype=torch.long) for k, v in splits.items()},
            class_weights=raw.class_weights, description=description, meta=dict(meta or {}),
            content_digest=content_digest, keep_letter_order=keep_letter_order,
        )

    def check_letters(self, letters: str) -> str:
        """Validate a combination string against this data set; return it in canonical order
        (as given when ``keep_letter_order``: the run's modality order is the user's)."""
        known = self.letters
        if not letters:
            raise UserError(f"empty modality combination for data set {self.name!r}; "
                            f"use letters from {known!r}")
        bad = sorted(set(letters) - set(known))
        if bad:
            raise UserError(f"unknown modality letter(s) {''.join(bad)!r} for data set "
                            f"{self.name!r}; its modalities are {known!r} "
                            f"({', '.join(f'{m.letter}={m.name}' for m in self.modalities)})")
        if len(set(letters)) != len(letters):
            raise UserError(f"modality combination {letters!r} repeats a letter")
        return letters if self.keep_letter_order else "".join(c for c in known if c in letters)

    def keep_modalities(self, letters: str) -> MultimodalData:
        """The data set with only ``letters``' modalities, as if it had no others (the
        ``modalities`` option): a study on fewer modalities, whose imposed missingness,
        full combination and models see those alone. Split and samples are unchanged; a
        sample left with none of them is one no combination trains or scores on."""
        try:
            letters = self.check_letters(letters)
        except ValueError as exc:
            raise UserError(f"modalities={letters!r}: {exc}") from None
        cols = [self.letters.index(c) for c in letters]
        meta = dict(self.meta)
        if "adni_roles" in meta:  # a declared role map keeps the letters that remain
            meta["adni_roles"] = {a: "".join(c for c in v if c in letters)
                                  for a, v in meta["adni_roles"].items()}
        return replace(self, modalities=tuple(self.modalities[j] for j in cols),
                       features={c: self.features[c] for c in letters},
                       observed=self.observed[:, cols].contiguous(), meta=meta)

    def spec(self, letters: str) -> DataSpec:
        letters = self.check_letters(letters)
        return DataSpec(
            dataset=self.name, family=self.family,
            modalities=tuple(self.modalities[self.letters.index(c)] for c in letters),
            all_modalities=self.modalities, num_classes=self.num_classes,
            class_names=self.class_names, class_weights=self.class_weights,
        )

    def combo_index(self, letters: str) -> Tensor:
        """Per-sample combination index for ``letters`` (−1 where none of them is observed)."""
        letters = self.check_letters(letters)
        return combo_of(self.observed[:, [self.letters.index(c) for c in letters]], letters)

    def restrict(self, letters: str) -> RunData:
        """The paper's protocol for one combination of modalities.

        Train on training samples with at least one chosen modality; validate and test on
        samples that have all of them, so every model is scored on the same samples
        (``eval_rule="complete"``), or on every sample with at least one of them
        (``"all"``: samples with none are left out and counted in ``RunData.excluded``).
        """
        letters = self.check_letters(letters)
        spec = self.spec(letters)
        cols = [self.letters.index(c) for c in letters]
        obs = self.observed[:, cols]
        if self.eval_rule not in EVAL_RULES:
            raise UserError(f"unknown evaluation rule {self.eval_rule!r}; expected one of "
                            f"{EVAL_RULES}")
        scored = obs.all(1) if self.eval_rule == "complete" else obs.any(1)
        splits = {
            "train": _keep(self.splits["train"], obs.any(1)),
            "val": _keep(self.splits["val"], scored),
            "test": _keep(self.splits["test"], scored),
        }
        excluded = ({part: int((~obs.any(1)).index_select(0, self.splits[part]).sum())
                     for part in ("val", "test")} if self.eval_rule == "all" else {})
        for part, idx in splits.items():
            if idx.numel() == 0:
                raise UserError(f"data set {self.name!r}, combination {letters!r}: the {part} "
                                "split has no sample with the required modalities")
        train_obs = obs.index_select(0, splits["train"]).any(0)
        for c, present in zip(letters, train_obs.tolist()):
            if not present:
                raise UserError(f"data set {self.name!r}: modality {c!r} has no observed "
                                "training sample; drop it from the combination")
        return RunData(
            spec=spec, features={c: self.features[c] for c in letters}, observed=obs,
            combo=self.combo_index(letters), labels=self.labels, ids=self.ids, splits=splits,
            split_digest=self.split_digest, excluded=excluded,
        )

    def combo_counts(self, letters: str | None = None) -> dict[str, int]:
        """Number of samples per observed combination of ``letters`` (default: all)."""
        letters = self.check_letters(letters or self.letters)
        idx = self.combo_index(letters)
        counts = torch.bincount(idx[idx >= 0], minlength=len(combinations(letters)))
        return {c: int(n) for c, n in zip(combinations(letters), counts.tolist()) if n}


def _zero_missing(x: np.ndarray, present: np.ndarray) -> Tensor:
    """Float32 tensor of ``x`` with missing rows set to zero (whatever a source left there)."""
    out = torch.as_tensor(np.array(x, dtype=np.float32, copy=True))
    out[torch.as_tensor(~present)] = 0.0
    return out


def _keep(index: Tensor, mask: Tensor) -> Tensor:
    return index[mask.index_select(0, index)]
