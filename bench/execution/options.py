"""Where runs train: the executor settings of ``run`` and ``reproduce``, checked at the
boundary (each misuse one clear error), without importing torch or the executors.

See :mod:`bench.execution.executors` for what each executor does.
"""

from __future__ import annotations

import argparse
import importlib
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from types import ModuleType
from typing import Any

from bench.errors import UserError
from bench.machine import default_jobs

KINDS = ("local", "process", "slurm", "ray")
#: The executor left to :meth:`Options.for_grid`: a pool of one-thread runs on the CPU, this
#: process on a GPU.
AUTO = "auto"
#: Torch threads of one run on this machine unless ``--threads`` says otherwise. One: a run's
#: numbers then do not depend on how many cores the machine has, a run keeps its speed when
#: other processes share the cores, and a pool of one-thread runs trains more steps per second
#: than one run with every thread (measurements: the documentation's speed page).
DEFAULT_THREADS = 1
#: sbatch options ``--slurm-extra`` refuses: set by a flag of their own, or by the executor.
_OWN_SLURM_FLAGS = {"partition": "use --slurm-partition", "time": "use --slurm-time",
                    "cpus-per-task": "use --slurm-cpus-per-task",
                    "gpus-per-task": "use --slurm-gpus-per-task",
                    "array": "use --slurm-array-parallelism",
                    "job-name": "the executor names its jobs"}
_SLURM_TIME = re.compile(r"^(?:(\d+)-)?(\d+)(?::(\d+))?(?::(\d+))?$")


class MissingExtra(ImportError):
    """An executor's optional dependency is not installed."""


def require(module: str, extra: str) -> ModuleType:
    """Import ``module`` or fail with the one command that installs it."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise MissingExtra(f"--executor {extra} needs the {module!r} package, which is not "
                           f'installed: pip install "flexmoe-bench[{extra}]"') from None


@dataclass(frozen=True)
class SlurmOptions:
    partition: str | None = None
    time_min: int = 240
    cpus_per_task: int = 1
    gpus_per_task: int = 0
    array_parallelism: int | None = None
    extra: tuple[tuple[str, str], ...] = ()
    cluster: str = "slurm"


@dataclass(frozen=True)
class RayOptions:
    address: str | None = None
    cpus_per_task: float = 1.0
    gpus_per_task: float = 0.0


@dataclass(frozen=True)
class Options:
    """Which executor and its settings (checked by :func:`parse_options`)."""

    kind: str = "local"
    #: Runs at once in the process pool; None: as many as :func:`bench.machine.default_jobs`.
    jobs: int | None = 1
    detach: bool = False
    slurm: SlurmOptions = field(default_factory=SlurmOptions)
    ray: RayOptions = field(default_factory=RayOptions)
    #: Torch threads of a run on this machine (in this process or a pool worker).
    threads: int = DEFAULT_THREADS

    @property
    def remote(self) -> bool:
        """Cells run elsewhere: the device is resolved there, not here."""
        return self.kind in ("slurm", "ray")

    def run_threads(self) -> int:
        """Torch threads of one run: ``threads`` here, a SLURM or Ray task's CPUs there."""
        if self.kind == "slurm":
            return self.slurm.cpus_per_task
        if self.kind == "ray":
            return max(1, int(self.ray.cpus_per_task))
        return self.threads

    def for_grid(self, runs: int, device_kind: str) -> Options:
        """The settings a grid of ``runs`` runs on a ``device_kind`` device (cpu, cuda)
        trains with: ``auto`` becomes a pool of one run per usable core on the CPU — this
        process when one run is left — and this process on a GPU; a pool's unset size
        becomes :func:`bench.machine.default_jobs`."""
        if self.kind == AUTO:
            if device_kind != "cpu":
                return replace(self, kind="local", jobs=1)
            jobs = default_jobs(runs, self.threads)
            return replace(self, kind="process" if jobs > 1 else "local", jobs=jobs)
        if self.kind == "process" and self.jobs is None:
            return replace(self, jobs=default_jobs(runs, self.threads))
        return self


def _flag(prefix: str, name: str) -> str:
    return f"--{prefix}-{name.replace('_', '-')}"


