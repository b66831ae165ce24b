"""Model and data-set registries: plain dicts filled by decorators.

``@register_model("name")`` on an ``nn.Module`` subclass is the only step to add a model:
``list_models()`` then lists it, the runner can train it and the contract tests test it.
Built-in models live in the ``flexmoe`` and ``baselines`` packages; other packages join
through the ``flexmoe_bench.models`` entry-point group or ``--plugin MODULE``.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import logging
import sys
from collections.abc import Callable
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

from bench.data.core import DataSpec

logger = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "flexmoe_bench.models"
TRAIN_KEYS = ("lr", "batch_size", "epochs", "weight_decay")

_models: dict[str, type] = {}
_datasets: dict[str, Callable[..., Any]] = {}
_dataset_docs: dict[str, str] = {}
_loaded = False


def register_model(name: str) -> Callable[[type], type]:
    """Class decorator: register a model under ``name`` (lower-case, unique)."""

    def wrap(cls: type) -> type:
        if name in _models and _models[name] is not cls:
            raise ValueError(f"model name {name!r} is already registered by "
                             f"{_models[name].__module__}.{_models[name].__qualname__}")
        if not callable(getattr(cls, "default_hparams", None)):
            raise TypeError(f"model {name!r} must define default_hparams(spec); "
                            "subclass bench.model.BenchModel")
        cls.model_name = name
        _models[name] = cls
        return cls

    return wrap


def register_dataset(name: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Function decorator: register a loader ``f(split_seed=0, **options) -> MultimodalData``."""

    def wrap(fn: Callable[..., Any]) -> Callable[..., Any]:
        _datasets[name] = fn
        _dataset_docs[name] = inspect.getdoc(fn) or ""
        return fn

    return wrap


def load_builtins() -> None:
    """Import the built-in model packages and installed plug-ins once."""
    global _loaded
    if _loaded:
        return
    _loaded = True
    importlib.import_module("bench.data.sources")
    importlib.import_module("baselines")
    importlib.import_module("flexmoe")
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        try:
            ep.load()
        except Exception as exc:  # a broken third-party plug-in must not hide the built-ins
            logger.error("could not load model plug-in %s (%s): %s", ep.name, ep.value, exc)


def load_plugin(module: str) -> None:
    """Import a user's module or ``.py`` file (``--plugin``) so that what it registers joins."""
    load_builtins()
    if module.endswith(".py"):
        path = Path(module).resolve()
        if not path.is_file():
            raise FileNotFoundError(f"plug-in file {module} does not exist")
        name = f"flexmoe_bench_plugin_{path.stem}"
        if name in sys.modules:
            return
        spec = importlib.util.spec_from_file_location(name, path)
        mod = importlib.util.module_from_spec(spec)
        sys.modules[name] = mod
        spec.loader.exec_module(mod)
        return
    try:
        importlib.import_module(module)
    except ImportError as exc:
        raise ImportError(f"could not import plug-in module {module!r}: {exc}. Pass an "
                          "importable module name (on PYTHONPATH or installed) or a .py "
                          "file") from exc


def list_models(variants: bool = True) -> list[str]:
    """Names of every registered model, sorted; ``variants=False`` leaves out ablation
    variants (classes with a ``variant_of`` attribute naming their base model)."""
    load_builtins()
    return sorted(n for n, c in _models.items() if variants or not getattr(c, "variant_of", None))


def list_datasets() -> list[str]:
    """Names of every registered data set, sorted (``folder:PATH`` is always available too)."""
    load_builtins()
    return sorted(_datasets)


def model_class(name: str) -> type:
    load_builtins()
    if name not in _models:
        raise KeyError(f"unknown model {name!r}; registered models: {', '.join(sorted(_models))}")
    return _models[name]


def dataset_doc(name: str) -> str:
    load_builtins()
    return _dataset_docs.get(name, "")


def resolve_hparams(name: str, spec: DataSpec, overrides: dict[str, Any] | None = None,
                    profile: str | None = None) -> dict[str, Any]:
    """The full hyper-parameter dict of one run: defaults for the data set, profile, overrides.

    Training keys (``TRAIN_KEYS``) and the model's constructor arguments share one flat dict,
    so every setting of a run is stored and hashed. Unknown keys are an error.
    """
    cls = model_class(name)
    hp = dict(cls.default_hparams(spec))
    if profile is not None:
        hp.update(cls.profile_hparams(profile, spec))
    accepted = set(constructor_args(cls)) | set(TRAIN_KEYS)
    for key, value in (overrides or {}).items():
        if key not in accepted:
            raise KeyError(f"model {name!r} has no hyper-parameter {key!r}; it accepts: "
                           f"{', '.join(sorted(accepted))}")
        hp[key] = value
    return dict(sorted(hp.items()))


def constructor_args(cls: type) -> list[str]:
    params = list(inspect.signature(cls.__init__).parameters.values())[2:]  # self, spec
    return [p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]


def split_hparams(hparams: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(training settings, constructor arguments) of a resolved hyper-parameter dict."""
    train = {k: v for k, v in hparams.items() if k in TRAIN_KEYS}
    return train, {k: v for k, v in hparams.items() if k not in TRAIN_KEYS}


def build_model(name: str, spec: DataSpec, hparams: dict[str, Any]):
    """Instantiate model ``name`` from an already resolved hyper-parameter dict."""
    return model_class(name)(spec, **split_hparams(hparams)[1])


def create_model(name: str, spec: DataSpec, **overrides: Any):
    """Build model ``name`` for ``spec`` with its per-data-set defaults plus ``overrides``."""
    return build_model(name, spec, resolve_hparams(name, spec, overrides))


def create_dataset(name: str, split_seed: int = 0, **options: Any):
    """Load data set ``name`` (or ``folder:PATH``) with its split for ``split_seed``."""
    load_builtins()
    if name.startswith("folder:"):
        return _datasets["folder"](path=name.split(":", 1)[1], split_seed=split_seed, **options)
    if name not in _datasets:
        raise KeyError(f"unknown data set {name!r}; registered data sets: "
                       f"{', '.join(sorted(_datasets))} (or folder:PATH)")
    return _datasets[name](split_seed=split_seed, **options)
