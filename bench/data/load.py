"""Loading a data set by name with its options: options resolved and checked, the
loaded data cached per process and file version, imposed missingness applied.

Where data live (``root``, ``path``, ``split_file``) is recorded with a run but not
part of its identity (:data:`LOCATION_OPTIONS`).
"""

from __future__ import annotations

import json
from dataclasses import replace
from functools import lru_cache
from pathlib import Path
from typing import Any

from bench import registry
from bench.data import missingness
from bench.data.core import EvalRule, MultimodalData
from bench.hparams import (
    PROBABILITY,
    SEED,
    Range,
    SettingError,
    check_value,
    signature_types,
)

#: Loader options that say where data live rather than what they are (not hashed).
LOCATION_OPTIONS = frozenset({"root", "path", "split_file"})


#: Options every data set takes, applied after loading: name → (type, default). A data set
#: may declare other defaults for them when it registers (``mfeat``: ``missing=pattern=adni``).
COMMON_OPTIONS: dict[str, tuple[Any, Any]] = {
    "eval": (EvalRule, "complete"), "missing": (missingness.Mechanism, missingness.NONE),
    "missing_rate": (float, 0.3), "missing_seed": (int, 0), "modalities": (str | None, None)}


#: The common options that impose missingness on the training split (``bench.data.missingness``).
MISSING_OPTIONS = ("missing", "missing_rate", "missing_seed")


#: Accepted ranges of the data options' numbers.
#: ``scale`` multiplies a synthetic cohort (2,380 patients at 1): 100 is about 0.8 GB.
DATA_RANGES = {"scale": Range(0, 100, low_open=True), "seed": SEED,
               "missing_rate": PROBABILITY, "missing_seed": SEED}


def data_identity(options: Any) -> dict[str, Any]:
    """The data options that say what the data are, i.e. all but :data:`LOCATION_OPTIONS`
    (the same files by another path are the same run); ``{}`` for a row without options."""
    if not isinstance(options, dict):
        return {}
    return {k: v for k, v in options.items() if k not in LOCATION_OPTIONS}


def loader_name(dataset: str) -> str:
    return "folder" if dataset.startswith("folder:") else dataset


def canonical_dataset(dataset: str) -> str:
    """``folder:PATH`` with an absolute path (one folder, one name); other names as given."""
    if dataset.startswith("folder:"):
        path = dataset.split(":", 1)[1]
        if not path:
            raise SettingError("--dataset folder: needs a path, e.g. folder:data/mystudy")
        return f"folder:{Path(path).expanduser().resolve()}"
    return dataset


def data_settings(dataset: str) -> dict[str, tuple[Any, Any]]:
    """Name → (type, default) of every option of data set ``dataset`` (``folder:PATH``
    included): its loader's keyword arguments and the options every data set takes."""
    name = loader_name(dataset)
    loader = registry.dataset_loader(name)
    settings = {k: v for k, v in signature_types(loader).items()
                if k not in ("split_seed", "path")}
    defaults = registry.dataset_defaults(name)
    unknown = sorted(set(defaults) - set(COMMON_OPTIONS))
    if unknown:
        raise TypeError(f"data set {name!r} declares defaults for {unknown}, which are not "
                        f"options every data set takes ({', '.join(COMMON_OPTIONS)})")
    return {**settings, **{k: (tp, defaults.get(k, d)) for k, (tp, d) in COMMON_OPTIONS.items()}}


