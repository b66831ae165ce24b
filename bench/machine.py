"""What this machine offers a grid: the CPUs this process may use, the memory available now,
and how many one-thread runs fit at once.

A run of these small models gains little from more threads and loses much when its threads
must share cores with other processes (:mod:`bench.threads`), so a grid on the CPU runs one
thread per run and as many runs at once as there are usable cores, memory permitting.
"""

from __future__ import annotations

import os

#: Memory one pool worker may need: PyTorch, the data and a model's training state (peak
#: RSS of one run at paper settings on synthetic-adni, measured: FuseMoE 2.1 GiB, I2MoE 2.6
#: GiB, the largest two).
WORKER_BYTES = 3 * 2**30


def usable_cpus() -> int:
    """CPUs this process may run on: its affinity mask where the system has one (a SLURM
    allocation, ``taskset``), else every core."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def available_memory() -> int | None:
    """Bytes available now (Linux's MemAvailable); None where it cannot be read."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def default_jobs(runs: int, threads: int = 1) -> int:
    """Runs of ``threads`` threads each to train at once for a grid of ``runs``: one per
    usable core's worth of threads, no more than the runs, and no more than the available
    memory holds (:data:`WORKER_BYTES` each); at least one."""
    jobs = min(runs, usable_cpus() // max(threads, 1))
    free = available_memory()
    if free is not None:
        jobs = min(jobs, free // WORKER_BYTES)
    return max(1, jobs)
