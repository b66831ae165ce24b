"""A run's identity: one resolved, canonical configuration, the only thing hashed.

:class:`RunConfig` holds every setting that can change a number — the model and every
constructor argument with its default filled in, the training settings, the data set with
every loader option filled in and normalised, a digest of the data's content (the bytes of
the files read, or the generator's version), the split, the combination, the seed and the
profile. Its key is a hash of exactly that; the row stores it whole, and ``run --dry-run``
prints it. Where data live (``root``, ``path``, ``split_file``) is recorded but not hashed:
the same files reached by another path are the same run, and one changed byte is another.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

from bench import registry
from bench.data.load import data_identity, load_data, loader_name, resolve_data
from bench.hparams import (
    SEED,
    SettingError,
    check_value,
)
from bench.profiles import get_profile

#: Version of the key's recipe: rows keyed by another version stay readable, never matched.
KEY_VERSION = 2


@dataclass(frozen=True)
class RunConfig:
    """One run of a grid, fully resolved (see the module docstring)."""

    model: str
    dataset: str
    combo: str
    seed: int
    hparams: dict[str, Any]
    profile: str = "quick"
    split_seed: int = 0
    data_options: dict[str, Any] = field(default_factory=dict)
    data_digest: str = ""
    split_digest: str = ""
    plugins: tuple[str, ...] = ()

    def identity(self) -> dict[str, Any]:
        """Everything the key hashes."""
        return {"v": KEY_VERSION, "model": self.model, "hparams": self.hparams,
                "dataset": loader_name(self.dataset),
                "data_options": data_identity(self.data_options),
                "data_digest": self.data_digest, "split_seed": self.split_seed,
                "split_digest": self.split_digest, "combo": self.combo, "seed": self.seed,
                "profile": self.profile}

    @cached_property
    def key(self) -> str:
        """Hash of :meth:`identity` (computed once: grids, tables and claims ask often)."""
        text = json.dumps(self.identity(), sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def record(self) -> dict[str, Any]:
        """The whole configuration as stored with the run and printed by ``--dry-run``."""
        return {**self.identity(), "dataset": self.dataset, "data_options": self.data_options,
                "plugins": list(self.plugins), "key": self.key}


def _names(values: Sequence[Any] | None, what: str, example: str) -> None:
    if values is not None and not list(values):
        raise SettingError(f"{what} is empty; give a comma-separated list, e.g. {example}")


def build_grid(models: Sequence[str], dataset: str, combos: Sequence[str] | None = None,
               seeds: Sequence[int] | None = None, profile: str = "quick",
               overrides: dict[str, Any] | None = None,
               data_options: dict[str, Any] | None = None, split_seed: int = 0,
               plugins: Sequence[str] = ()) -> list[RunConfig]:
    """Resolve every run of models × combinations × seeds; every bad name, letter or setting
    is an error here, before anything trains. ``data_options`` are the user's: the profile's
    own options (e.g. the quick profile's smaller synthetic cohorts) go under them."""
    _names(models, "the list of models", "tf,flexmoe")
    _names(combos, "the list of combinations", "IG,IGCB")
    _names(seeds, "the list of seeds", "0,1,2")
    prof = get_profile(profile)
    split_seed = check_value("--split-seed", "split_seed", split_seed, int,
                             {"split_seed": SEED}, conventions=False)
    name, options = resolve_data(dataset, prof.options_for(dataset, data_options))
    data = load_data(name, options, split_seed)
    combos = [data.check_letters(c) for c in (prof.default_combos(data.letters)
                                              if combos is None else combos)]
    seeds = [check_value("--seeds", "seed", s, int, {"seed": SEED}, conventions=False)
             for s in (prof.default_seeds() if seeds is None else seeds)]
    digest, split = data.content_digest, data.split_digest
    cells = []
    for model in models:
        registry.model_class(model)
        for combo in combos:
            hp = registry.resolve_hparams(model, data.spec(combo), overrides, profile)
            registry.check_model(model, data.spec(combo), hp)
            cells += [RunConfig(model, name, combo, int(seed), hp, profile, split_seed, options,
                                digest, split, tuple(plugins)) for seed in seeds]
    return cells
