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

#: Combination rules: ``pair-and-full`` = the first two modalities and the full set;
#: ``two-or-more`` = every combination of two or more modalities, in the paper's row order.
COMBO_RULES = ("pair-and-full", "two-or-more")


def paper_order(combos: list[str]) -> list[str]:
    """The paper's row order: fewer modalities first, ``itertools`` order within a size."""
    letters = max(combos, key=len)
    for c in combos:
        letters += "".join(ch for ch in c if ch not in letters)
    rank = {c: i for i, c in enumerate(combinations(letters))}
    return sorted(combos, key=lambda c: (len(c), rank.get(c, 0)))


@dataclass(frozen=True)
class Profile:
    """One profile's rules; an empty ``train`` keeps each model's own training settings."""

    name: str
    purpose: str
    train: Mapping[str, Any]
    seeds: tuple[int, ...]
    combos: str
    data_options: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)

    def train_settings(self) -> dict[str, Any]:
        """Training settings the profile imposes on every model (``--set`` wins)."""
        return dict(self.train)

    def default_combos(self, letters: str) -> list[str]:
        """The combinations a grid takes when the user names none."""
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
        names = {"epochs": "{} epochs", "batch_size": "batch {}", "lr": "lr {:g}",
                 "weight_decay": "weight decay {:g}"}
        epochs = (", ".join(names.get(k, k + " {}").format(v) for k, v in self.train.items())
                  or "each model's own training settings")
        combos = ("the first two modalities and all of them" if self.combos == "pair-and-full"
                  else "every combination of two or more modalities")
        seeds = ", ".join(map(str, self.seeds))
        text = f"{epochs}, seed{'s' if len(self.seeds) > 1 else ''} {seeds}, {combos}"
        extra = "; ".join(f"{d}: {', '.join(f'{k}={v}' for k, v in o.items())}"
                          for d, o in self.data_options.items())
        return f"{text}{f' (default data options — {extra})' if extra else ''}: {self.purpose}"


PROFILES: dict[str, Profile] = {p.name: p for p in (
    Profile("quick", "a smoke test of the pipeline, not a ranking", {"epochs": 3}, (0,),
            "pair-and-full", {"synthetic-adni": {"scale": 0.1}, "synthetic-mimic": {"scale": 0.1}}),
    Profile("paper", "the paper's protocol", {}, (0, 1, 2), "two-or-more"),
)}


def get_profile(name: str) -> Profile:
    if name not in PROFILES:
        raise KeyError(f"unknown profile {name!r}; choose one of {', '.join(PROFILES)}")
    return PROFILES[name]
