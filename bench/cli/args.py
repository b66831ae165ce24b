"""The command line's options: one parser with a sub-command each (``bench.cli.main`` runs them).

Kept apart from the commands so the option surface can be read in one place.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from bench.errors import UserError
from bench.execution.options import DEFAULT_THREADS
from bench.execution.options import add_arguments as add_executor_arguments
from bench.profiles import PROFILES
from bench.rendering.tables import METRICS as TABLE_METRICS
from bench.results.store import DEFAULT_STORE

#: The profile ``reproduce`` trains without ``--profile``.
REPRODUCE_PROFILE = "smoke"


def csv_list(text: str) -> list[str]:
    """``a, b,,c`` → ``["a", "b", "c"]`` (model names, combinations)."""
    return [t.strip() for t in text.split(",") if t.strip()]


def seed_list(text: str) -> list[int]:
    """``--seeds 0,1,2``; anything else is argparse's one-line error."""
    try:
        return [int(s) for s in csv_list(text)]
    except ValueError:
        raise argparse.ArgumentTypeError(f"seeds must be integers separated by commas, "
                                         f"got {text!r}") from None


def assignments(items: list[str], option: str) -> dict[str, Any]:
    """``key=value`` pairs; values parsed as JSON when they can be (numbers, true, lists)."""
    out: dict[str, Any] = {}
    for item in items:
        if "=" not in item:
            raise UserError(f"{option} expects KEY=VALUE, got {item!r}")
        key, value = item.split("=", 1)
        try:
            out[key.strip()] = json.loads(value)
        except json.JSONDecodeError:
            out[key.strip()] = value
    return out


