"""What an artefact is, and the paper's design it follows: the models, combinations,
labels and sweeps of its tables and figures.

An :class:`Artefact` declares one table or figure whole: the sweeps of runs behind it
(its grid), the table it renders (``view``), the figure it draws (``figure``), the
panels beside it (``panels``) and its caption's explanation. The catalogue
(:mod:`bench.artefacts.catalogue`) lists them; :mod:`bench.artefacts.reproduce` plans,
trains and renders any of them the same way.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from bench.identity.config import RunConfig
from bench.rendering.report import Section
from bench.rendering.tables import TableView

ADNI_COMBOS = ("IG", "IC", "IB", "GC", "GB", "CB", "IGC", "IGB", "ICB", "GCB", "IGCB")
MIMIC_COMBOS = ("LN", "LC", "NC", "LNC")

#: The paper's column order for ADNI (Tables 1, 7, 8) and MIMIC-IV (Tables 2, 9, 10).
ADNI_MODELS = ("venugopalan2021", "lee2019", "shaspec", "mmformer", "tf", "mult", "mag",
               "limoe", "fusemoe", "flexmoe")
MIMIC_MODELS = ("tf", "mult", "mag", "limoe", "fusemoe", "flexmoe")
EXTRA_MODELS = ("i2moe",)  # not in the paper: an extra column, no published numbers
COMPLEXITY_MODELS = MIMIC_MODELS  # Table 4's columns are the MIMIC-IV set of models

#: Registry name → (column header as printed in the paper, name in ``results/paper``).
MODEL_LABELS: dict[str, tuple[str, str | None]] = {
    "venugopalan2021": ("[59] Venugopalan", "Venugopalan2021"),
    "lee2019": ("[33] Lee", "Lee2019"),
    "shaspec": ("ShaSpec", "ShaSpec"),
    "mmformer": ("mmFormer", "mmFormer"),
    "tf": ("TF", "TF"),
    "mult": ("MulT", "MulT"),
    "mag": ("MAG", "MAG"),
    "limoe": ("LIMoE", "LIMoE"),
    "fusemoe": ("FuseMoE", "FuseMoE"),
    "flexmoe": ("Flex-MoE", "Flex-MoE"),
    "i2moe": ("I2MoE", None),
}

#: Table 3 rows: registry name → label in ``results/paper/table3_adni_ablation.csv``.
ABLATIONS: dict[str, str] = {
    "flexmoe": "Flex-MoE",
    "flexmoe-no-es": "w/o ES",
    "flexmoe-no-es-eg": "w/o ES+EG",
    "flexmoe-no-bank": "w/o embedding bank",
    "flexmoe-sort-random": "sorting: random",
    "flexmoe-sort-ascending": "sorting: ascending",
}

#: Figure 6 axes: label → (hyper-parameter, values shown, value → setting). The sparse and
#: dense fusion layers alternate, so k SMoE layers take ``num_layers = 2k - 1``.
SENSITIVITY: dict[str, tuple[str, tuple[int, ...]]] = {
    "number of experts": ("num_experts", (4, 8, 16, 32)),
    "number of SMoE layers": ("num_layers", (1, 2, 3)),
    "top-k": ("top_k", (1, 2, 3, 4)),
}

REAL = {"adni": "adni", "mimic": "mimic"}
SYNTHETIC = {"adni": "synthetic-adni", "mimic": "synthetic-mimic"}
#: The family of artefacts that run on any data set: the last ``--dataset`` named, else
#: :data:`ANY_DEFAULT` (real and fully observed, so every missing entry is imposed).
ANY = "any"
ANY_DEFAULT = "mfeat"
#: Data options the default brings (under the user's): mfeat's three narrowest views K, Z, M.
#: The mechanisms study trains every model ten times; on all six views MulT's 30 cross-modal
#: transformers and I2MoE's eight experts make that about 4 CPU-hours of training steps on
#: the quick profile, beyond a first look. ``--dataset mfeat`` trains on all six.
ANY_DEFAULT_OPTIONS: dict[str, Any] = {"modalities": "KZM"}
#: The ``mechanisms`` artefact: missingness mechanisms × missing rates (rate 0: none).
MECHANISMS = ("mcar", "mar", "mnar")
MECHANISM_RATES = (0.2, 0.4, 0.6)

def model_label(name: str) -> str:
    """The paper's column header for a model (the registry name for others)."""
    return MODEL_LABELS.get(name, (name, None))[0]


