"""Command line: ``run``, ``status``, ``list``, ``table``, ``perf``, ``reproduce``,
``report`` (``run_bench.py``, ``flexmoe-bench``)."""

from __future__ import annotations

import argparse
import json
import logging
import sys
import textwrap
from pathlib import Path
from typing import Any

from bench import registry
from bench.execution import add_arguments as add_executor_arguments
from bench.execution import from_args
from bench.profiles import PROFILES
from bench.store import DEFAULT_STORE, ResultStore, StoreError, load_results

logger = logging.getLogger("bench")


def _csv(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


def _seeds(text: str) -> list[int]:
    try:
        return [int(s) for s in _csv(text)]
    except ValueError:
        raise argparse.ArgumentTypeError(f"seeds must be integers separated by commas, "
                                         f"got {text!r}") from None


def _assignments(items: list[str], option: str) -> dict[str, Any]:
    """``key=value`` pairs; values parsed as JSON when they can be (numbers, true, lists)."""
    out: dict[str, Any] = {}
    for item in items:
        if "=" not in item:
            raise ValueError(f"{option} expects KEY=VALUE, got {item!r}")
        key, value = item.split("=", 1)
        try:
            out[key.strip()] = json.loads(value)
        except json.JSONDecodeError:
            out[key.strip()] = value
    return out


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors, like every other configuration error here."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"error: {message} (see {self.prog} --help)\n")


def _positive(option: str, value: int) -> None:
    if value < 1:
        raise ValueError(f"{option} must be at least 1, got {value}")


def _parser() -> argparse.ArgumentParser:
    common = _Parser(add_help=False)
    common.add_argument("--plugin", action="append", default=[], metavar="MODULE",
                        help="import MODULE first so the models it registers join (repeatable)")
    common.add_argument("-v", "--verbose", action="count", default=0,
                        help="more log output (per-epoch lines)")
    store = _Parser(add_help=False)
    store.add_argument("--store", type=Path, default=None,
                       help=f"results store (default: $FLEXMOE_BENCH_STORE or ./{DEFAULT_STORE})")
    execution = _Parser(add_help=False)
    add_executor_arguments(execution)

    parser = _Parser(
        prog="flexmoe-bench", description="Flex-MoE and multimodal baselines under missing "
        "modalities: train grids, store results, render tables.")
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", parents=[common, store, execution],
                         help="train a grid of runs",
                         description="Train models × combinations × seeds on one data set. "
                         "Finished runs in the store are skipped; each run is written when it "
                         "finishes.")
    run.add_argument("--models", default="all",
                     help="comma-separated model names, or 'all' (default: every model but the "
                     "ablation variants)")
    run.add_argument("--dataset", default="synthetic-adni",
                     help="data set name or folder:PATH (default: synthetic-adni)")
    run.add_argument("--combos", default=None,
                     help="comma-separated modality combinations, e.g. IG,IGCB (default: the "
                     "profile's: quick → the full set, paper → every combination of two or "
                     "more)")
    run.add_argument("--seeds", type=_seeds, default=None,
                     help="comma-separated seeds (default: quick 0, paper 0,1,2)")
    run.add_argument("--profile", choices=sorted(PROFILES), default="quick",
                     help="; ".join(f"{p.name}: {p.describe()}" for p in PROFILES.values())
                     + " (default: quick)")
    run.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                     help="override a hyper-parameter of every model, e.g. lr=0.001 (repeatable)")
    run.add_argument("--data-option", action="append", default=[], metavar="KEY=VALUE",
                     help="data set option, e.g. scale=2 or missing=mcar (repeatable)")
    run.add_argument("--split-seed", type=int, default=0, help="seed of the train/val/test split")
    run.add_argument("--device", default="auto", help="auto (default), cpu, cuda or cuda:N")
    run.add_argument("--metric", default="test_acc", help="metric of the table printed at the end")
    run.add_argument("--dry-run", action="store_true",
                     help="print each run's configuration (one JSON line each) and the cost "
                     "estimate of the runs not yet stored; train nothing")

    sub.add_parser("status", parents=[common, store], help="what the store holds, per grid",
                   description="Per grid (model × data set × profile): runs done, running "
                   "(with the coordinator holding each, host:pid), failed (with the first line "
                   "of the error) and training time spent. Pending runs are not shown: they "
                   "depend on the grid asked for. Reads the store read-only, except that "
                   "receipts of finished runs waiting beside it (e.g. of a detached job) are "
                   "taken in first.")

    lst = sub.add_parser("list", parents=[common], help="list registered models or data sets",
                         description="List registered models (with their default settings) or "
                         "data sets (with their data cards).")
    lst.add_argument("what", choices=["models", "datasets"])
    lst.add_argument("--dataset", default="synthetic-adni",
                     help="data set whose defaults 'list models' shows")

    perf = sub.add_parser("perf", parents=[common], help="measure training speed",
                          description="Train each model for a fixed number of steps at its "
                          "paper hyper-parameters and report samples/s, ms per step, time per "
                          "epoch, training FLOPs per step and the achieved fraction of this "
                          "machine's dense-matmul FLOP rate (measured in the same run).")
    perf.add_argument("--models", default="flexmoe", help="comma-separated (default: flexmoe)")
    perf.add_argument("--dataset", default="synthetic-adni", help="default: synthetic-adni")
    perf.add_argument("--combo", default="IGCB", help="modality combination (default: IGCB)")
    perf.add_argument("--steps", type=int, default=200, help="timed steps (default 200)")
    perf.add_argument("--warmup", type=int, default=20, help="untimed steps first (default 20)")
    perf.add_argument("--compare-official", action="store_true",
                      help="also time the released code's design (per-sample DataLoader with "
                      "worker processes, MoE per modality, FastMoE's fused expert step) on the "
                      "same weights; Flex-MoE models only")
    perf.add_argument("--threads", type=int, default=None,
                      help="torch CPU threads (default: torch's choice)")
    perf.add_argument("--device", default="auto", help="auto (default), cpu, cuda or cuda:N")
    perf.add_argument("--set", dest="overrides", action="append", default=[],
                      metavar="KEY=VALUE", help="override a hyper-parameter (repeatable)")
    perf.add_argument("--data-option", action="append", default=[], metavar="KEY=VALUE",
                      help="data set option, e.g. scale=2 (repeatable)")

    table = sub.add_parser("table", parents=[common, store], help="print a results table",
                           description="Pivot stored runs: rows = combinations, columns = "
                           "models, cells = mean ± std over seeds (percent, population std).")
    table.add_argument("--metric", default="test_acc",
                       help="test_acc (default), test_f1, test_auc, val_acc, val_f1, val_auc")
    table.add_argument("--dataset", default=None, help="data set (default: of the latest run)")
    table.add_argument("--profile", default=None, help="profile (default: of the latest run)")
    table.add_argument("--data-option", action="append", default=[], metavar="KEY=VALUE",
                       help="show the runs under these data options, the data set's "
                       "defaults filling the rest (repeatable; default: the latest run's)")
    table.add_argument("--format", choices=["markdown", "csv"], default="markdown")

    paper = _Parser(add_help=False)
    paper.add_argument("--dataset", action="append", default=[], metavar="NAME",
                       help="data set for the tables of its family (repeatable; default: adni "
                       "/ mimic when configured, else synthetic-adni / synthetic-mimic)")
    paper.add_argument("--profile", choices=sorted(PROFILES), default="smoke",
                       help="; ".join(f"{p.name}: {p.describe()}" for p in PROFILES.values())
                       + " (default: smoke, the whole report in minutes)")
    paper.add_argument("--seeds", type=_seeds, default=None, help="override the profile's seeds")
    paper.add_argument("--set", dest="overrides", action="append", default=[],
                       metavar="KEY=VALUE", help="override a hyper-parameter (repeatable)")
    paper.add_argument("--data-option", action="append", default=[], metavar="KEY=VALUE",
                       help="data set option on top of the profile's (repeatable)")
    paper.add_argument("--out", type=Path, default=None,
                       help="output directory (default: 'reproduce' beside the store)")
    paper.add_argument("--device", default="auto", help="auto (default), cpu, cuda or cuda:N")
    reproduce = sub.add_parser(
        "reproduce", parents=[common, store, paper, execution],
        help="regenerate the paper's tables",
        description="Run the grid behind each selected table or figure (resuming from the "
        "store), render the tables (Markdown, LaTeX, CSV) with the published numbers beside "
        "them, draw the figures (PNG, PDF) and write the HTML and Markdown report.")
    reproduce.add_argument("--table", required=True, metavar="N",
                           help="all, or comma-separated: 1, 2, 3, 4, 7, 8, 9, 10, fig4, fig5, "
                           "fig6, modalities, cost, robustness, mechanisms (on the --dataset "
                           "named, default mfeat)")
    reproduce.add_argument("--dry-run", action="store_true",
                           help="print the cost estimate of the runs not yet stored; train "
                           "and render nothing")
    report = sub.add_parser(
        "report", parents=[common, store, paper], help="write the HTML and Markdown report",
        description="Render the tables and figures from the store (training nothing; pass "
        "the same options as to reproduce) into one self-contained report.html and its "
        "Markdown twin report.md.")
    report.add_argument("--table", default="all", metavar="N",
                        help="which tables and figures (default: all)")

    check = sub.add_parser(
        "check", parents=[common, store], help="regression check against results/reference/",
        description="Train the ci grid (every model but the ablation variants on "
        "synthetic-adni IG, IGCB and synthetic-mimic LNC, two seeds, the ci profile, one "
        "thread per run) into a temporary store (or --store, whose finished runs are reused) "
        "and compare every run with results/reference/: counts exactly, metrics exactly in "
        "the reference's environment, else within the seeds' spread. Exit 1 on any failure.")
    check.add_argument("--update", action="store_true",
                       help="rewrite results/reference/ from this run (only lines that moved)")
    check.add_argument("--format", choices=["text", "json"], default="text")
    check.add_argument("--jobs", type=int, default=2, help="worker processes (default 2)")
    check.add_argument("--against-paper", action="store_true",
                       help="instead: compare the store's runs on the real adni / mimic data "
                       "with the paper's published numbers (results/paper/)")
    return parser


