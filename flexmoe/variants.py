"""The paper's Table 3 ablations as registered models (each fixes the switches it names)."""

from __future__ import annotations

from typing import Any

from bench.data.core import DataSpec
from bench.registry import register_model
from flexmoe.model import FlexMoE

VARIANTS: dict[str, tuple[str, dict[str, Any]]] = {
    "flexmoe-no-es": ("w/o ES", {"specialize": False}),
    "flexmoe-no-es-eg": ("w/o ES+EG", {"specialize": False, "generalize": False}),
    "flexmoe-no-bank": ("w/o embedding bank", {"bank": False}),
    "flexmoe-sort-random": ("w/o sorting - random", {"warmup_order": "random"}),
    "flexmoe-sort-ascending": ("w/o sorting - ascending", {"warmup_order": "ascending"}),
}


def _variant(name: str, label: str, switches: dict[str, Any]) -> type:
    def default_hparams(cls, spec: DataSpec) -> dict[str, Any]:
        return {**FlexMoE.default_hparams(spec), **switches}

    doc = f"Flex-MoE ablation '{label}' (paper Table 3): {switches}."
    cls = type(name.replace("-", "_"), (FlexMoE,), {
        "__doc__": doc, "__module__": __name__, "paper_label": label, "variant_of": "flexmoe",
        "default_hparams": classmethod(default_hparams)})
    return register_model(name)(cls)


for _name, (_label, _switches) in VARIANTS.items():
    _variant(_name, _label, _switches)
