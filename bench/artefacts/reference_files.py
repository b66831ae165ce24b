"""The committed reference files of ``run_bench.py check`` (``results/reference/``): their
format — one file per data set, an environment header, one JSON line per run — the
environment they record, reading them with a clear error for any damage, and
rewriting only what moved (``check --update``).
"""

from __future__ import annotations

import json
import platform
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from bench.errors import UserError
from bench.resources import checkout_root
from bench.training.metrics import metric_columns

#: Torch threads of each run: one, so that a run's numbers do not depend on the core count.
CI_THREADS = 1
#: Compared per line: every declared metric on the test split.
METRICS = metric_columns(("test",))
#: Equal anywhere: a model's size and cost do not depend on the machine.
EXACT = ("params", "flops_per_sample", "fvcore_flops_per_sample")
SAME_ENVIRONMENT_TOL = 1e-9
#: Other environment: |Δ mean| ≤ max(1 / n_test, K_SIGMA · σ of the reference seeds).
K_SIGMA = 3.0
#: What a line holds besides its identity (model, combo, seed).
LINE_FIELDS = ("key", *METRICS, "best_epoch", "n_test", *EXACT)
ENVIRONMENT_MATCH = ("torch", "device", "cpu_capability", "cpu_isa")
#: CPU flags whose presence selects kernel code paths (matched by prefix or substring).
ISA_PREFIXES = ("avx", "amx", "fma", "sse4")


def reference_dir() -> Path:
    """``results/reference`` of the checkout (the check guards the repository's numbers)."""
    root = checkout_root()
    if root is None:
        raise FileNotFoundError("run_bench.py check compares with results/reference/ of a "
                                "checkout of the repository; none was found here")
    return root / "results" / "reference"


def environment() -> dict[str, Any]:
    """Where numbers come from: what makes CPU runs bit-identical, plus provenance."""
    from bench.version import code_version

    return {"torch": torch.__version__, "device": "cpu",
            "cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "cpu_isa": cpu_isa(),
            "threads": CI_THREADS, "python": platform.python_version(),
            "code_version": code_version()}


def cpu_isa() -> str:
    """The CPU's vector and matrix extensions (``avx512_fp16 amx_tile …``), from
    ``/proc/cpuinfo`` (elsewhere the processor name).

    Torch's ``cpu_capability`` says "AVX512" for every AVX-512 CPU, yet two of them can give
    other last bits for the same run and code (FuseMoE, MulT and I2MoE did on two AVX-512
    machines), so exact comparison also asks for the same extensions.
    """
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.processor() or "unknown"
    flags = next((line.split(":", 1)[1].split() for line in text.splitlines()
                  if line.startswith("flags")), [])
    return " ".join(sorted(f for f in flags if f.startswith(ISA_PREFIXES) or "vnni" in f))


#: Line fields that are counts (the rest are floats or undefined).
COUNTS = ("best_epoch", "n_test", "params")


def _value(field: str, value: Any) -> Any:
    """A stored value as a reference line keeps it: counts as ints, NaN as None."""
    if value is None or pd.isna(value):
        return None
    if field == "key":
        return str(value)
    return int(value) if field in COUNTS else float(value)


def lines_of(rows: pd.DataFrame) -> dict[str, list[dict[str, Any]]]:
    """Data set → reference lines (sorted by model, combination, seed) of stored rows."""
    out: dict[str, list[dict[str, Any]]] = {}
    for dataset, part in rows.groupby("dataset"):
        part = part.sort_values(["model", "combo", "seed"])
        out[str(dataset)] = [
            {"model": r["model"], "combo": r["combo"], "seed": int(r["seed"]),
             **{f: _value(f, r[f]) for f in LINE_FIELDS}} for _, r in part.iterrows()]
    return out


@dataclass(frozen=True)
class Reference:
    """One committed file: the environment its numbers came from and one line per run."""

    dataset: str
    environment: dict[str, Any]
    lines: list[dict[str, Any]]

    def text(self) -> str:
        """The file: a header, then exactly one line per run (reviewable in a diff)."""
        head = json.dumps({"dataset": self.dataset, "environment": self.environment,
                           "tolerance": TOLERANCE_TEXT}, sort_keys=True)
        body = ",\n".join(json.dumps(line, sort_keys=True) for line in self.lines)
        return f"{head[:-1]},\n\"runs\": [\n{body}\n]}}\n"


