"""Regression check of the suite's reported numbers against committed reference results.

``run_bench.py check`` trains the ``ci`` grid (:data:`CI_GRID`, the ``ci`` profile: every
registered model but the ablation variants, two seeds) into a temporary store or ``--store``
and compares each run with its line in ``results/reference/<data set>.json``:

* parameter counts and forward FLOPs (both counters): exactly equal, anywhere;
* metrics in the reference's environment (torch version, device type, CPU instruction set
  and extensions): equal per seed up to :data:`SAME_ENVIRONMENT_TOL` — CPU runs at one
  thread are deterministic, so any change is a real change;
* metrics elsewhere: the mean over seeds within ``max(one test sample, k·σ)`` with σ the
  reference seeds' standard deviation, reported as "environment differs".

``check --update`` writes the files from a fresh run, one line per run, and leaves a line
(and the file's environment header) untouched when its numbers did not move, so the diff
shows what moved.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import pandas as pd
from tabulate import tabulate

from bench import registry
from bench.artefacts.reference_files import (
    CI_THREADS,
    ENVIRONMENT_MATCH,
    EXACT,
    K_SIGMA,
    METRICS,
    SAME_ENVIRONMENT_TOL,
    Reference,
    environment,
    lines_of,
    read_references,
    reference_dir,
    update,
)
from bench.data.load import load_data
from bench.execution.options import Options
from bench.identity.config import RunConfig, build_grid
from bench.rendering.context import CONTEXT, context_scores
from bench.results.store import ResultStore, load_results
from bench.training.metrics import column

#: The grid ``check`` runs: data set → combinations (models: every registered model but the
#: ablation variants; settings and seeds: the ``ci`` profile).
CI_GRID: dict[str, tuple[str, ...]] = {"synthetic-adni": ("IG", "IGCB"),
                                       "synthetic-mimic": ("LNC",)}
CI_PROFILE = "ci"


def ci_cells(models: Sequence[str] | None = None,
             grid: dict[str, tuple[str, ...]] | None = None) -> list[RunConfig]:
    """The runs of the ``ci`` grid (``models``/``grid``: a smaller one, for tests)."""
    names = list(models) if models is not None else registry.list_models(variants=False)
    return [cell for dataset, combos in (grid or CI_GRID).items()
            for cell in build_grid(names, dataset, list(combos), None, CI_PROFILE)]


def run_cells(cells: list[RunConfig], store_path: Path, jobs: int = 2,
              progress: bool = True) -> pd.DataFrame:
    """Train what ``store_path`` does not hold yet (one thread per run) and return the rows
    of ``cells``; a failed run is an error, since it has no numbers to compare."""
    from bench.execution.grid import run_grid

    options = Options("process", jobs=jobs, threads=CI_THREADS)
    with ResultStore(store_path) as store:
        run_grid(cells, store, "cpu", executor=options, progress=progress)
    rows = load_results(store_path)
    rows = rows[rows["key"].isin({c.key for c in cells})]
    bad = rows[rows["status"] != "ok"]
    if not bad.empty:
        first = bad.iloc[0]
        raise RuntimeError(f"{len(bad)} run(s) of the check grid failed, e.g. {first['model']} "
                           f"{first['dataset']} {first['combo']} seed {first['seed']}: "
                           f"{first['error']}")
    return rows


def context_rows(cells: list[RunConfig]) -> pd.DataFrame:
    """The context lines of every data set and combination of ``cells``, as rows shaped like
    a run's (model ``(majority class)`` / ``(logistic regression)``, seed 0, no parameter or
    FLOP count), so ``check``
    guards them like any model's numbers: the logistic regression's can move with the
    scikit-learn version, which the tables name beside them."""
    out = []
    for (dataset, combo), cell in {(c.dataset, c.combo): c for c in cells}.items():
        scores = context_scores(cell.dataset, cell.data_options, cell.split_seed, combo)
        n_test = int(load_data(cell.dataset, cell.data_options, cell.split_seed)
                     .restrict(combo).splits["test"].numel())
        for line in CONTEXT:
            out.append({"model": f"({line})", "dataset": dataset, "combo": combo, "seed": 0,
                        "key": f"context {combo}", "best_epoch": 0, "n_test": n_test,
                        **{column("test", m): v for m, v in scores[line].items()}})
    return pd.DataFrame(out)


@dataclass(frozen=True)
class Comparison:
    """One compared quantity: ``run`` names it, ``rule`` says how it was judged."""

    run: str
    quantity: str
    reference: Any
    now: Any
    delta: float | None
    rule: str
    ok: bool


def _line_key(dataset: str, line: dict[str, Any]) -> tuple[str, str, str, int]:
    return dataset, line["model"], line["combo"], int(line["seed"])


def _name(key: tuple[str, str, str, int] | tuple[str, str, str]) -> str:
    return " ".join(str(k) if i < 3 else f"seed {k}" for i, k in enumerate(key))


def _delta(a: Any, b: Any) -> float | None:
    return None if a is None or b is None else float(b) - float(a)


def _equal(a: Any, b: Any, tol: float = 0.0) -> bool:
    if a is None or b is None:
        return a is None and b is None
    return abs(float(a) - float(b)) <= tol


def compare(refs: dict[str, Reference], rows: pd.DataFrame,
            env: dict[str, Any] | None = None) -> tuple[list[Comparison], bool]:
    """Every comparison of ``rows`` (the check grid now) with ``refs``, and whether the
    environments match. Runs on only one side are failures that say to update."""
    env = env or environment()
    now = {_line_key(d, line): line for d, lines in lines_of(rows).items() for line in lines}
    out: list[Comparison] = []
    same_env = True
    grouped: dict[tuple[str, str, str], list[tuple[dict, dict]]] = {}
    update_hint = "run `python run_bench.py check --update` and commit results/reference/"
    for dataset in sorted(set(refs) | {k[0] for k in now}):
        ref = refs.get(dataset)
        if ref is None:
            out.append(Comparison(dataset, "reference file", None, "missing", None,
                                  update_hint, False))
            continue
        same = all(ref.environment.get(k) == env.get(k) for k in ENVIRONMENT_MATCH)
        same_env = same_env and same
        ref_lines = {_line_key(dataset, line): line for line in ref.lines}
        for key in sorted(set(ref_lines) | {k for k in now if k[0] == dataset}):
            old, new = ref_lines.get(key), now.get(key)
            if old is None or new is None:
                why = ("not in the reference" if old is None
                       else "in the reference, not in the check grid (model or combination "
                            "removed?)")
                out.append(Comparison(_name(key), "run", "missing" if old is None else "present",
                                      "present" if old is None else "missing", None,
                                      f"{why}: {update_hint}", False))
                continue
            if old["key"] != new["key"]:
                out.append(Comparison(_name(key), "configuration (run key)", old["key"][:12],
                                      new["key"][:12], None, "equal: a setting, the data or "
                                      "the key's version changed", False))
            for field in EXACT:
                out.append(Comparison(_name(key), field, old[field], new[field],
                                      _delta(old[field], new[field]), "equal",
                                      _equal(old[field], new[field])))
            if same:
                for field in (*METRICS, "best_epoch"):
                    out.append(Comparison(
                        _name(key), field, old[field], new[field], _delta(old[field], new[field]),
                        f"same environment: |Δ| ≤ {SAME_ENVIRONMENT_TOL:g}",
                        _equal(old[field], new[field], SAME_ENVIRONMENT_TOL)))
            else:
                grouped.setdefault(key[:3], []).append((old, new))
    for run, pairs in sorted(grouped.items()):
        out += _mean_comparisons(run, pairs)
    return out, same_env


def _mean_comparisons(run: tuple[str, str, str],
                      pairs: list[tuple[dict, dict]]) -> list[Comparison]:
    """Other environment: each metric's mean over seeds, within the seeds' own spread."""
    out = []
    n_test = max(int(old["n_test"]) for old, _ in pairs)
    for field in METRICS:
        olds = [old[field] for old, _ in pairs]
        news = [new[field] for _, new in pairs]
        if any(v is None for v in olds + news):
            out.append(Comparison(_name(run), f"{field} (mean)", None, None, None,
                                  "environment differs: both undefined", all(
                                      v is None for v in olds + news)))
            continue
        ref_mean, now_mean = sum(olds) / len(olds), sum(news) / len(news)
        spread = pd.Series(olds).std(ddof=1) if len(olds) > 1 else 0.0
        tol = max(1.0 / n_test, K_SIGMA * float(spread))
        out.append(Comparison(_name(run), f"{field} (mean of {len(olds)})", ref_mean, now_mean,
                              now_mean - ref_mean,
                              f"environment differs: |Δ| ≤ {tol:.4f} = max(1/{n_test}, "
                              f"{K_SIGMA:g}σ)", abs(now_mean - ref_mean) <= tol))
    return out


def render(comparisons: list[Comparison], same_env: bool, fmt: str = "text",
           env: dict[str, Any] | None = None, refs: dict[str, Reference] | None = None) -> str:
    """One table (run, quantity, reference, now, Δ, rule, verdict) and a summary line."""
    failed = [c for c in comparisons if not c.ok]
    if fmt == "json":
        return json.dumps({"ok": not failed, "same_environment": same_env,
                           "environment": env or environment(),
                           "reference_environments": {d: r.environment
                                                      for d, r in (refs or {}).items()},
                           "comparisons": [asdict(c) for c in comparisons]}, indent=1)
    table = tabulate([[c.run, c.quantity, _show(c.reference), _show(c.now),
                       "" if c.delta is None else f"{c.delta:+.3g}", c.rule,
                       "ok" if c.ok else "FAIL"] for c in comparisons],
                     headers=["run", "quantity", "reference", "now", "Δ", "rule", "verdict"],
                     tablefmt="github", disable_numparse=True)
    where = ("same environment as the reference: metrics compared exactly" if same_env else
             "environment differs from the reference (torch, device, CPU instruction set or "
             "extensions): metrics compared as means within the seeds' spread, not exactly")
    verdict = (f"check passed: {len(comparisons)} comparison(s)" if not failed else
               f"check FAILED: {len(failed)} of {len(comparisons)} comparison(s), e.g. "
               f"{failed[0].run} {failed[0].quantity}")
    return f"{table}\n\n{where}.\n{verdict}"


def _show(value: Any) -> str:
    if value is None:
        return "—"
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)


def run_check(store: Path | None = None, update_refs: bool = False, fmt: str = "text",
              jobs: int = 2, folder: Path | None = None, models: Sequence[str] | None = None,
              grid: dict[str, tuple[str, ...]] | None = None) -> tuple[str, bool]:
    """The whole command: train the grid, then update or compare. Returns (output, passed)."""
    folder = folder or reference_dir()
    refs = {} if update_refs else read_references(folder)  # a bad file fails before training
    cells = ci_cells(models, grid)
    with tempfile.TemporaryDirectory(prefix="flexmoe-bench-check-") as tmp:
        path = store or Path(tmp) / "check.sqlite"
        rows = run_cells(cells, path, jobs, progress=fmt == "text")
    rows = pd.concat([rows, context_rows(cells)], ignore_index=True)
    datasets = list(grid or CI_GRID)
    if update_refs:
        written = update(folder, rows, datasets)
        names = ", ".join(p.name for p in written) or "none (no number moved)"
        return f"reference files rewritten: {names}", True
    env = environment()
    comparisons, same_env = compare(refs, rows, env)
    return render(comparisons, same_env, fmt, env, refs), all(c.ok for c in comparisons)
