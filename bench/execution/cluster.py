"""The cluster executors (see :mod:`bench.execution.executors`): SLURM job arrays through submitit,
and Ray tasks. Both hand each task its run's claim and take rows back as receipts or
results; both can detach (submit, return, let a later ``run`` or ``status`` collect).
"""

from __future__ import annotations

import contextlib
import json
import logging
import shutil
import threading
import time
import uuid
from typing import Any

from bench.errors import UserError
from bench.execution.executors import Batch, Executor, Finished, Task, run_task
from bench.execution.options import RayOptions, SlurmOptions, require
from bench.identity.config import RunConfig
from bench.results.receipts import receipt_path
from bench.results.store import ResultStore
from bench.training.run import failure_row

logger = logging.getLogger(__name__)


class SlurmExecutor(Executor):
    """One submitit job array per submission, one task per cell; logs in ``<store>.slurm/``.
    Rows come back as receipts (polled); a task that ends without one is a failed row."""

    name = "slurm"
    remote = True
    poll_s = 1.0

    def __init__(self, store: ResultStore, device: str, options: SlurmOptions,
                 detached: bool = False) -> None:
        super().__init__(store, device, detached)
        submitit = require("submitit", "slurm")
        if options.cluster == "slurm" and shutil.which("sbatch") is None:
            raise UserError("--executor slurm submits with sbatch, which is not on this "
                            "machine's PATH: run on a SLURM login node, or pass "
                            "--slurm-cluster local to try the job array here")
        self.options = options
        self.folder = store.path.absolute().with_name(store.path.name + ".slurm")
        self._ex = submitit.AutoExecutor(self.folder, cluster=options.cluster)
        params: dict[str, Any] = {
            "name": "flexmoe-bench", "timeout_min": options.time_min,
            "cpus_per_task": options.cpus_per_task, "slurm_partition": options.partition,
            "slurm_gpus_per_task": options.gpus_per_task or None,
            "slurm_array_parallelism": options.array_parallelism,
            "slurm_additional_parameters": dict(options.extra) or None}
        self._ex.update_parameters(**{k: v for k, v in params.items() if v is not None})
        self._jobs: dict[str, tuple[Any, RunConfig]] = {}

    def in_flight(self) -> int:
        return len(self._jobs)

    def submit(self, batch: Batch) -> None:
        tasks = [self.task(cell, token, self.options.cpus_per_task) for cell, token in batch]
        jobs = self._ex.map_array(run_task, tasks)
        ids = ", ".join(sorted({str(j.job_id).split("_")[0] for j in jobs}))
        logger.info("submitted %d run(s) to %s as job(s) %s; logs in %s", len(jobs),
                    self.options.cluster, ids, self.folder)
        self.note = (f"{len(jobs)} run(s) submitted as {self.options.cluster} job(s) {ids}; "
                     f"logs in {self.folder}")
        for job, (cell, _) in zip(jobs, batch):
            self._jobs[cell.key] = (job, cell)

    def wait(self) -> Finished:
        while True:
            finished = []
            for key, (job, cell) in list(self._jobs.items()):
                receipt = receipt_path(self.store.receipts_dir, key)
                if receipt.is_file():
                    finished.append((cell, json.loads(receipt.read_text())))
                elif job.done():
                    finished.append((cell, self._outcome(job, cell)))
                else:
                    continue
                del self._jobs[key]
            if finished:
                return finished
            time.sleep(self.poll_s)

    @staticmethod
    def _outcome(job: Any, cell: RunConfig) -> dict[str, Any] | None:
        try:
            return job.result()
        except Exception as exc:  # the task died: out of time, killed, node lost
            lines = str(exc).strip().splitlines()
            return failure_row(cell, f"SLURM job {job.job_id} ended without a result: "
                                            f"{lines[-1] if lines else type(exc).__name__}")

    def cancel(self) -> None:
        for job, _ in self._jobs.values():
            with contextlib.suppress(Exception):  # already gone is fine
                job.cancel(check=False)


class _RayDriver:
    """A detached Ray actor that owns a detached grid's tasks, so they outlive the process
    that submitted them; it exits when they have all ended."""

    def __init__(self) -> None:
        self._started = threading.Event()

    def run(self, tasks: list[Task], num_cpus: float, num_gpus: float) -> None:
        import ray

        remote = ray.remote(num_cpus=num_cpus, num_gpus=num_gpus)(run_task)
        refs = [remote.remote(t) for t in tasks]
        self._started.set()
        ray.wait(refs, num_returns=len(refs))
        ray.actor.exit_actor()

    def started(self) -> bool:
        return self._started.wait(timeout=600)


class RayExecutor(Executor):
    """One Ray task per cell (``num_cpus`` / ``num_gpus`` each); joins ``address`` or starts
    a local instance, which stops with the coordinator."""

    name = "ray"
    remote = True

    def __init__(self, store: ResultStore, device: str, options: RayOptions,
                 detached: bool = False) -> None:
        super().__init__(store, device, detached)
        self.ray = require("ray", "ray")
        self.options = options
        self._own = not self.ray.is_initialized()
        if self._own:
            self.ray.init(address=options.address, include_dashboard=False,
                          log_to_driver=False)
        self._remote = self.ray.remote(num_cpus=options.cpus_per_task,
                                       num_gpus=options.gpus_per_task)(run_task)
        self._refs: dict[Any, RunConfig] = {}

    def in_flight(self) -> int:
        return len(self._refs)

    def submit(self, batch: Batch) -> None:
        threads = max(1, int(self.options.cpus_per_task))
        tasks = [self.task(cell, token, threads) for cell, token in batch]
        if not self.detached:
            for t in tasks:
                self._refs[self._remote.remote(t)] = t.cell
            return
        name = f"flexmoe-bench-{uuid.uuid4().hex[:12]}"
        driver = self.ray.remote(_RayDriver).options(
            name=name, namespace="flexmoe-bench", lifetime="detached", num_cpus=0,
            max_concurrency=2).remote()
        driver.run.remote(tasks, self.options.cpus_per_task, self.options.gpus_per_task)
        self.ray.get(driver.started.remote())  # its tasks are submitted: we may leave
        self.note = (f"{len(tasks)} run(s) submitted to the Ray cluster at "
                     f"{self.options.address} (detached actor {name} in namespace "
                     "flexmoe-bench)")

    def wait(self) -> Finished:
        ready, _ = self.ray.wait(list(self._refs), num_returns=1)
        finished = []
        for ref in ready:
            cell = self._refs.pop(ref)
            try:
                finished.append((cell, self.ray.get(ref)))
            except self.ray.exceptions.RayError as exc:
                lines = str(exc).strip().splitlines()
                finished.append((cell, failure_row(
                    cell, f"Ray task failed: {lines[-1] if lines else type(exc).__name__}")))
        return finished

    def cancel(self) -> None:
        for ref in self._refs:
            with contextlib.suppress(Exception):  # already finished is fine
                self.ray.cancel(ref, force=True)

    def __exit__(self, *exc: object) -> None:
        super().__exit__(*exc)
        if self._own:
            self.ray.shutdown()
