"""Planning an artefact's runs: which data set each family of artefacts uses, and every
run it needs, resolved before anything trains.

Without ``--dataset`` the ADNI artefacts use the real ``adni`` data set when it
loads here and ``synthetic-adni`` otherwise, MIMIC-IV ones likewise; the fallback is
logged as a warning and stated in every caption. The ``mechanisms`` artefact runs on
any data set: the last ``--dataset`` named, else ``mfeat``. Two artefacts that need the
same run (Table 1 and Table 4, Flex-MoE on IGCB in Tables 1, 3 and Figure 6) resolve
to the same key, so they share one stored run. A profile's data-set options
(``bench.profiles``) apply here as in ``run``: they are part of every run's key and
every caption states the options the runs used.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from typing import Any

from bench import registry
from bench.artefacts.spec import (
    ANY,
    ANY_DEFAULT,
    ANY_DEFAULT_OPTIONS,
    REAL,
    SYNTHETIC,
    Artefact,
    ArtefactCells,
    DatasetChoice,
)
from bench.data.load import load_data
from bench.data.missingness import MissingnessError
from bench.errors import UserError
from bench.hparams import SettingError
from bench.identity.config import build_grid
from bench.profiles import get_profile

logger = logging.getLogger(__name__)


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
            raise UserError(f"data set {name!r} is a {family} data set, but none of the "
                            f"selected tables or figures is ({', '.join(families)})")
        given.update(dict.fromkeys(targets, name))
    return {f: choose_dataset(f, given.get(f)) for f in families}


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
        if sweep.data_options.get("missing") == "none":  # the user's rate and seed are for
            data_options.pop("missing_rate", None)        # the sweeps that impose some
            data_options.pop("missing_seed", None)
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
        try:
            cells = build_grid(models, dataset.name, list(sweep.combos), seeds, profile,
                               {**sweep.overrides, **(overrides or {})},
                               data_options) if models else []
        except SettingError as exc:
            if not sweep.overrides:  # the user's own settings: their error, the whole call's
                raise
            # a setting of the sweep the model refuses (Figure 6: 4 experts for 14
            # partial combinations): the point is shown without a result, with the reason
            logger.warning("%s: %s = %s left out: %s", artefact.id, sweep.axis, sweep.value,
                           exc)
            skipped[i] = f"setting refused: {exc}"
            cells = []
        sweeps.append((sweep, cells))
    return ArtefactCells(artefact, dataset, sweeps, missing, skipped)
