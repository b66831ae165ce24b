"""The commands: ``run``, ``status``, ``list``, ``table``, ``perf``, ``reproduce``, ``report``,
``check``, ``prepare``, ``recover``; :mod:`bench.cli.main` runs them."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import textwrap
from pathlib import Path
from typing import Any

from bench import registry
from bench.cli.args import REPRODUCE_PROFILE, assignments, csv_list, positive
from bench.errors import UserError
from bench.execution.options import from_args
from bench.results.store import ResultStore, load_results

logger = logging.getLogger("bench")


def _settings(runs: Any) -> str:
    """The data options and training settings the runs share (or their range), for a header."""
    from bench.data.load import data_identity

    def values(series: Any) -> str:
        found = sorted({v if isinstance(v, str) else json.dumps(v, sort_keys=True)
                        for v in series})
        return "/".join(found)

    options = {k: v for opts in runs["data_options"] for k, v in data_identity(opts).items()
               if v is not None}
    data = ", ".join(f"{k}={values(o.get(k) for o in runs['data_options'])}" for k in options)
    hp = runs["hparams"]
    train = ", ".join(f"{label} {values(h.get(key) for h in hp)}" for key, label in (
        ("epochs", "epochs"), ("batch_size", "batch"), ("lr", "lr")))
    return "; ".join(p for p in (data, train) if p)


def _print_table(store_path: Path | None, metric: str, dataset: str | None = None,
                 profile: str | None = None, keys: set[str] | None = None,
                 fmt: str = "markdown", stored: Any = None,
                 data_options: dict[str, Any] | None = None) -> None:
    """Print the results table of the runs in ``store_path`` (``stored``: already loaded) of
    one data set, profile and set of data options (``bench.rendering.tables.select_runs``)."""
    from bench.rendering.context import CONTEXT, LIBRARY, context_metric
    from bench.rendering.tables import ONE_CLASS, ONE_CLASS_MARK, pivot, render, select_runs

    df = load_results(store_path) if stored is None else stored
    if keys is not None:
        df = df[df["key"].isin(keys)]
    runs, dataset, profile = select_runs(df, dataset, profile, data_options)
    seeds = sorted(runs["seed"].unique().tolist())
    table = pivot(runs, metric, context_metric(runs, metric))
    if fmt == "markdown":
        spread = "mean ± std over seeds" if len(seeds) > 1 else "seed"
        print(f"\n{metric} (%, {spread} {', '.join(map(str, seeds))}) on {dataset} "
              f"({_settings(runs)}), profile {profile}\n")
    print(render(table, fmt))
    if fmt == "markdown":
        if any(ONE_CLASS_MARK in str(v) for v in table.to_numpy().ravel()):
            print(f"\n{ONE_CLASS_MARK} {ONE_CLASS}")
        shown = [f"({line})" for line in CONTEXT if f"({line})" in table.columns]
        if shown:
            print(f"{' and '.join(shown)}: context on the same test samples "
                  f"(bench.rendering.context; {LIBRARY})")


def _executor(args: argparse.Namespace) -> Any:
    """The checked executor options; a cluster's tasks resolve the device on their node, so
    only its spelling is checked for them."""
    from bench.training.device import device_type, resolve_device

    options = from_args(args)
    device_type(args.device) if options.remote else resolve_device(args.device)
    return options


def _print_estimate(cells: list, args: argparse.Namespace, options: Any) -> None:
    from bench.execution.estimate import estimate, render

    print(render(estimate(cells, args.store, args.device, options.run_threads())))


def _detached(rows: Any, args: argparse.Namespace, command: str) -> None:
    print(f"{rows.note} (detached; {len(rows.claimed)} run(s) held by another run).\n"
          f"Collect: run_bench.py status{_store_flag(args)} takes in the runs finished so "
          f"far; running `{command}` again takes them in and trains only what is left.")


def _store_flag(args: argparse.Namespace) -> str:
    return f" --store {args.store}" if args.store is not None else ""


def cmd_run(args: argparse.Namespace) -> int:
    from bench.execution.grid import run_grid
    from bench.identity.config import build_grid

    options = _executor(args)
    models = (registry.list_models(variants=False) if args.models == "all"
              else csv_list(args.models))
    cells = build_grid(models, args.dataset,
                       csv_list(args.combos) if args.combos is not None else None, args.seeds,
                       args.profile, assignments(args.overrides, "--set"),
                       assignments(args.data_option, "--data-option"), args.split_seed,
                       args.plugin)
    if args.dry_run:
        for cell in cells:
            print(json.dumps(cell.record(), sort_keys=True))
        print()
        _print_estimate(cells, args, options)
        return 0
    with ResultStore(args.store) as store:
        logger.info("%d run(s): %s on %s, combinations %s, seeds %s, profile %s → %s",
                    len(cells), ",".join(models), cells[0].dataset,
                    ",".join(dict.fromkeys(c.combo for c in cells)),
                    ",".join(str(s) for s in dict.fromkeys(c.seed for c in cells)), args.profile,
                    store.path)
        rows = run_grid(cells, store, args.device, executor=options)
        store_path = store.path
    if options.detach:
        _detached(rows, args, "run_bench.py run …")
        return 0
    failed = sum(r["status"] != "ok" for r in rows)
    keys = {c.key for c in cells}
    claimed = len(rows.claimed)
    print(f"{len(rows)} run(s) written to {store_path}, {len(keys) - len(rows) - claimed} "
          f"already there, {claimed} claimed by another run, {failed} failed")
    stored = load_results(store_path)
    order = {c.key: i for i, c in enumerate(cells)}  # the grid's order, however runs arrived
    stored = stored[stored["key"].isin(keys)].sort_values("key", key=lambda k: k.map(order))
    if (stored["status"] == "ok").any():
        _print_table(store_path, args.metric, cells[0].dataset, args.profile, keys,
                     stored=stored)
    bad = stored[stored["status"] == "failed"]
    if not bad.empty:
        print(f"\n{len(bad)} run(s) failed:")
        for _, r in bad.iterrows():
            print(f"  {r['model']} {r['combo']} seed {r['seed']}: {r['error']}")
    return 1 if failed else 0


def cmd_status(args: argparse.Namespace) -> int:
    from bench.results.claims import status_report

    print(status_report(args.store))
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    if args.what == "datasets":
        from bench.data.load import data_settings
        from bench.data.missingness import DESCRIPTIONS

        for name in registry.list_datasets():
            options = {k: d for k, (_, d) in data_settings(name).items()}
            print(f"{name if name != 'folder' else 'folder:PATH'}")
            print(textwrap.indent(textwrap.fill(" ".join(registry.dataset_doc(name).split()),
                                                88), "    "))
            print(textwrap.indent(textwrap.fill("options (--data-option): " + (", ".join(
                f"{k}={d}" for k, d in options.items()) or "none"), 88), "    "))
        print("\n" + textwrap.fill("Missingness imposed on the training split of any data "
                                   "set: --data-option missing=NAME (missing_rate=R in [0, 1), "
                                   "missing_seed=N; bench/data/missingness.py):", 92))
        for name, text in DESCRIPTIONS.items():
            print(textwrap.fill(f"{name}: {text}", 92, initial_indent="    ",
                                subsequent_indent="        "))
        print("\n" + textwrap.fill("Fewer modalities: --data-option modalities=LETTERS keeps "
                                   "only those modalities, before any imposed missingness (a "
                                   "study on a subset of a data set's modalities).", 92))
        return 0
    from bench.data.load import load_data

    data = load_data(args.dataset)
    spec = data.spec(data.letters)
    print(f"settings of a {args.profile}-profile run and parameters on {args.dataset} "
          f"{data.letters}:")
    for name in registry.list_models():
        cls = registry.model_class(name)
        doc = " ".join((cls.__doc__ or "").strip().split("\n\n")[0].split())
        hp = registry.resolve_hparams(name, spec, profile=args.profile)
        params = registry.parameter_count(name, spec, hp)
        print(textwrap.fill(f"{name}: {doc}", 92, subsequent_indent="    "))
        print(textwrap.indent(textwrap.fill(
            (f"{params:,} parameters; " if params is not None else "")
            + ", ".join(f"{k}={v}" for k, v in hp.items()), 88), "    "))
    return 0


def cmd_perf(args: argparse.Namespace) -> int:
    import torch
    from tabulate import tabulate

    from bench.training.perf import benchmark
    from bench.training.run import contention

    if not csv_list(args.models):
        raise UserError("--models is empty; name the models to time, e.g. --models flexmoe,tf")
    positive("--steps", args.steps)
    for option, value in (("--warmup", args.warmup), ("--busy", args.busy),
                          ("--whole-run", args.whole_run)):
        if value < 0:
            raise UserError(f"{option} must be 0 or more, got {value}")
    positive("--threads", args.threads)
    torch.set_num_threads(args.threads)
    results = [benchmark(m, args.dataset, args.combo, args.steps, args.warmup, args.device,
                         assignments(args.overrides, "--set"),
                         assignments(args.data_option, "--data-option"),
                         official=args.compare_official, busy=args.busy,
                         whole_run=args.whole_run)
               for m in csv_list(args.models)]
    rows = [{"model": r.model, "ms/step (median)": r.ms_per_step_median,
             "ms/step (mean)": r.ms_per_step_mean, "samples/s": r.samples_per_s,
             "s/epoch": r.s_per_epoch, "train GFLOP/step": r.train_gflop_per_step,
             "GFLOP/s": r.achieved_gflops, "of matmul peak": f"{r.fraction_of_matmul_peak:.1%}",
             "params": r.params} for r in results]
    if args.compare_official:
        for row, r in zip(rows, results):
            row["official design ms/step"] = r.official_ms_per_step_median
            row["speed-up"] = f"{r.speedup_vs_official:.1f}×"
    if args.whole_run:
        for row, r in zip(rows, results):
            row["whole run s/epoch"] = r.whole_run_s_per_epoch
            row["whole run ms/step, epochs min–max"] = (f"{min(r.whole_run_epoch_ms):.2f}–"
                                                         f"{max(r.whole_run_epoch_ms):.2f}")
            if args.compare_official:
                row["official whole run s/epoch"] = r.official_whole_run_s_per_epoch
                row["whole-run speed-up"] = f"{r.whole_run_speedup:.1f}×"
    first = results[0]
    print(f"{args.dataset} {args.combo}, batch {first.batch_size}, {first.steps} timed steps "
          f"after {args.warmup}, device {first.device}, {first.threads} thread(s), OpenMP "
          f"wait policy {first.wait_policy}, {first.busy} busy process(es) beside; dense "
          f"matmul peak {first.matmul_gflops:.1f} GFLOP/s; {first.steps_per_epoch} steps/epoch"
          + (f"; whole runs of {args.whole_run} epochs" if args.whole_run else ""))
    print(tabulate(rows, headers="keys", tablefmt="github", floatfmt=".2f"))
    for r in results:
        busy = contention({"cpu_share": r.cpu_share, "load_avg": os.getloadavg()[0]})
        if busy:
            print(f"WARNING: {r.model} was {busy}: its step time is not this machine's speed",
                  file=sys.stderr)
    return 0


def cmd_table(args: argparse.Namespace) -> int:
    from bench.data.load import canonical_dataset

    dataset = canonical_dataset(args.dataset) if args.dataset else None
    options = assignments(args.data_option, "--data-option") if args.data_option else None
    _print_table(args.store, args.metric, dataset, args.profile, None, args.format,
                 data_options=options)
    return 0


def _stored_profile(store: Path | None) -> tuple[str, str]:
    """``report`` renders what the store holds: the profile of its latest finished runs and
    a line saying so; a store without any is refused, saying what to do."""
    from bench.results.store import default_store_path

    path = default_store_path(store)
    if not path.is_file():
        raise UserError(f"no results store at {path}; train runs first (run_bench.py run, or "
                        "run_bench.py reproduce --table …), or pass --store PATH")
    runs = load_results(path)
    ok = runs[runs["status"] == "ok"]
    if ok.empty:
        raise UserError(f"the store {path} holds no finished run yet; train runs first "
                        "(run_bench.py run, or run_bench.py reproduce --table …)")
    latest = ok.sort_values("created_at").iloc[-1]["profile"]
    profiles = ok["profile"].value_counts()
    others = ", ".join(f"{n} of {p}" for p, n in profiles.items() if p != latest)
    return str(latest), (f"profile {latest}: that of the latest finished runs in {path} "
                         f"({profiles[latest]} run(s){'; also ' + others if others else ''}); "
                         "--profile picks another")


def _reproduce(args: argparse.Namespace, train: bool) -> int:
    from bench.artefacts.catalogue import select
    from bench.artefacts.reproduce import fallback_notes, plan, reproduce, train_grid
    from bench.training.device import resolve_device

    options = _executor(args) if train else None
    if args.out is not None and Path(args.out).exists() and not Path(args.out).is_dir():
        raise UserError(f"--out {args.out} is a file; name a folder for the tables, figures "
                        "and report (it is created if absent)")
    if not train:
        resolve_device(args.device)
        latest, said = _stored_profile(args.store)
        if args.profile is None:
            args.profile = latest
            print(said)
    args.profile = args.profile or REPRODUCE_PROFILE
    artefacts = select(args.table)
    overrides = assignments(args.overrides, "--set")
    data_options = assignments(args.data_option, "--data-option")
    if train and (args.dry_run or options.detach):
        plans = plan(artefacts, args.profile, args.dataset, overrides, data_options, args.seeds)
        if args.dry_run:
            _print_estimate([c for p in plans for c in p.cells], args, options)
            return 0
        with ResultStore(args.store) as store:
            rows = train_grid(plans, store, args.device, options)
        _detached(rows, args, "run_bench.py reproduce …")
        return 0
    sections, plans, out_dir = reproduce(
        artefacts, args.profile, args.store, args.out, args.dataset, overrides, data_options,
        args.seeds, args.device, options, train)
    tables = [s for s in sections if s.view is not None]
    print(f"report: {out_dir / 'report.html'} (and report.md beside it): {len(tables)} "
          f"table(s), {sum(len(s.figures) for s in sections)} figure(s), profile "
          f"{args.profile}; each table also as .md, .tex and .csv, each figure as .png, .pdf "
          f"and its data as .csv in {out_dir}")
    for section in sections:
        shown = "table" if section.view is not None else \
            ", ".join(p.name for p in section.figures) or "no figure"
        print(f"  {section.title} ({shown})" + "".join(f"\n      {n}" for n in section.notes))
    for note in fallback_notes(plans):
        print(f"\nWARNING: {note}", file=sys.stderr)
    return 0


def cmd_reproduce(args: argparse.Namespace) -> int:
    return _reproduce(args, train=True)


def cmd_recover(args: argparse.Namespace) -> int:
    from bench.results.backup import backup_path, recover
    from bench.results.store import default_store_path

    path = default_store_path(args.store)
    if not path.is_file():
        raise UserError(f"no results store at {path}; pass --store with the damaged store's path")
    if not backup_path(path).is_file():
        logger.warning("%s has no backup (%s): the store is rebuilt from the rows still readable "
                       "and the kept receipts only", path, backup_path(path))
    done = recover(path)
    print(f"{path} rebuilt: {done.total} run(s) — {done.from_backup} from its backup, "
          f"{done.salvaged} still readable in the damaged file, {done.from_receipts} from kept "
          f"receipts (a run found twice counts once). The damaged file is kept as "
          f"{done.damaged}.")
    return 0


def cmd_check(args: argparse.Namespace) -> int:
    if args.against_paper:
        from bench.artefacts.paper import against_paper, format_comparison

        print(format_comparison(against_paper(load_results(args.store)), args.format))
        return 0
    from bench.artefacts.reference import run_check

    positive("--jobs", args.jobs)
    text, passed = run_check(args.store, args.update, args.format, args.jobs)
    print(text)
    return 0 if passed else 1


def cmd_prepare(args: argparse.Namespace) -> int:
    from bench.data.prepare.summary import summary

    common = {"split_seed": args.split_seed, "val_frac": args.val_frac,
              "test_frac": args.test_frac}
    if args.family == "adni":
        from bench.data.prepare.adni import prepare_adni

        manifest = prepare_adni(args.raw, args.out, fixes=args.fix, skip=args.skip,
                                chain=args.chain, **common)
    else:
        from bench.data.prepare.mimic import prepare_mimic

        manifest = prepare_mimic(args.raw, args.out, embedder=args.embedder,
                                 note_dim=args.note_dim, lab_items=args.lab_items,
                                 min_code_count=args.min_code_count,
                                 in_hospital_deaths=args.in_hospital_deaths, **common)
    print(summary(args.family, args.out, manifest))
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    return _reproduce(args, train=False)


COMMANDS = {"run": cmd_run, "status": cmd_status, "list": cmd_list, "table": cmd_table,
            "perf": cmd_perf, "reproduce": cmd_reproduce, "report": cmd_report,
            "check": cmd_check, "prepare": cmd_prepare, "recover": cmd_recover}
