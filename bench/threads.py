"""OpenMP's wait policy: idle OpenMP threads sleep rather than spin, so a run keeps its speed
on a machine it shares.

A training step of these small models runs hundreds of short parallel regions. By default
GNU OpenMP (PyTorch's runtime on Linux) keeps each thread spinning for a while between
regions; when other processes hold the cores, the spinning threads take turns with the one
that has work, and a 15 ms step takes 150 ms and more. With ``OMP_WAIT_POLICY=PASSIVE`` a
thread waiting for work sleeps at once: on an idle machine this costs little, under load it
keeps a step near its idle time (measured in the documentation's speed page). The runtime
reads the variable once, when it is loaded with torch, so the command line sets it before
anything imports torch, and the worker processes it starts inherit it. A value the user set
is kept.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import sys
from collections.abc import Iterator
from typing import Any

#: The policy the command line asks for unless ``OMP_WAIT_POLICY`` is already set.
DEFAULT_POLICY = "PASSIVE"


def prefer_passive_wait() -> None:
    """Ask the OpenMP runtime for :data:`DEFAULT_POLICY` unless the user chose a policy.
    Effective only before torch is imported; later it changes nothing (and says so through
    :func:`wait_policy`)."""
    if "torch" not in sys.modules:
        os.environ.setdefault("OMP_WAIT_POLICY", DEFAULT_POLICY)


def wait_policy() -> str:
    """The wait policy OpenMP runs with in this process, as recorded with a timing:
    ``PASSIVE``, ``ACTIVE`` or ``default`` (the runtime's own: spin, then sleep)."""
    value = os.environ.get("OMP_WAIT_POLICY", "").strip().upper()
    return value if value in ("PASSIVE", "ACTIVE") else "default"


def spin(started: Any) -> None:
    """A busy process for ``perf --busy``: signal ``started``, then burn a core until killed."""
    started.set()
    while True:
        pass


@contextlib.contextmanager
def busy_processes(count: int) -> Iterator[None]:
    """``count`` processes spinning on the CPU while the block runs: a reproducible load, to
    time a step as it runs on a shared machine."""
    ctx = multiprocessing.get_context("spawn")
    procs = []
    try:
        for _ in range(count):
            started = ctx.Event()
            proc = ctx.Process(target=spin, args=(started,), daemon=True)
            proc.start()
            procs.append(proc)
            started.wait(60)
        yield
    finally:
        for proc in procs:
            proc.kill()
        for proc in procs:
            proc.join()
