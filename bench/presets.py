"""What each of the paper's tables and figures needs: its models, combinations and settings.

An :class:`Artefact` names one table or figure and the sweeps of runs behind it; the
reproduction (``bench.reproduce``) turns sweeps into grid cells, so two artefacts that need
the same run (Table 1 and Table 4, Flex-MoE on IGCB in Tables 1, 3 and Figure 6) share one
stored run. Without ``--dataset`` the ADNI artefacts use the real ``adni`` data set when it
loads here and ``synthetic-adni`` otherwise, MIMIC-IV ones likewise; the fallback is logged
as a warning and stated in every caption. The ``mechanisms`` artefact runs on any data set:
the last ``--dataset`` named, else ``mfeat``.

A profile's data-set options (``bench.profiles``) apply here as in ``run``: they are part of
every run's key and every caption states the options the runs used.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field, replace
from typing import Any

from bench import registry
from bench.config import RunConfig, build_grid, load_data
from bench.data.missingness import MissingnessError
from bench.profiles import get_profile

logger = logging.getLogger(__name__)

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
class Artefact:
    """One table or figure of the paper and the runs behind it."""

    id: str
    kind: str  # metric | ablation | complexity | bank | experts | sensitivity | modalities | cost
    # | robustness | mechanisms
    family: str  # adni | mimic | any (ANY)
    title: str
    sweeps: tuple[Sweep, ...]
    metric: str | None = None
    paper_file: str | None = None

    def models(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(m for s in self.sweeps for m in s.models))


def _metric(number: int, family: str, metric: str, name: str, file: str) -> Artefact:
    models, combos = ((ADNI_MODELS, ADNI_COMBOS) if family == "adni"
                      else (MIMIC_MODELS, MIMIC_COMBOS))
    data = "ADNI" if family == "adni" else "MIMIC-IV"
    return Artefact(f"table{number}", "metric", family, f"{data} {name} (%)",
                    (Sweep(models + EXTRA_MODELS, combos),), metric, file)


def _robustness(family: str) -> Artefact:
    """Test-time missing modalities on the family's full combination: the same runs as
    ``run`` makes there, scored again with modalities removed (``bench.robustness``)."""
    models, combo, data = ((ADNI_MODELS, ADNI_COMBOS[-1], "ADNI") if family == "adni"
                           else (MIMIC_MODELS, MIMIC_COMBOS[-1], "MIMIC-IV"))
    return Artefact(f"robustness-{family}", "robustness", family,
                    f"Test-time missing modalities ({data} {combo})",
                    (Sweep(models + EXTRA_MODELS, (combo,)),), "test_acc")


def _mechanisms() -> Artefact:
    """Accuracy against the missing rate per mechanism on a data set's full combination: rate
    0 once (``missing=none``, shared by the three curves), then each mechanism × rate. The
    models are the paper's ten and I2MoE — every built-in model but the ablation variants —
    on whatever data set is named, so the table has the same columns everywhere."""
    models = ADNI_MODELS + EXTRA_MODELS
    sweeps = [Sweep(models, (), axis="none", value=0.0, data_options={"missing": "none"})]
    sweeps += [Sweep(models, (), axis=m, value=rate,
                     data_options={"missing": m, "missing_rate": rate})
               for m in MECHANISMS for rate in MECHANISM_RATES]
    return Artefact("mechanisms", "mechanisms", ANY,
                    "Accuracy vs missing rate per missingness mechanism", tuple(sweeps),
                    "test_acc")


def _sensitivity_sweeps() -> tuple[Sweep, ...]:
    return tuple(Sweep(("flexmoe",), ("IGCB",), sensitivity_setting(param, v), axis, v)
                 for axis, (param, values) in SENSITIVITY.items() for v in values)


ARTEFACTS: dict[str, Artefact] = {a.id: a for a in (
    _metric(1, "adni", "test_acc", "accuracy", "table1_adni_acc.csv"),
    _metric(2, "mimic", "test_acc", "accuracy", "table2_mimic_acc.csv"),
    Artefact("table3", "ablation", "adni", "Flex-MoE ablations on ADNI IGCB (%)",
             (Sweep(tuple(ABLATIONS), ("IGCB",)),), None, "table3_adni_ablation.csv"),
    Artefact("table4", "complexity", "adni", "Cost on ADNI: time, FLOPs, parameters, accuracy",
             (Sweep(COMPLEXITY_MODELS, ("IG", "IGC", "IGCB")),), "test_acc",
             "table4_adni_complexity.csv"),
    _metric(7, "adni", "test_f1", "macro-F1", "table7_adni_f1.csv"),
    _metric(8, "adni", "test_auc", "AUC", "table8_adni_auc.csv"),
    _metric(9, "mimic", "test_f1", "macro-F1", "table9_mimic_f1.csv"),
    _metric(10, "mimic", "test_auc", "AUC", "table10_mimic_auc.csv"),
    Artefact("fig4", "bank", "adni", "Figure 4: cosine similarity between missing-modality "
             "bank entries: observed combinations (rows) and missing modalities (columns) "
             "(Flex-MoE, IGCB)", (Sweep(("flexmoe",), ("IGCB",)),)),
    Artefact("fig5", "experts", "adni", "Figure 5: expert activation by observed combination "
             "(Flex-MoE, IGCB, first SMoE layer)", (Sweep(("flexmoe",), ("IGCB",)),)),
    Artefact("fig6", "sensitivity", "adni", "Figure 6: sensitivity of Flex-MoE on IGCB",
             _sensitivity_sweeps(), "test_acc"),
    Artefact("modalities", "modalities", "adni", "Accuracy vs number of observed modalities (ADNI)",
             (Sweep(ADNI_MODELS + EXTRA_MODELS, ADNI_COMBOS),), "test_acc"),
    Artefact("cost", "cost", "adni", "Accuracy vs cost (ADNI IG / IGC / IGCB)",
             (Sweep(COMPLEXITY_MODELS, ("IG", "IGC", "IGCB")),), "test_acc"),
    _robustness("adni"),
    _robustness("mimic"),
    _mechanisms(),
)}
#: Names ``--table`` accepts for several artefacts at once.
GROUPS: dict[str, tuple[str, ...]] = {"robustness": ("robustness-adni", "robustness-mimic")}
#: Studies of their own, trained only when named: ``all`` means the paper's artefacts and the
#: analyses that reuse their runs (``mechanisms`` trains ten settings of every model).
BY_NAME_ONLY = ("mechanisms",)


def select(spec: str) -> list[Artefact]:
    """Artefacts named by ``--table``: ``all`` (every one but :data:`BY_NAME_ONLY`), or ids
    separated by commas (``1``, ``table1``, ``fig6``, ``modalities``, ``cost``,
    ``robustness`` = both of :data:`GROUPS`' artefacts, ``mechanisms``)."""
    if spec.strip() == "all":
        return [a for a in ARTEFACTS.values() if a.id not in BY_NAME_ONLY]
    choices = ", ".join([a.removeprefix("table") for a in ARTEFACTS] + list(GROUPS))
    if not spec.strip(" ,"):
        raise ValueError(f"--table is empty; choose all or any of {choices}")
    out = []
    for item in (s.strip().lower() for s in spec.split(",") if s.strip()):
        key = f"table{item}" if item.isdigit() else item
        if key not in ARTEFACTS and key not in GROUPS:
            raise KeyError(f"unknown table or figure {item!r}; choose all or any of {choices}")
        out.extend(ARTEFACTS[k] for k in GROUPS.get(key, (key,)))
    return list({a.id: a for a in out}.values())


@dataclass(frozen=True)
class DatasetChoice:
    """The data set behind one family of artefacts, and why, for logs and captions."""

    name: str
    real: bool
    note: str = ""  # short, for captions: empty unless this is a fallback
    reason: str = ""  # why the real data set was not used (the loader's message)
    #: data options the choice brings, under the user's (:data:`ANY_DEFAULT_OPTIONS`)
    options: dict[str, Any] = field(default_factory=dict)


def real_data_problem(name: str) -> str | None:
    """Why the user-provided data set ``name`` cannot be used here (None when it can)."""
    if name not in registry.list_datasets():
        return f"no {name!r} loader is registered"
    try:
        load_data(name)
    except (OSError, ValueError, KeyError) as exc:
        return str(exc.args[0] if isinstance(exc, KeyError) and exc.args else exc)
    return None


def choose_dataset(family: str, explicit: str | None = None) -> DatasetChoice:
    """``explicit`` if given; else the real data set of ``family`` if it loads, else the
    synthetic stand-in, with a warning that says why (``any``: :data:`ANY_DEFAULT`)."""
    if explicit:
        return DatasetChoice(explicit, explicit in REAL.values())
    if family == ANY:
        return DatasetChoice(ANY_DEFAULT, False, options=dict(ANY_DEFAULT_OPTIONS))
    problem = real_data_problem(REAL[family])
    if problem is None:
        return DatasetChoice(REAL[family], True)
    note = f"synthetic stand-in: the real {REAL[family]!r} data set is not configured here"
    logger.warning("%s tables use %s — %s (%s)", family.upper(), SYNTHETIC[family], note,
                   problem)
    return DatasetChoice(SYNTHETIC[family], False, note, problem)


def assign_datasets(artefacts: list[Artefact], names: list[str],
                    options: dict[str, Any] | None = None) -> dict[str, DatasetChoice]:
    """Family → data set: each ``--dataset`` goes to the artefacts of its family (a data set
    of another family, e.g. ``folder:PATH``, to all of them) and to those that run on any
    data set (the last one named wins); the rest are chosen. ``options`` are the user's data
    options (``root=`` of a prepared folder is needed to load ``adni`` / ``mimic``)."""
    families = list(dict.fromkeys(a.family for a in artefacts))
    given: dict[str, str] = {}
    for name in names:
        family = load_data(name, options).family
        targets = [family] if family in REAL else families
        targets += [ANY] if ANY in families else []
        if family in REAL and family not in families and ANY not in families:
            raise ValueError(f"data set {name!r} is a {family} data set, but none of the "
                             f"selected tables or figures is ({', '.join(families)})")
        given.update(dict.fromkeys(targets, name))
    return {f: choose_dataset(f, given.get(f)) for f in families}


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


def artefact_cells(artefact: Artefact, dataset: DatasetChoice, profile: str,
                   overrides: dict[str, Any] | None = None,
                   options: dict[str, Any] | None = None,
                   seeds: list[int] | None = None) -> ArtefactCells:
    """Resolve every run an artefact needs; models not registered are left out and named.
    The data set's own options (``dataset.options``) go under ``options``. A sweep without
    combinations is given the data set's full one; a sweep whose missingness
    cannot be imposed on the data set is left out, with the reason (``skipped``)."""
    known = set(registry.list_models())
    missing = tuple(m for m in artefact.models() if m not in known)
    prof = get_profile(profile)
    options = {**dataset.options, **(options or {})}
    sweeps, skipped = [], {}
    for i, sweep in enumerate(artefact.sweeps):
        if not sweep.combos:
            full = load_data(dataset.name, prof.options_for(dataset.name, options)).letters
            sweep = replace(sweep, combos=(full,))
        data_options = {**(options or {}), **sweep.data_options}
        try:
            if sweep.data_options:
                load_data(dataset.name, prof.options_for(dataset.name, data_options))
        except MissingnessError as exc:
            logger.warning("%s: %s at %s left out: %s", artefact.id, sweep.axis, sweep.value,
                           exc)
            skipped[i] = str(exc)
            sweeps.append((sweep, []))
            continue
        models = [m for m in sweep.models if m in known]
        cells = build_grid(models, dataset.name, list(sweep.combos), seeds, profile,
                           {**sweep.overrides, **(overrides or {})},
                           data_options) if models else []
        sweeps.append((sweep, cells))
    return ArtefactCells(artefact, dataset, sweeps, missing, skipped)
