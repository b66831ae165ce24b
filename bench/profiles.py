"""Run profiles: how much training a grid does.

``paper`` keeps each model's own settings (the paper's 50 epochs for the Flex-MoE setting)
and the paper's three seeds; ``quick`` trains a few epochs with one seed, for minutes on a
laptop CPU. A profile never changes a model's architecture unless the model asks for it
through ``BenchModel.profile_hparams``.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Profile:
    name: str
    epochs: int | None
    seeds: tuple[int, ...]
    description: str


PROFILES: dict[str, Profile] = {
    "quick": Profile("quick", 3, (0,), "3 epochs, seed 0: a smoke-level grid in minutes on a CPU"),
    "paper": Profile("paper", None, (0, 1, 2),
                     "each model's paper settings (50 epochs in the Flex-MoE setting), "
                     "seeds 0,1,2"),
}


def get_profile(name: str) -> Profile:
    if name not in PROFILES:
        raise KeyError(f"unknown profile {name!r}; choose one of {', '.join(PROFILES)}")
    return PROFILES[name]
