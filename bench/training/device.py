"""The device a run trains on: a name checked where it is given, resolved where it runs."""

from __future__ import annotations

import torch

from bench.errors import UserError


def device_type(device: str) -> str:
    """The kind a device name asks for (``auto`` → what this machine has), checking only the
    spelling: a task on a cluster node resolves the name there (:func:`resolve_device`)."""
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        dev = None
    if dev is None or dev.type not in ("cpu", "cuda") or (dev.type == "cpu" and dev.index):
        raise UserError(f"unknown device {device!r}; use auto, cpu, cuda or cuda:N")
    return dev.type


def resolve_device(device: str = "auto") -> torch.device:
    """``auto`` (CUDA when available, else CPU), ``cpu``, ``cuda`` or ``cuda:N``; anything
    else, or CUDA on a machine without it, is an error that says what is accepted."""
    kind = device_type(device)
    dev = torch.device(kind if device == "auto" else device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"device {device!r} requested but CUDA is not available; use --device cpu")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise UserError(f"device {device!r} does not exist; this machine has "
                        f"{torch.cuda.device_count()} CUDA device(s)")
    return dev
