"""OpenMP's wait policy for one-thread workers, and a reproducible load for ``perf``.

A training step of these small models runs hundreds of short parallel regions. GNU OpenMP
(PyTorch's runtime on Linux) keeps a thread spinning for a while between regions. Measured
on a 2-core machine (the documentation's speed page): with two threads, spinning is what
makes a step fast when the machine is idle (15 ms; with ``OMP_WAIT_POLICY=PASSIVE`` 34–39
ms), and when other trainings share the cores a two-thread step collapses whatever the
policy (169–185 ms; passive 56–123 ms), while a one-thread step keeps its share (48–50 ms)
and costs the same idle under either policy (20–21 ms). So the process pool's workers, which
run one thread each, sleep when they wait (``PASSIVE``, unless the user set a policy), and
on a shared machine a grid is best run with ``--jobs`` (one thread per run). The runtime
reads the variable once, when torch loads: a worker inherits it from its parent's
environment.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
from collections.abc import Iterator
from typing import Any

#: The policy of one-thread workers unless ``OMP_WAIT_POLICY`` is already set.
WORKER_POLICY = "PASSIVE"


def _policy(value: str | None) -> str:
    value = (value or "").strip().upper()
    return value if value in ("PASSIVE", "ACTIVE") else "default"


#: The policy of this process: the variable as it was when this module was first imported,
#: which is before torch loads in every process the suite starts.
_AT_START = _policy(os.environ.get("OMP_WAIT_POLICY"))


def wait_policy() -> str:
    """The wait policy OpenMP runs with in this process, as recorded with a timing:
    ``PASSIVE``, ``ACTIVE`` or ``default`` (the runtime's own: spin, then sleep)."""
    return _AT_START


def passive_workers() -> None:
    """Have the worker processes started from now on sleep when they wait (their
    environment's ``OMP_WAIT_POLICY``), unless the user chose a policy."""
    os.environ.setdefault("OMP_WAIT_POLICY", WORKER_POLICY)


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
