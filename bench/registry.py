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
import traceback
from collections.abc import Callable
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

import torch

from bench.data.core import DataSpec
from bench.errors import UserError
from bench.hparams import TRAIN_TYPES, SettingError, check_value, signature_types
from bench.machine import available_memory
from bench.profiles import get_profile

logger = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "flexmoe_bench.models"
TRAIN_KEYS = tuple(TRAIN_TYPES)

_models: dict[str, type] = {}
_datasets: dict[str, Callable[..., Any]] = {}
_dataset_docs: dict[str, str] = {}
_dataset_defaults: dict[str, dict[str, Any]] = {}
_loaded = False


def register_model(name: str) -> Callable[[type], type]:
    """Class decorator: register a model under ``name`` (lower-case, unique)."""

    def wrap(cls: type) -> type:
        if name in _models and _models[name] is not cls:
            raise UserError(f"model name {name!r} is already registered by "
                            f"{_models[name].__module__}.{_models[name].__qualname__}")
        if not callable(getattr(cls, "default_hparams", None)):
            raise TypeError(f"model {name!r} must define default_hparams(spec); "
                            "subclass bench.model.BenchModel")
        defaults = {k: d for k, (_, d) in model_settings(cls).items()}
        wrong = {k: v for k, v in getattr(cls, "hparams_added", {}).items()
                 if defaults.get(k, inspect.Parameter.empty) != v}
        if wrong:
            raise TypeError(f"model {name!r}: hparams_added {wrong} must name constructor "
                            "arguments at their defaults")
        cls.model_name = name
        _models[name] = cls
        return cls

    return wrap


def register_dataset(name: str, defaults: dict[str, Any] | None = None
                     ) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Function decorator: register a loader ``f(split_seed=0, **options) -> MultimodalData``;
    ``defaults`` gives the data set its own defaults of the options every data set takes
    (``bench.data.load.COMMON_OPTIONS``, e.g. ``{"missing": "pattern=adni"}``)."""

    def wrap(fn: Callable[..., Any]) -> Callable[..., Any]:
        _datasets[name] = fn
        _dataset_docs[name] = inspect.getdoc(fn) or ""
        _dataset_defaults[name] = dict(defaults or {})
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
    """Import a user's module or ``.py`` file (``--plugin``) so that what it registers joins.
    A plug-in that cannot be found, does not parse or fails while importing is a
    :class:`~bench.errors.UserError` naming the plug-in and where it failed."""
    load_builtins()
    if module.endswith(".py"):
        path = Path(module).resolve()
        if not path.is_file():
            raise UserError(f"plug-in file {module} does not exist (or is not a file)")
        name = f"flexmoe_bench_plugin_{path.stem}"
        if name in sys.modules:
            return
        spec = importlib.util.spec_from_file_location(name, path)
        mod = importlib.util.module_from_spec(spec)
        sys.modules[name] = mod
        try:
            spec.loader.exec_module(mod)
        except Exception as exc:
            del sys.modules[name]
            raise UserError(f"plug-in {module} failed while importing: "
                            f"{_where(exc, path)}; fix it (python {module} shows the whole "
                            "traceback)") from exc
        return
    try:
        importlib.import_module(module)
    except ModuleNotFoundError as exc:
        if exc.name and module.startswith(exc.name):
            raise UserError(f"could not import plug-in module {module!r}: {exc}. Pass an "
                            "importable module name (on PYTHONPATH or installed) or a .py "
                            "file") from exc
        raise UserError(f"plug-in module {module!r} failed while importing: {exc}") from exc
    except Exception as exc:
        raise UserError(f"plug-in module {module!r} failed while importing: "
                        f"{_where(exc, None)}; fix it (python -c 'import {module}' shows the "
                        "whole traceback)") from exc


def _where(exc: BaseException, path: Path | None) -> str:
    """``Type: message (file, line N)`` for an exception raised by a plug-in's code."""
    if isinstance(exc, SyntaxError):
        return f"SyntaxError: {exc.msg} ({exc.filename}, line {exc.lineno})"
    frames = traceback.extract_tb(exc.__traceback__)
    own = [f for f in frames if path is None or Path(f.filename) == path] or frames
    where = f" ({own[-1].filename}, line {own[-1].lineno})" if own else ""
    return f"{type(exc).__name__}: {exc}{where}"


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
        raise UserError(f"unknown model {name!r}; registered models: {', '.join(sorted(_models))}")
    return _models[name]


def dataset_loader(name: str) -> Callable[..., Any]:
    """The loader function registered as ``name`` (``folder`` for ``folder:PATH``)."""
    load_builtins()
    if name not in _datasets:
        raise UserError(f"unknown data set {name!r}; registered data sets: "
                        f"{', '.join(sorted(_datasets))} (or folder:PATH)")
    return _datasets[name]


def dataset_doc(name: str) -> str:
    load_builtins()
    return _dataset_docs.get(name, "")


def dataset_defaults(name: str) -> dict[str, Any]:
    """The defaults data set ``name`` declares for the options every data set takes."""
    load_builtins()
    return dict(_dataset_defaults.get(name, {}))


def model_settings(cls: type) -> dict[str, tuple[Any, Any]]:
    """Name → (type, default) of every setting of model class ``cls``: the training settings
    and each constructor argument after ``spec`` (``inspect.Parameter.empty``: no default)."""
    out: dict[str, tuple[Any, Any]] = {k: (t, inspect.Parameter.empty)
                                       for k, t in TRAIN_TYPES.items()}
    out.update(signature_types(cls.__init__, skip=2))  # self, spec
    return out