def sensitivity_setting(param: str, value: int) -> dict[str, int]:
    """The hyper-parameter override that puts Flex-MoE at ``value`` on one Figure 6 axis."""
    return {param: 2 * value - 1 if param == "num_layers" else value}


@dataclass(frozen=True)
class Sweep:
    """Models × combinations (none: the data set's full combination) under one override and
    data options (they win over ``--data-option``); ``axis``/``value`` place it on a figure."""

    models: tuple[str, ...]
    combos: tuple[str, ...]
    overrides: dict[str, Any] = field(default_factory=dict)
    axis: str = ""
    value: float | None = None
    data_options: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class RenderContext:
    """What rendering an artefact reads: the store as a DataFrame, the profile its runs
    used, the output folder, and for the figures that train a model of their own (Figures
    4 and 5) the device and whether they may train (``train``)."""

    df: pd.DataFrame
    profile: str
    out_dir: Path
    device: str = "auto"
    train: bool = True


#: A table's view: the artefact's resolved cells and the store → the table as rendered.
View = Callable[["ArtefactCells", pd.DataFrame, str], TableView]
#: A figure: draws into its artefact's section (figure files, notes, caption), writing its
#: tidy data as CSV beside it.
Figure = Callable[["ArtefactCells", RenderContext, Section], None]
#: A panel beside a table (e.g. its significance tests): a section of its own.
Panel = Callable[["ArtefactCells", RenderContext], Section]


@dataclass(frozen=True)
class Artefact:
    """One table or figure of the paper (or an analysis), declared whole: the runs behind
    it (``sweeps``), the table it renders (``view``) and the figure it draws (``figure``),
    either or both, the panels beside it and the sentence its caption ends with
    (``explain``). ``in_grid`` False: its runs are not trained by the grid (Figures 4 and 5
    train the one model they analyse when they are drawn)."""

    id: str
    kind: str  # a short label: metric | ablation | complexity | bank | experts | ...
    family: str  # adni | mimic | any (ANY)
    title: str
    sweeps: tuple[Sweep, ...]
    metric: str | None = None
    paper_file: str | None = None
    view: View | None = None
    figure: Figure | None = None
    panels: tuple[Panel, ...] = ()
    explain: str = ""
    in_grid: bool = True

    def models(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(m for s in self.sweeps for m in s.models))


@dataclass(frozen=True)
class DatasetChoice:
    """The data set behind one family of artefacts, and why, for logs and captions."""

    name: str
    real: bool
    note: str = ""  # short, for captions: empty unless this is a fallback
    reason: str = ""  # why the real data set was not used (the loader's message)
    #: data options the choice brings, under the user's (:data:`ANY_DEFAULT_OPTIONS`)
    options: dict[str, Any] = field(default_factory=dict)


@dataclass
class ArtefactCells:
    """The runs of one artefact: its cells per sweep, and the models it cannot run here."""

    artefact: Artefact
    dataset: DatasetChoice
    sweeps: list[tuple[Sweep, list[RunConfig]]]
    unregistered: tuple[str, ...]
    #: Sweep index → why its missingness cannot be imposed on this data set (e.g. a ``mar``
    #: rate above what keeping the driver allows); such a sweep has no cells.
    skipped: dict[int, str] = field(default_factory=dict)

    @property
    def cells(self) -> list[RunConfig]:
        return [c for _, cells in self.sweeps for c in cells]