TOLERANCE_TEXT = {
    "exact": f"{', '.join(EXACT)}: equal",
    "same_environment": f"{', '.join(METRICS)}, best_epoch: equal per seed up to "
                        f"{SAME_ENVIRONMENT_TOL:g}",
    "other_environment": f"{', '.join(METRICS)}: |mean now - mean reference| over seeds <= "
                         f"max(1 / n_test, {K_SIGMA:g} * std of the reference seeds)",
    "environment": f"same environment = same {', '.join(ENVIRONMENT_MATCH)}",
}


def read_references(folder: Path, strict: bool = True) -> dict[str, Reference]:
    """Every ``<data set>.json`` in ``folder``. A file that is not one — not JSON, another
    data set's name inside, a line without its fields or with a value that is not a
    number, the same run twice — is an error naming the file and line (``strict``), or is
    left out (``strict=False``: ``check --update`` rewrites it)."""
    out = {}
    for path in sorted(folder.glob("*.json")):
        try:
            ref = _read_reference(path)
        except UserError:
            if strict:
                raise
            continue
        out[ref.dataset] = ref
    return out


def _read_reference(path: Path) -> Reference:
    fix = "restore it from git or rewrite it with run_bench.py check --update"
    if not path.is_file():
        raise UserError(f"{path} is a folder; expected a reference file of run_bench.py check "
                        f"there ({fix})")
    try:
        data = json.loads(path.read_text())
    except (ValueError, OSError) as exc:
        raise UserError(f"{path} is not a reference file of run_bench.py check ({exc}); "
                        f"{fix}") from None
    if not isinstance(data, dict) or not isinstance(data.get("environment"), dict) \
            or not isinstance(data.get("runs"), list):
        raise UserError(f"{path}: expected a JSON object with 'dataset', an 'environment' "
                        f"object and a 'runs' list; {fix}")
    if data.get("dataset") != path.stem:
        raise UserError(f"{path}: its 'dataset' field says {data.get('dataset')!r} but the file "
                        f"is named for {path.stem!r}; each file holds the data set it is named "
                        f"for ({fix})")
    seen: dict[tuple, int] = {}
    for i, line in enumerate(data["runs"]):
        where = f"{path}, line {i + 3}"  # a header line and the 'runs' line come first
        if not isinstance(line, dict):
            raise UserError(f"{where}: expected one JSON object per run; {fix}")
        missing = {"model", "combo", "seed", *LINE_FIELDS} - set(line)
        if missing:
            raise UserError(f"{where}: the run lacks {', '.join(sorted(missing))}; {fix}")
        bad = [f for f in ("seed", *LINE_FIELDS) if f != "key" and line[f] is not None
               and (isinstance(line[f], bool) or not isinstance(line[f], (int, float)))]
        if bad:
            raise UserError(f"{where}: {', '.join(f'{f}={line[f]!r}' for f in bad)} is not a "
                            f"number; {fix}")
        cell = (line["model"], line["combo"], line["seed"])
        if cell in seen:
            raise UserError(f"{where}: {cell[0]} {cell[1]} seed {cell[2]} is already on line "
                            f"{seen[cell]}; each run appears once ({fix})")
        seen[cell] = i + 3
    return Reference(data["dataset"], data["environment"], list(data["runs"]))


def update(folder: Path, rows: pd.DataFrame, datasets: Sequence[str]) -> list[Path]:
    """Rewrite the reference files of ``datasets`` from ``rows``; a file whose lines did not
    change keeps its bytes (its environment header too). Returns the files written."""
    folder.mkdir(parents=True, exist_ok=True)
    old = read_references(folder, strict=False)
    new = lines_of(rows)
    env = environment()
    written = []
    for dataset in datasets:
        lines = new.get(dataset, [])
        if dataset in old and old[dataset].lines == lines:
            continue
        path = folder / f"{dataset}.json"
        if path.is_dir():
            raise UserError(f"{path} is a folder where the reference file of {dataset!r} "
                            "belongs; move it aside and run check --update again")
        path.write_text(Reference(dataset, env, lines).text())
        written.append(path)
    for dataset in sorted(set(old) - set(datasets)):  # a data set that left the grid
        (folder / f"{dataset}.json").unlink()
        written.append(folder / f"{dataset}.json")
    return written