def resolve_hparams(name: str, spec: DataSpec, overrides: dict[str, Any] | None = None,
                    profile: str | None = None) -> dict[str, Any]:
    """The full, checked hyper-parameter dict of one run.

    Constructor defaults, then the model's defaults for the data set, the profile's training
    settings and the overrides; every training setting and constructor argument appears, each
    checked against its annotation and range (:mod:`bench.hparams`) and normalised, so one
    setting is one key — but a setting the model added later (``hparams_added``) while it
    holds the value stored runs had. Unknown keys and bad values are errors that say what is
    expected.
    """
    cls = model_class(name)
    settings = model_settings(cls)
    hp = {k: d for k, (_, d) in settings.items() if d is not inspect.Parameter.empty}
    hp.update(cls.default_hparams(spec))
    if profile is not None:
        hp.update(get_profile(profile).train_settings(getattr(cls, "variant_of", None) or name))
    for key, value in (overrides or {}).items():
        if key not in settings:
            raise UserError(f"model {name!r} has no hyper-parameter {key!r}; it accepts: "
                            f"{', '.join(sorted(settings))}")
        hp[key] = value
    unknown = sorted(set(hp) - set(settings))
    if unknown:
        raise TypeError(f"model {name!r}: default_hparams returns {unknown}, which are neither "
                        "training settings nor constructor arguments")
    missing = sorted(set(settings) - set(hp))
    if missing:
        raise SettingError(f"model {name!r}: no value for {', '.join(missing)}; give it with "
                           "--set KEY=VALUE or a default in the constructor")
    ranges = getattr(cls, "hparam_ranges", None)
    added = getattr(cls, "hparams_added", {})
    checked = {k: check_value(f"model {name!r}", k, hp[k], settings[k][0], ranges)
               for k in sorted(hp)}
    return {k: v for k, v in checked.items() if k not in added or v != added[k]}


def constructor_args(cls: type) -> list[str]:
    return [k for k in signature_types(cls.__init__, skip=2)]


def split_hparams(hparams: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(training settings, constructor arguments) of a resolved hyper-parameter dict."""
    train = {k: v for k, v in hparams.items() if k in TRAIN_KEYS}
    return train, {k: tuple(v) if isinstance(v, list) else v
                   for k, v in hparams.items() if k not in TRAIN_KEYS}


def build_model(name: str, spec: DataSpec, hparams: dict[str, Any]):
    """Instantiate model ``name`` from an already resolved hyper-parameter dict, once
    :func:`check_model` has found that its settings are accepted and that it fits."""
    check_model(name, spec, hparams)
    return model_class(name)(spec, **split_hparams(hparams)[1])


def check_model(name: str, spec: DataSpec, hparams: dict[str, Any]) -> None:
    """Build model ``name`` on the meta device (no memory, no random draws) to check, before
    anything trains, that its constructor accepts the settings — a refusal is a
    :class:`~bench.hparams.SettingError` — and that training it fits in the memory this
    machine has available."""
    sized = _on_meta(name, spec, hparams)
    if sized is not None:
        _check_memory(name, sized)


def parameter_count(name: str, spec: DataSpec, hparams: dict[str, Any]) -> int | None:
    """Trainable parameters of model ``name`` with ``hparams``, counted on the meta device
    (None where the model cannot be built there)."""
    sized = _on_meta(name, spec, hparams)
    if sized is None:
        return None
    return sum(p.numel() for p in sized.parameters() if p.requires_grad)


def _on_meta(name: str, spec: DataSpec, hparams: dict[str, Any]) -> Any:
    try:
        with torch.device("meta"):
            return model_class(name)(spec, **split_hparams(hparams)[1])
    except (ValueError, TypeError) as exc:
        raise SettingError(f"model {name!r} refuses its settings: {exc}") from exc
    except Exception:  # an operation the meta device lacks: the real build will tell
        logger.debug("model %r cannot be sized on the meta device", name, exc_info=True)
        return None


#: Bytes per parameter while training: float32 weights, gradients and Adam's two moments.
TRAINING_BYTES_PER_PARAM = 16


def _check_memory(name: str, model: Any) -> None:
    """Refuse a model whose training state alone exceeds the memory available now (Linux's
    MemAvailable; elsewhere unchecked), before a single byte of it is allocated."""
    n = sum(t.numel() for t in (*model.parameters(), *model.buffers()))
    need = n * TRAINING_BYTES_PER_PARAM
    free = available_memory()
    if free is not None and need > free:
        raise SettingError(
            f"model {name!r} with these settings has {n:,} parameters: training it needs "
            f"about {need / 2**30:.1f} GiB (weights, gradients, Adam state) and this machine "
            f"has {free / 2**30:.1f} GiB available; lower the size settings (--set hidden=…, "
            "num_experts=…, num_layers=…)")


def create_model(name: str, spec: DataSpec, **overrides: Any):
    """Build model ``name`` for ``spec`` with its per-data-set defaults plus ``overrides``."""
    return build_model(name, spec, resolve_hparams(name, spec, overrides))


def create_dataset(name: str, split_seed: int = 0, **options: Any):
    """Load data set ``name`` (or ``folder:PATH``) with its split for ``split_seed``."""
    if name.startswith("folder:"):
        return dataset_loader("folder")(path=name.split(":", 1)[1], split_seed=split_seed,
                                        **options)
    return dataset_loader(name)(split_seed=split_seed, **options)
