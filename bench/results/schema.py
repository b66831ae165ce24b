"""What a stored run holds: the columns of the ``runs`` and ``claims`` tables.

The metric columns (``val_acc`` … ``test_auc``) come from the metric declarations
(:data:`bench.training.metrics.METRICS`), so a new metric is a new column of every store,
added to an older store when it is next opened for writing.
"""

from __future__ import annotations

from dataclasses import dataclass

from bench.training.metrics import metric_columns

SCHEMA_VERSION = "1"

#: Column name → SQLite type. JSON columns hold dicts; metrics are fractions in [0, 1].
COLUMNS: dict[str, str] = {
    "key": "TEXT PRIMARY KEY", "key_version": "INTEGER", "config": "TEXT",
    "created_at": "TEXT", "status": "TEXT", "error": "TEXT",
    "model": "TEXT", "dataset": "TEXT", "combo": "TEXT", "seed": "INTEGER", "profile": "TEXT",
    "split_seed": "INTEGER", "split_digest": "TEXT",
    "hparams": "TEXT", "data_options": "TEXT", "run_info": "TEXT",
    **dict.fromkeys(metric_columns(), "REAL"), "metric_notes": "TEXT",
    "test_pred_counts": "TEXT", "robustness": "TEXT",
    "best_epoch": "INTEGER", "epochs": "INTEGER", "val_acc_curve": "TEXT",
    "n_train": "INTEGER", "n_val": "INTEGER", "n_test": "INTEGER",
    "params": "INTEGER", "flops_per_sample": "REAL", "flops_batch": "REAL",
    "flops_batch_size": "INTEGER",
    "fvcore_flops_per_sample": "REAL", "fvcore_flops_batch": "REAL", "fvcore_skipped_ops": "TEXT",
    "ms_per_iter": "REAL", "ms_per_iter_median": "REAL", "ms_per_iter_epochs": "TEXT",
    "s_per_epoch": "REAL",
    "train_seconds": "REAL", "cpu_share": "REAL", "load_avg": "REAL",
    "device": "TEXT", "device_name": "TEXT", "threads": "INTEGER", "omp_wait_policy": "TEXT",
    "torch_version": "TEXT", "python_version": "TEXT", "code_version": "TEXT",
}
#: The ``claims`` table: one row per cell a coordinator has started and not yet written.
CLAIM_COLUMNS: dict[str, str] = {
    "key": "TEXT PRIMARY KEY", "owner": "TEXT", "host": "TEXT", "pid": "INTEGER",
    "machine": "TEXT", "claimed_at": "REAL", "expires": "REAL",
    "model": "TEXT", "dataset": "TEXT", "combo": "TEXT", "seed": "INTEGER", "profile": "TEXT",
    "queued": "INTEGER",
}
JSON_COLUMNS = ("config", "hparams", "data_options", "run_info", "metric_notes",
                "test_pred_counts", "val_acc_curve", "fvcore_skipped_ops", "robustness",
                "ms_per_iter_epochs")


@dataclass(frozen=True)
class Claim:
    """One row of the ``claims`` table: ``owner`` (a coordinator's uuid) holds ``key`` until
    ``expires`` (seconds since the epoch) unless renewed; a ``queued`` one only says that
    the owner will start the run when it has room (any coordinator may claim it)."""

    key: str
    owner: str
    host: str
    pid: int
    machine: str | None = None
    claimed_at: float = 0.0
    expires: float = 0.0
    model: str | None = None
    dataset: str | None = None
    combo: str | None = None
    seed: int | None = None
    profile: str | None = None
    queued: bool = False

    @property
    def holder(self) -> str:
        """``host:pid``; a claim handed to a task not yet started has no pid: its label."""
        return f"{self.host}:{self.pid}" if self.pid else self.host