def resolve_data(dataset: str, options: dict[str, Any] | None = None) -> tuple[str, dict]:
    """The canonical data-set name and every loader option, checked and normalised.

    ``folder:PATH`` becomes an absolute path; options missing from ``options`` take the
    loader's defaults; numbers take the annotated type (``scale=1`` is ``scale=1.0``); the
    missingness options that do not apply are left out (``missingness.applicable``), so a
    run without imposed missingness has the key it had before they existed.
    """
    if not dataset or not dataset.strip():
        raise SettingError("the data set name is empty; pass --dataset NAME (run_bench.py "
                           "list datasets) or --dataset folder:PATH")
    settings = data_settings(dataset)
    dataset = canonical_dataset(dataset)
    given = dict(options or {})
    unknown = sorted(set(given) - set(settings))
    if unknown:
        accepted = ", ".join(sorted(settings)) or "none"
        raise SettingError(f"data set {dataset!r} has no option {', '.join(map(repr, unknown))}; "
                           f"it accepts: {accepted}")
    out = {}
    for key, (tp, default) in sorted(settings.items()):
        value = given.get(key, default)
        out[key] = check_value(f"data set {dataset!r}", key, value, tp, DATA_RANGES,
                               conventions=False)
        if key in LOCATION_OPTIONS and isinstance(out[key], str):
            out[key] = str(Path(out[key]).expanduser().resolve())
    if out["modalities"] is None:  # absent: the key a run had before the option existed
        del out["modalities"]
    else:
        out["modalities"] = _letter_set(dataset, out["modalities"])
    mechanism = missingness.normalise(out["missing"])
    for key, applies, takes in (
            ("missing_rate", mechanism in missingness.RATED,
             "missing=" + "|".join(missingness.RATED)),
            ("missing_seed", mechanism != missingness.NONE, "a mechanism other than none")):
        if key in given and not applies:
            raise SettingError(f"data set {dataset!r}: {key}={given[key]} has no effect with "
                               f"missing={mechanism}; it applies only with {takes}")
    return dataset, missingness.applicable(out, settings["missing"][1])


def _letter_set(dataset: str, letters: str) -> str:
    """The ``modalities`` option as a sorted set of letters: one key whatever their order
    (the data keep the data set's own order)."""
    letters = letters.replace(",", "").strip()
    if not letters or len(set(letters)) != len(letters):
        raise SettingError(f"data set {dataset!r}: modalities={letters!r} must name each kept "
                           "modality's letter once, e.g. modalities=IGC")
    return "".join(sorted(letters))


def _stat_signature(dataset: str, options: dict[str, Any]) -> tuple:
    """Sizes and modification times of the files behind a data set (cache invalidation
    within one process; the key itself uses the content digest)."""
    roots = [dataset.split(":", 1)[1]] if dataset.startswith("folder:") else []
    roots += [v for k, v in options.items() if k in LOCATION_OPTIONS and isinstance(v, str)]
    sig = []
    for root in roots:
        p = Path(root)
        files = [p] if p.is_file() else sorted(x for x in p.rglob("*") if x.is_file()) \
            if p.is_dir() else []
        sig += [(str(f), st.st_size, st.st_mtime_ns) for f in files for st in [f.stat()]]
    return tuple(sig)


@lru_cache(maxsize=4)
def _load_cached(dataset: str, options_json: str, split_seed: int,
                 signature: tuple) -> MultimodalData:
    return registry.create_dataset(dataset, split_seed=split_seed, **json.loads(options_json))


@lru_cache(maxsize=12)  # the mechanisms artefact's ten settings of one data set, and more
def _missing_cached(dataset: str, options_json: str, split_seed: int, signature: tuple,
                    missing_json: str, modalities: str | None) -> MultimodalData:
    data = _load_cached(dataset, options_json, split_seed, signature)
    if modalities is not None:
        data = data.keep_modalities(modalities)
    missing = json.loads(missing_json)
    if missing.get("missing", missingness.NONE) == missingness.NONE:
        return data
    return missingness.impose(data, **missing)


def load_data(dataset: str, options: dict[str, Any] | None = None,
              split_seed: int = 0) -> MultimodalData:
    """Load a data set with its options and split (once per process and file version), keep
    the modalities its ``modalities`` option names, then impose the missingness its options
    ask for on the training split."""
    name, opts = resolve_data(dataset, options)
    loader_opts = {k: v for k, v in opts.items() if k not in COMMON_OPTIONS}
    missing = {k: v for k, v in opts.items() if k in MISSING_OPTIONS}
    data = _missing_cached(name, json.dumps(loader_opts, sort_keys=True), int(split_seed),
                           _stat_signature(name, opts), json.dumps(missing, sort_keys=True),
                           opts.get("modalities"))
    return replace(data, eval_rule=opts["eval"])