def _settings(runs: Any) -> str:
    """The data options and training settings the runs share (or their range), for a header."""
    from bench.config import LOCATION_OPTIONS

    def values(series: Any) -> str:
        found = sorted({v if isinstance(v, str) else json.dumps(v, sort_keys=True)
                        for v in series})
        return "/".join(found)

    options = {k: v for opts in runs["data_options"] for k, v in (opts or {}).items()
               if v is not None and k not in LOCATION_OPTIONS}
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
    one data set, profile and set of data options (``bench.tables.select_runs``)."""
    from bench.context import CONTEXT, context_metric
    from bench.tables import ONE_CLASS, ONE_CLASS_MARK, pivot, render, select_runs

    df = load_results(store_path) if stored is None else stored
    if keys is not None:
        df = df[df["key"].isin(keys)]
    runs, dataset, profile = select_runs(df, dataset, profile, data_options)
    seeds = sorted(runs["seed"].unique().tolist())
    table = pivot(runs, metric, context_metric(runs, metric))
    if fmt == "markdown":
        spread = "mean ± std over seeds" if len(seeds) > 1 else "seed"
        print(f"\n{metric} (%, {spread} {seeds}) on {dataset} ({_settings(runs)}), profile "
              f"{profile}\n")
    print(render(table, fmt))
    if fmt == "markdown":
        if any(ONE_CLASS_MARK in str(v) for v in table.to_numpy().ravel()):
            print(f"\n{ONE_CLASS_MARK} {ONE_CLASS}")
        shown = [f"({line})" for line in CONTEXT if f"({line})" in table.columns]
        if shown:
            print(f"{' and '.join(shown)}: context on the same test samples (bench.context)")


def _executor(args: argparse.Namespace) -> Any:
    """The checked executor options; a cluster's tasks resolve the device on their node, so
    only its spelling is checked for them."""
    from bench.runner import device_type, resolve_device

    options = from_args(args)
    device_type(args.device) if options.remote else resolve_device(args.device)
    return options


def _print_estimate(cells: list, args: argparse.Namespace, options: Any) -> None:
    from bench.estimate import estimate, render

    print(render(estimate(cells, args.store, args.device, options.run_threads())))


def _detached(rows: Any, args: argparse.Namespace, command: str) -> None:
    print(f"{rows.note} (detached; {len(rows.claimed)} run(s) held by another run).\n"
          f"Collect: run_bench.py status{_store_flag(args)} takes in the runs finished so "
          f"far; running `{command}` again takes them in and trains only what is left.")


def _store_flag(args: argparse.Namespace) -> str:
    return f" --store {args.store}" if args.store is not None else ""


def cmd_run(args: argparse.Namespace) -> int:
    from bench.config import build_grid
    from bench.runner import run_grid

    options = _executor(args)
    models = (registry.list_models(variants=False) if args.models == "all"
              else _csv(args.models))
    cells = build_grid(models, args.dataset,
                       _csv(args.combos) if args.combos is not None else None, args.seeds,
                       args.profile, _assignments(args.overrides, "--set"),
                       _assignments(args.data_option, "--data-option"), args.split_seed,
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
    from bench.claims import status_report

    print(status_report(args.store))
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    if args.what == "datasets":
        from bench.config import data_settings
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
    from bench.config import load_data

    data = load_data(args.dataset)
    spec = data.spec(data.letters)
    for name in registry.list_models():
        cls = registry.model_class(name)
        doc = (cls.__doc__ or "").strip().splitlines()[0] if cls.__doc__ else ""
        hp = registry.resolve_hparams(name, spec)
        print(f"{name}: {doc}")
        print(textwrap.indent(textwrap.fill(
            ", ".join(f"{k}={v}" for k, v in hp.items()), 88), "    "))
    return 0


def cmd_perf(args: argparse.Namespace) -> int:
    import torch
    from tabulate import tabulate

    from bench.perf import benchmark

    _positive("--steps", args.steps)
    if args.threads is not None:
        _positive("--threads", args.threads)
        torch.set_num_threads(args.threads)
    results = [benchmark(m, args.dataset, args.combo, args.steps, args.warmup, args.device,
                         _assignments(args.overrides, "--set"),
                         _assignments(args.data_option, "--data-option"),
                         official=args.compare_official)
               for m in _csv(args.models)]
    rows = [{"model": r.model, "ms/step (median)": r.ms_per_step_median,
             "ms/step (mean)": r.ms_per_step_mean, "samples/s": r.samples_per_s,
             "s/epoch": r.s_per_epoch, "train GFLOP/step": r.train_gflop_per_step,
             "GFLOP/s": r.achieved_gflops, "of matmul peak": f"{r.fraction_of_matmul_peak:.1%}",
             "params": r.params} for r in results]
    if args.compare_official:
        for row, r in zip(rows, results):
            row["official design ms/step"] = r.official_ms_per_step_median
            row["speed-up"] = f"{r.speedup_vs_official:.1f}×"
    first = results[0]
    print(f"{args.dataset} {args.combo}, batch {first.batch_size}, {first.steps} timed steps "
          f"after {args.warmup}, device {first.device}, {first.threads} thread(s); dense "
          f"matmul peak {first.matmul_gflops:.1f} GFLOP/s; {first.steps_per_epoch} steps/epoch")
    print(tabulate(rows, headers="keys", tablefmt="github", floatfmt=".2f"))
    return 0


def cmd_table(args: argparse.Namespace) -> int:
    from bench.config import canonical_dataset

    dataset = canonical_dataset(args.dataset) if args.dataset else None
    options = _assignments(args.data_option, "--data-option") if args.data_option else None
    _print_table(args.store, args.metric, dataset, args.profile, None, args.format,
                 data_options=options)
    return 0


def _reproduce(args: argparse.Namespace, train: bool) -> int:
    from bench.presets import select
    from bench.reproduce import fallback_notes, plan, reproduce, train_grid
    from bench.runner import resolve_device
    from bench.tables import to_markdown

    options = _executor(args) if train else None
    if not train:
        resolve_device(args.device)
    artefacts = select(args.table)
    overrides = _assignments(args.overrides, "--set")
    data_options = _assignments(args.data_option, "--data-option")
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
    for section in sections:
        if section.view is not None:
            print("\n" + to_markdown(section.view))
        else:
            print(f"\n{section.title}: " + (", ".join(str(p) for p in section.figures)
                                             or "no figure") + "".join(
                f"\n  - {n}" for n in section.notes))
    for note in fallback_notes(plans):
        print(f"\nWARNING: {note}", file=sys.stderr)
    print(f"\ntables, figures and report.html / report.md written to {out_dir}")
    return 0


def cmd_reproduce(args: argparse.Namespace) -> int:
    return _reproduce(args, train=True)


def cmd_check(args: argparse.Namespace) -> int:
    if args.against_paper:
        from bench.paper_check import against_paper, format_comparison

        print(format_comparison(against_paper(load_results(args.store)), args.format))
        return 0
    from bench.check import run_check

    _positive("--jobs", args.jobs)
    text, passed = run_check(args.store, args.update, args.format, args.jobs)
    print(text)
    return 0 if passed else 1


def cmd_report(args: argparse.Namespace) -> int:
    return _reproduce(args, train=False)


def main(argv: list[str] | None = None) -> int:
    try:
        args = _parser().parse_args(argv)
    except SystemExit as exc:  # --help, or an argparse error already printed in one line
        return int(exc.code or 0)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        for module in args.plugin:
            registry.load_plugin(module)
        commands = {"run": cmd_run, "status": cmd_status, "list": cmd_list, "table": cmd_table,
                    "perf": cmd_perf, "reproduce": cmd_reproduce, "report": cmd_report,
                    "check": cmd_check}
        return commands[args.command](args)
    except (KeyError, ValueError, FileNotFoundError, ImportError, StoreError) as exc:
        message = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
        print(f"error: {message}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