def slurm_minutes(text: str) -> int:
    """SLURM's time formats (minutes, ``M:SS``, ``H:MM:SS``, ``D-H[:MM[:SS]]``) in whole
    minutes, rounded up."""
    m = _SLURM_TIME.match(str(text).strip())
    if not m or (m[1] is None and m[3] is None and m[4] is not None):
        raise UserError(f"--slurm-time expects minutes, H:MM:SS or D-HH[:MM[:SS]] (SLURM's "
                        f"formats), got {text!r}")
    days, a, b, c = (int(x) if x is not None else None for x in m.groups())
    if days is not None:  # D-H, D-H:M, D-H:M:S
        seconds = days * 86400 + a * 3600 + (b or 0) * 60 + (c or 0)
    elif c is not None:  # H:M:S
        seconds = a * 3600 + b * 60 + c
    elif b is not None:  # M:S
        seconds = a * 60 + b
    else:
        seconds = a * 60
    if seconds <= 0:
        raise UserError(f"--slurm-time must be positive, got {text!r}")
    return -(-seconds // 60)


def _slurm_options(given: Mapping[str, Any]) -> SlurmOptions:
    extra = []
    for item in given.get("extra") or []:
        key, sep, value = str(item).partition("=")
        key = key.strip().replace("_", "-")
        if not sep or not re.fullmatch(r"[A-Za-z][A-Za-z0-9-]*", key) or not value.strip():
            raise UserError(f"--slurm-extra expects KEY=VALUE with an sbatch option name, e.g. "
                            f"mem=16G or account=myproject, got {item!r}")
        if key in _OWN_SLURM_FLAGS:
            raise UserError(f"--slurm-extra does not take {key}: {_OWN_SLURM_FLAGS[key]}")
        extra.append((key, value.strip()))
    for name, least in (("cpus_per_task", 1), ("gpus_per_task", 0), ("array_parallelism", 1)):
        if given.get(name) is not None and given[name] < least:
            raise UserError(f"{_flag('slurm', name)} must be at least {least}, "
                            f"got {given[name]}")
    time_min = slurm_minutes(given["time"]) if given.get("time") is not None else None
    values = {"partition": given.get("partition"), "time_min": time_min,
              "cpus_per_task": given.get("cpus_per_task"),
              "gpus_per_task": given.get("gpus_per_task"),
              "array_parallelism": given.get("array_parallelism"), "extra": tuple(extra),
              "cluster": given.get("cluster")}
    return SlurmOptions(**{k: v for k, v in values.items() if v is not None})


def parse_options(kind: str | None = None, jobs: int | None = None, detach: bool = False,
                  slurm: Mapping[str, Any] | None = None,
                  ray: Mapping[str, Any] | None = None,
                  threads: int | None = None) -> Options:
    """Check the executor settings of the command line, each misuse one clear error.

    ``slurm`` / ``ray``: option name → value as given (None or empty when not given).
    ``kind=None`` means ``process`` with ``jobs > 1``, ``local`` with ``jobs=1`` and
    ``auto`` without ``jobs`` (:meth:`Options.for_grid`); ``jobs=None``: as many runs at once
    as the machine holds. ``threads``: torch threads per run here (default
    :data:`DEFAULT_THREADS`).
    """
    slurm = {k: v for k, v in (slurm or {}).items() if v is not None and v != []}
    ray = {k: v for k, v in (ray or {}).items() if v is not None}
    if jobs is not None and jobs < 1:
        raise UserError(f"--jobs must be at least 1, got {jobs}")
    if threads is not None and threads < 1:
        raise UserError(f"--threads must be at least 1, got {threads}")
    if kind is None:
        kind = AUTO if jobs is None else "process" if jobs > 1 else "local"
    if kind not in KINDS and kind != AUTO:
        raise UserError(f"unknown executor {kind!r}; choose one of {', '.join(KINDS)}")
    if threads is not None and kind in ("slurm", "ray"):
        raise UserError(f"--threads sets the threads of a run on this machine; a {kind} task "
                        f"runs one thread per CPU it is given: use --{kind}-cpus-per-task")
    if kind == "local" and jobs is None:
        jobs = 1
    if jobs is not None and jobs > 1 and kind != "process":
        raise UserError(f"--jobs sizes the local process pool (--executor process); "
                        f"--executor {kind} runs " + ("one run at a time" if kind == "local"
                                                       else "one task per run"))
    for prefix, given in (("slurm", slurm), ("ray", ray)):
        if given and kind != prefix:
            raise UserError(f"{_flag(prefix, sorted(given)[0])} needs --executor {prefix}"
                            + (f" (got --executor {kind})" if kind != AUTO else ""))
    if detach and kind not in ("slurm", "ray"):
        raise UserError("--detach needs --executor slurm or ray: a scheduler that trains the "
                        "runs after this process has returned")
    if detach and kind == "ray" and not ray.get("address"):
        raise UserError("--detach with Ray needs --ray-address of a running cluster: a Ray "
                        "instance started here ends with this process")
    if kind == "slurm":
        options = Options(kind, 1, detach, slurm=_slurm_options(slurm))
        require("submitit", "slurm")
        return options
    if kind == "ray":
        if ray.get("cpus_per_task", 1) <= 0 or ray.get("gpus_per_task", 0) < 0:
            raise UserError(f"--ray-cpus-per-task must be positive and --ray-gpus-per-task at "
                            f"least 0, got {ray.get('cpus_per_task', 1)} and "
                            f"{ray.get('gpus_per_task', 0)}")
        options = Options(kind, 1, detach, ray=RayOptions(**ray))
        require("ray", "ray")
        return options
    return Options(kind, jobs, threads=threads or DEFAULT_THREADS)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The executor options, as one argument group of ``parser``."""
    where = parser.add_argument_group(
        "where runs train", "default: on the CPU, one-thread runs in a pool of worker "
        "processes, one per usable core (memory permitting; one run: in this process), on a "
        "GPU this process; local: in this process; process: --jobs N worker processes; slurm: "
        'a SLURM job array (pip install "flexmoe-bench[slurm]"); ray: Ray tasks (pip install '
        '"flexmoe-bench[ray]"). On a cluster the store must sit on a file system the nodes '
        "share.")
    add = where.add_argument
    add("--executor", choices=KINDS, default=None,
        help="default: process on the CPU (local with --jobs 1 or one run), local on a GPU")
    add("--jobs", type=int, default=None,
        help="runs at once in the pool of --executor process (default: one per usable core "
        "÷ --threads, memory permitting)")
    add("--threads", type=int, default=None, metavar="N",
        help="torch threads per run on this machine (default 1: a run's numbers do not "
        "depend on the machine's cores, and runs keep their speed beside other processes)")
    add("--detach", action="store_true", help="slurm / ray: submit and return; a later run of "
        "the same grid or 'status' takes in the results")
    add("--slurm-partition", default=None, metavar="NAME")
    add("--slurm-time", default=None, metavar="TIME",
        help="time limit per run: minutes, H:MM:SS or D-HH:MM:SS (default 4:00:00)")
    add("--slurm-cpus-per-task", type=int, default=None, metavar="N",
        help="CPUs (torch threads) per run (default 1)")
    add("--slurm-gpus-per-task", type=int, default=None, metavar="N",
        help="GPUs per run (default 0)")
    add("--slurm-array-parallelism", type=int, default=None, metavar="N",
        help="at most N runs of the array at once (default: submitit's 256)")
    add("--slurm-extra", action="append", default=[], metavar="KEY=VALUE",
        help="another sbatch option, e.g. mem=16G or account=NAME (repeatable)")
    add("--slurm-cluster", choices=["slurm", "local"], default=None,
        help="local: run the job array as local processes through submitit, to try a set-up "
        "without a cluster (default slurm)")
    add("--ray-address", default=None, metavar="HOST:PORT",
        help="join this running Ray cluster (default: start a local instance)")
    add("--ray-cpus-per-task", type=float, default=None, metavar="N",
        help="CPUs per run (default 1)")
    add("--ray-gpus-per-task", type=float, default=None, metavar="N",
        help="GPUs per run (default 0)")


def from_args(args: argparse.Namespace) -> Options:
    """:func:`parse_options` of the options :func:`add_arguments` parsed."""
    return parse_options(
        args.executor, args.jobs, args.detach, threads=args.threads,
        slurm={k: getattr(args, f"slurm_{k}") for k in (
            "partition", "time", "cpus_per_task", "gpus_per_task", "array_parallelism",
            "extra", "cluster")},
        ray={k: getattr(args, f"ray_{k}") for k in ("address", "cpus_per_task",
                                                    "gpus_per_task")})
