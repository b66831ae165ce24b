"""Run profiles: how much training a grid does, owned in one place.

A :class:`Profile` owns everything a profile changes — training settings (epochs, batch
size, learning rate), seeds, which combinations a grid takes by default and the data-set
options it adds (the user's options and ``--set`` win) — and
describes itself from those values, so no caption restates them. ``run``, ``reproduce``,
``report``, ``perf`` and the captions all resolve through it. A profile never changes a
model's architecture.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from bench.data.core import combinations
from bench.errors import UserError

#: Combination rules: ``full`` = the full set alone; ``pair-and-full`` = the first two
#: modalities and the full set; ``two-or-more`` = every combination of two or more
#: modalities, in the paper's row order.
COMBO_RULES = ("full", "pair-and-full", "two-or-more")


def paper_order(combos: list[str]) -> list[str]:
    """The paper's row order: fewer modalities first, ``itertools`` order within a size."""
    letters = max(combos, key=len)
    for c in combos:
        letters += "".join(ch for ch in c if ch not in letters)
    rank = {c: i for i, c in enumerate(combinations(letters))}
    return sorted(combos, key=lambda c: (len(c), rank.get(c, 0)))


@dataclass(frozen=True)
class Profile:
    """One profile's rules; an empty ``train`` keeps each model's own training settings.

    ``model_train`` gives some models (by base name: an ablation follows its base model)
    settings of their own on top of ``train``: a budget in epochs that fits the cheap models
    leaves the costly ones (a step 10-50x dearer) unable to finish in the same time.
    """

    name: str
    purpose: str
    train: Mapping[str, Any]
    seeds: tuple[int, ...]
    combos: str
    data_options: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    model_train: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.combos not in COMBO_RULES:
            raise UserError(f"profile {self.name!r}: combination rule {self.combos!r} is "
                            f"not one of {', '.join(COMBO_RULES)}")

    def train_settings(self, model: str | None = None) -> dict[str, Any]:
        """Training settings the profile imposes on ``model`` (``--set`` wins)."""
        return {**self.train, **self.model_train.get(model or "", {})}

    def default_combos(self, letters: str) -> list[str]:
        """The combinations a grid takes when the user names none."""
        if self.combos == "full":
            return [letters]
        if self.combos == "pair-and-full":
            return [letters[:2], letters] if len(letters) > 2 else [letters]
        return paper_order([c for c in combinations(letters) if len(c) >= 2])

    def default_seeds(self) -> list[int]:
        return list(self.seeds)

    def options_for(self, dataset: str, user: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """The data-set options of a run: the profile's for ``dataset``, then the user's."""
        return {**self.data_options.get(dataset, {}), **(user or {})}

    def describe(self) -> str:
        """One phrase generated from the rules (captions add the resolved values of the runs)."""
        epochs = _settings(self.train) or "each model's own training settings"
        if self.model_train:
            epochs += " (" + "; ".join(f"{m}: {_settings(t)}"
                                       for m, t in self.model_train.items()) + ")"
        combos = {"full": "all modalities",
                  "pair-and-full": "the first two modalities and all of them",
                  "two-or-more": "every combination of two or more modalities"}[self.combos]
        seeds = ", ".join(map(str, self.seeds))
        text = f"{epochs}, seed{'s' if len(self.seeds) > 1 else ''} {seeds}, {combos}"
        extra = "; ".join(f"{d}: {', '.join(f'{k}={v}' for k, v in o.items())}"
                          for d, o in self.data_options.items())
        return f"{text}{f' (default data options — {extra})' if extra else ''}: {self.purpose}"


def _settings(train: Mapping[str, Any]) -> str:
    names = {"epochs": "{} epochs", "batch_size": "batch {}", "lr": "lr {:g}",
             "weight_decay": "weight decay {:g}"}
    return ", ".join(names.get(k, k + " {}").format(v) for k, v in train.items())


PROFILES: dict[str, Profile] = {p.name: p for p in (
    Profile("quick", "a first look in about a quarter of an hour on a 2-core CPU in which "
            "every model learns; one seed and a short schedule, so not the paper's ranking",
            {"epochs": 10}, (0,), "full",
            model_train={"flexmoe": {"lr": 3e-4}, "limoe": {"lr": 3e-4},
                         "fusemoe": {"epochs": 3}, "i2moe": {"epochs": 5, "lr": 1e-3},
                         "mult": {"epochs": 6, "batch_size": 32, "lr": 1e-3}}),
    Profile("paper", "the paper's protocol", {}, (0, 1, 2), "two-or-more"),
    Profile("smoke", "checks that the pipeline runs end to end (every table and figure in "
            "minutes); the numbers mean nothing", {"epochs": 3}, (0,), "pair-and-full",
            {"synthetic-adni": {"scale": 0.1}, "synthetic-mimic": {"scale": 0.1}}),
    Profile("ci", "the grid of run_bench.py check: small and pinned; a regression guard, "
            "not a ranking", {"epochs": 6}, (0, 1), "pair-and-full",
            {"synthetic-adni": {"scale": 0.25}, "synthetic-mimic": {"scale": 0.1}},
            model_train={"flexmoe": {"lr": 3e-4}, "limoe": {"lr": 3e-4},
                         "fusemoe": {"epochs": 4, "lr": 1e-3}, "mmformer": {"epochs": 12},
                         "i2moe": {"epochs": 2, "lr": 1e-3},
                         "mult": {"epochs": 2, "batch_size": 32, "lr": 1e-3}}),
)}


def get_profile(name: str) -> Profile:
    if name not in PROFILES:
        raise UserError(f"unknown profile {name!r}; choose one of {', '.join(PROFILES)}")
    return PROFILES[name]
