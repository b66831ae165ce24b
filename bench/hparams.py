"""Typed settings: every value of a run's configuration checked and normalised before training.

Types come from the annotations of a model's constructor (or a data set loader's signature);
``Literal[...]`` gives the accepted choices. Ranges come from :data:`RANGES`, keyed by the
conventional names the built-in models share, and from a model's own ``hparam_ranges``
class attribute (a plain dict, so a plug-in declares its ranges in one line). Normalisation
makes one setting one value: ``1`` and ``1.0`` for a float, ``"false"`` and ``False`` for a
bool, a list for a tuple — so equal settings hash to equal keys.
"""

from __future__ import annotations

import inspect
import math
import re
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal, Union

from bench.errors import UserError


@dataclass(frozen=True)
class Range:
    """An interval of accepted numbers; ``None`` leaves a side open."""

    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False

    def __contains__(self, v: float) -> bool:
        if self.low is not None and (v < self.low or (self.low_open and v == self.low)):
            return False
        high = self.high
        return not (high is not None and (v > high or (self.high_open and v == high)))

    def __str__(self) -> str:
        if self.high is None:
            return f"{'>' if self.low_open else '≥'} {_number(self.low)}"
        return (f"in {'(' if self.low_open else '['}{_number(self.low)}, "
                f"{_number(self.high)}{')' if self.high_open else ']'}")


def _number(x: float) -> str:
    """A bound as people write it: 4,294,967,295 rather than 4.29497e+09."""
    return f"{int(x):,}" if float(x).is_integer() and abs(x) >= 1e6 else f"{x:g}"


POSITIVE = Range(0, None, low_open=True)
NON_NEGATIVE = Range(0, None)
AT_LEAST_ONE = Range(1, None)
PROBABILITY = Range(0, 1, high_open=True)
#: Seeds: NumPy takes at most 32 bits, and the store keeps 64-bit integers.
SEED = Range(0, 2**32 - 1)

#: The training settings every run has, with their types and ranges.
TRAIN_TYPES: dict[str, type] = {"lr": float, "batch_size": int, "epochs": int,
                                "weight_decay": float}
TRAIN_RANGES: dict[str, Range] = {"lr": POSITIVE, "batch_size": AT_LEAST_ONE,
                                  "epochs": AT_LEAST_ONE, "weight_decay": NON_NEGATIVE}

#: Ranges by naming convention, for constructor arguments of every model: (pattern, range).
#: The first pattern that matches the whole name wins; integers default to ≥ 1.
RANGES: tuple[tuple[str, Range], ...] = (
    (r".*dropout.*|.*_drop|random_drop|noise", PROBABILITY),
    (r"warmup_epochs", NON_NEGATIVE),
    (r"temperature|tau", POSITIVE),
    (r".*weight.*|w_.*|alpha|beta|beta_shift|lambda_.*", NON_NEGATIVE),
)


class SettingError(UserError):
    """A setting of the wrong type or out of range; the message says what is expected."""


def _describe(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    if origin in (Union, types.UnionType):
        return " or ".join(_describe(a) for a in typing.get_args(tp))
    if tp is type(None):
        return "none"
    if origin in (tuple, list):
        return f"a comma-separated list of {_describe(typing.get_args(tp)[0])}s"
    return {int: "an integer", float: "a number", bool: "true or false", str: "a string"}.get(
        tp, getattr(tp, "__name__", str(tp)))


def _coerce(value: Any, tp: Any) -> Any:
    """``value`` as type ``tp`` (normalised), or raise ``TypeError``."""
    origin = typing.get_origin(tp)
    if tp is Any or tp is inspect.Parameter.empty:
        return list(value) if isinstance(value, tuple) else value
    if origin in (Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None or (isinstance(value, str) and value.lower() in ("none", "null")):
            if type(None) in args:
                return None
        for arg in (a for a in args if a is not type(None)):
            try:
                return _coerce(value, arg)
            except TypeError:
                continue
        raise TypeError
    if origin is Literal:
        if value in typing.get_args(tp) and not isinstance(value, bool):
            return value
        raise TypeError
    if origin in (tuple, list):
        (item, *_) = typing.get_args(tp) or (Any,)
        if isinstance(value, str):
            value = [v for v in value.split(",") if v.strip()]
        if not isinstance(value, (list, tuple)) or not value:
            raise TypeError
        return [_coerce(v.strip() if isinstance(v, str) else v, item) for v in value]
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "yes", "no", "1", "0"):
            return value.lower() in ("true", "yes", "1")
        if isinstance(value, int) and value in (0, 1):
            return bool(value)
        raise TypeError
    if tp is int:
        if isinstance(value, bool):
            raise TypeError
        if isinstance(value, str) and re.fullmatch(r"[+-]?\d+", value.strip()):
            return int(value)
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise TypeError
    if tp is float:
        if isinstance(value, bool):
            raise TypeError
        if isinstance(value, str):
            try:
                value = float(value)
            except ValueError:
                raise TypeError from None
        if isinstance(value, (int, float)) and math.isfinite(value):
            return float(value)
        raise TypeError
    if tp is str:
        if isinstance(value, str):
            return value
        raise TypeError
    return value


def signature_types(fn: Callable[..., Any], skip: int = 0) -> dict[str, tuple[Any, Any]]:
    """Name → (type, default) of ``fn``'s keyword-able parameters after the first ``skip``.

    The type is the resolved annotation; without one, the default's type (or ``Any``)."""
    params = list(inspect.signature(fn).parameters.values())[skip:]
    try:
        hints = typing.get_type_hints(fn)
    except Exception:  # an unresolvable annotation: fall back to the defaults' types
        hints = {}
    out = {}
    for p in params:
        if p.kind not in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY):
            continue
        tp = hints.get(p.name, inspect.Parameter.empty)
        if tp is inspect.Parameter.empty and p.default not in (p.empty, None):
            tp = type(p.default)
        out[p.name] = (tp, p.default)
    return out


def range_for(name: str, tp: Any, extra: dict[str, Range] | None = None,
              conventions: bool = True) -> Range | None:
    """The accepted range of a numeric setting ``name`` (``None``: any value); the naming
    conventions of :data:`RANGES` apply to model settings (``conventions``)."""
    if extra and name in extra:
        return extra[name]
    if not conventions:
        return None
    if name in TRAIN_RANGES:
        return TRAIN_RANGES[name]
    numeric = {a for a in (typing.get_args(tp) or (tp,)) if a in (int, float)}
    if not numeric:
        return None
    for pattern, rng in RANGES:
        if re.fullmatch(pattern, name):
            return rng
    return AT_LEAST_ONE if numeric == {int} else None


def check_value(owner: str, name: str, value: Any, tp: Any,
                ranges: dict[str, Range] | None = None, conventions: bool = True) -> Any:
    """``value`` checked against type ``tp`` and the range of ``name``, normalised; a
    :class:`SettingError` naming ``owner``, the key and what is expected otherwise."""
    try:
        out = _coerce(value, tp)
    except TypeError:
        raise SettingError(f"{owner}: {name}={value!r} is not valid; expected "
                           f"{_describe(tp)}") from None
    rng = range_for(name, tp, ranges, conventions)
    values = out if isinstance(out, list) else [out]
    for v in values:
        if rng is not None and isinstance(v, (int, float)) and not isinstance(v, bool) \
                and v not in rng:
            raise SettingError(f"{owner}: {name}={value!r} is out of range; expected "
                               f"{_describe(tp)} {rng}")
    return out