class Parser(argparse.ArgumentParser):
    """argparse with one-line errors, like every other configuration error here."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"error: {message} (see {self.prog} --help)\n")


def positive(option: str, value: int) -> None:
    """Refuse a count below one before anything starts."""
    if value < 1:
        raise UserError(f"{option} must be at least 1, got {value}")


def build_parser() -> argparse.ArgumentParser:
    common = Parser(add_help=False)
    common.add_argument("--plugin", action="append", default=[], metavar="MODULE",
                        help="import MODULE first so the models it registers join (repeatable)")
    common.add_argument("-v", "--verbose", action="count", default=0,
                        help="more log output (per-epoch lines)")
    store = Parser(add_help=False)
    store.add_argument("--store", type=Path, default=None,
                       help=f"results store (default: $FLEXMOE_BENCH_STORE or ./{DEFAULT_STORE})")
    execution = Parser(add_help=False)
    add_executor_arguments(execution)

    parser = Parser(
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
    run.add_argument("--seeds", type=seed_list, default=None,
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
    run.add_argument("--metric", default="test_acc", choices=TABLE_METRICS,
                     help="metric of the table printed at the end (default: test_acc)")
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
                         description="List registered models (with the settings a run of the "
                         "profile resolves to and their parameter count on the data set's full "
                         "combination) or data sets (with their data cards).")
    lst.add_argument("what", choices=["models", "datasets"])
    lst.add_argument("--dataset", default="synthetic-adni",
                     help="data set whose settings and parameter counts 'list models' shows")
    lst.add_argument("--profile", choices=sorted(PROFILES), default="quick",
                     help="profile whose resolved settings 'list models' shows (default: "
                     "quick, that of run's default)")

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
    perf.add_argument("--whole-run", type=int, default=0, metavar="EPOCHS",
                      help="then train a whole run of EPOCHS epochs from fresh weights (each "
                      "epoch's training and validation passes, the final evaluation) and "
                      "report its seconds per epoch; with --compare-official, the released "
                      "training loop's too, from the same weights (default 0: none)")
    perf.add_argument("--threads", type=int, default=DEFAULT_THREADS,
                      help=f"torch CPU threads (default {DEFAULT_THREADS}, as a run has unless "
                      "run --threads says otherwise)")
    perf.add_argument("--busy", type=int, default=0, metavar="K",
                      help="time with K processes spinning on the CPU beside the steps: a "
                      "reproducible load, to see a step as it runs on a shared machine "
                      "(default 0)")
    perf.add_argument("--device", default="auto", help="auto (default), cpu, cuda or cuda:N")
    perf.add_argument("--set", dest="overrides", action="append", default=[],
                      metavar="KEY=VALUE", help="override a hyper-parameter (repeatable)")
    perf.add_argument("--data-option", action="append", default=[], metavar="KEY=VALUE",
                      help="data set option, e.g. scale=2 (repeatable)")

    table = sub.add_parser("table", parents=[common, store], help="print a results table",
                           description="Pivot stored runs: rows = combinations, columns = "
                           "models, cells = mean ± std over seeds (percent, population std).")
    table.add_argument("--metric", default="test_acc", choices=TABLE_METRICS,
                       help="metric of the table (default: test_acc)")
    table.add_argument("--dataset", default=None, help="data set (default: of the latest run)")
    table.add_argument("--profile", default=None, help="profile (default: of the latest run)")
    table.add_argument("--data-option", action="append", default=[], metavar="KEY=VALUE",
                       help="show the runs under these data options, the data set's "
                       "defaults filling the rest (repeatable; default: the latest run's)")
    table.add_argument("--format", choices=["markdown", "csv"], default="markdown")

    paper = Parser(add_help=False)
    paper.add_argument("--dataset", action="append", default=[], metavar="NAME",
                       help="data set for the tables of its family (repeatable; default: adni "
                       "/ mimic when configured, else synthetic-adni / synthetic-mimic)")
    paper.add_argument("--profile", choices=sorted(PROFILES), default=None,
                       help="; ".join(f"{p.name}: {p.describe()}" for p in PROFILES.values())
                       + f" (default: reproduce {REPRODUCE_PROFILE}, the whole report in "
                       "minutes; report: the profile of the store's latest finished runs)")
    paper.add_argument("--seeds", type=seed_list, default=None, help="override the profile's seeds")
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

    add_prepare_arguments(sub, common)
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
    sub.add_parser(
        "recover", parents=[common, store], help="rebuild a damaged results store",
        description="Rebuild a results store whose file is damaged: the damaged file moves "
        "aside (<store>.damaged-<time>), the backup taken after the last grid (<store>.bak) "
        "becomes the store, and the rows still readable in the damaged file and the rows "
        "kept since that backup (<store>.receipts/kept/) are written back on top.")
    return parser


def add_prepare_arguments(sub: Any, common: argparse.ArgumentParser) -> None:
    """``prepare adni`` and ``prepare mimic``: raw downloads → the loaders' folders."""
    prepare = sub.add_parser(
        "prepare", parents=[common], help="turn raw ADNI / MIMIC-IV downloads into data folders",
        description="Build, from the raw downloads, the folder the adni or mimic data set "
        "reads, with a manifest (inputs' digests, options, versions) and the split. A second "
        "prepare on the same inputs reuses its finished steps; an interrupted one leaves no "
        "folder a loader accepts. See docs/prepare.md.")
    which = prepare.add_subparsers(dest="family", required=True)
    for family, raw_help in (("adni", "the folder holding the ADNI downloads (DXSUM, the "
                                      "clinical and biospecimen tables, PLINK sets, image "
                                      "outputs), searched recursively"),
                             ("mimic", "the MIMIC-IV folder holding hosp/ and note/")):
        one = which.add_parser(family, parents=[common], help=f"prepare {family}")
        one.add_argument("--raw", type=Path, required=True, help=raw_help)
        one.add_argument("--out", type=Path, required=True,
                         help="the folder to write (created; a previous preparation there is "
                         "replaced only once the new one is complete)")
        one.add_argument("--split-seed", type=int, default=0, help="seed of the split (0)")
        one.add_argument("--val-frac", type=float, default=0.15,
                         help="validation share of all participants (0.15)")
        one.add_argument("--test-frac", type=float, default=0.15,
                         help="test share of all participants (0.15)")
        if family == "adni":
            from bench.data.prepare.quirks import MODALITIES, QUIRKS

            one.add_argument("--fix", action="append", default=[], metavar="QUIRK",
                             help="correct a quirk of the released scripts (repeatable; "
                             f"'all' for every one): {', '.join(QUIRKS)}. Default: each is "
                             "reproduced")
            one.add_argument("--skip", action="append", default=[], metavar="MODALITY",
                             help=f"leave a modality out (repeatable): {', '.join(MODALITIES)}")
            one.add_argument("--chain", type=Path, default=None,
                             help="UCSC chain file to lift the SNP positions over (the "
                             "released notebook: hg18ToHg38.over.chain.gz); without it "
                             "positions stay as downloaded")
        else:
            one.add_argument("--embedder", default="tfidf",
                             help="note embedding: tfidf (TF-IDF + truncated SVD, offline; "
                             "default) or sentence-transformers:NAME_OR_PATH")
            one.add_argument("--note-dim", type=int, default=768,
                             help="dimension of the TF-IDF note embedding (768)")
            one.add_argument("--lab-items", type=int, default=50,
                             help="how many of the most frequent lab items (50)")
            one.add_argument("--min-code-count", type=int, default=5,
                             help="an ICD-9 code joins the vocabulary when this many "
                             "patients have it (5)")
            one.add_argument("--in-hospital-deaths", choices=["exclude", "keep"],
                             default="exclude", help="patients who die during their last "
                             "admission: left out (default; their label is known at "
                             "discharge) or kept with label 1")
