"""Does a run's step slow as the run goes on, or does the machine slow under it?

Trains one run as ``run`` trains it (``fit``: the profile's settings, a validation pass after
every epoch) and, after every epoch, times ``--steps`` training steps of a fresh copy of the
run's initial weights with its own Adam, in the same process: a reference that meets the
machine's speed of that moment and none of the run's state (its trained weights and routing,
its optimiser state, what its evaluation passes left in memory). The ratio of each epoch's
median step to the reference after it separates the two: a run that slows by itself shows a
ratio that grows; a machine whose speed wanders moves both alike. On a 2-core CPU shared with
other virtual machines a step's speed wanders by several percent over minutes, so a ``perf``
taken before a run is a weaker yardstick for its late epochs than this reference::

    python tools/epoch_reference.py --epochs 20                 # Flex-MoE, synthetic-adni IGCB

The reference's steps draw shuffled batches from their own generator; they add about
``--steps`` steps to every epoch's wall time but to none of the run's step times.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
from pathlib import Path

import torch
from tabulate import tabulate

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import registry  # noqa: E402
from bench.cli.args import assignments  # noqa: E402
from bench.data.core import RunData  # noqa: E402
from bench.data.load import load_data  # noqa: E402
from bench.identity.config import build_grid  # noqa: E402
from bench.training.train import (  # noqa: E402
    class_weight,
    fit,
    make_adam,
    seed_everything,
    train_step,
)

#: Untimed steps of each reference before its timed ones.
REFERENCE_WARMUP = 5


def reference_ms(initial: torch.nn.Module, data: RunData, hp: dict, steps: int,
                 generator: torch.Generator) -> float:
    """Median ms of ``steps`` training steps of a fresh copy of ``initial``, each timed as
    ``fit`` times a run's step (its loss weighted as the run's, the batch fetch outside the
    timing; ``perf``'s step includes the fetch)."""
    model = copy.deepcopy(initial).train()
    optimizer = make_adam(model, hp["lr"], hp.get("weight_decay", 0.0))
    weight = class_weight(data)
    times: list[float] = []
    while len(times) < steps + REFERENCE_WARMUP:
        for batch in data.batches("train", hp["batch_size"], "shuffle", generator):
            start = time.perf_counter()
            train_step(model, batch, optimizer, weight)
            times.append((time.perf_counter() - start) * 1e3)
            if len(times) == steps + REFERENCE_WARMUP:
                break
    return statistics.median(times[REFERENCE_WARMUP:])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="flexmoe")
    parser.add_argument("--dataset", default="synthetic-adni")
    parser.add_argument("--combo", default="IGCB")
    parser.add_argument("--profile", default="paper")
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    parser.add_argument("--steps", type=int, default=50,
                        help="timed reference steps after each epoch (default 50)")
    parser.add_argument("--data-option", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    cell = build_grid([args.model], args.dataset, [args.combo], [args.seed], args.profile,
                      {"epochs": args.epochs}, assignments(args.data_option, "--data-option"))[0]
    data = load_data(cell.dataset, cell.data_options, cell.split_seed).restrict(cell.combo)
    hp, _ = registry.split_hparams(cell.hparams)
    seed_everything(cell.seed)
    model = registry.build_model(cell.model, data.spec, cell.hparams)
    initial = copy.deepcopy(model)
    generator = torch.Generator().manual_seed(cell.seed + 1)
    before = reference_ms(initial, data, hp, args.steps, generator)
    after_epoch: list[float] = []
    result = fit(model, data, seed=cell.seed, **hp, on_epoch=lambda _: after_epoch.append(
        reference_ms(initial, data, hp, args.steps, generator)))
    ratios = [run / ref for run, ref in zip(result.epoch_ms_median, after_epoch)]
    print(f"{cell.model} on {cell.dataset} {cell.combo}, profile {args.profile}, "
          f"{args.epochs} epochs, {torch.get_num_threads()} thread(s); reference: "
          f"{args.steps} steps of the initial weights, {before:.2f} ms before training")
    print(tabulate(list(zip(range(args.epochs), result.epoch_ms_median, after_epoch, ratios)),
                   headers=("epoch", "run ms/step", "reference ms/step", "run / reference"),
                   tablefmt="github", floatfmt=("", ".2f", ".2f", ".3f")))
    print(f"run / reference: {min(ratios):.3f}–{max(ratios):.3f}; run against the reference "
          f"before training: {min(result.epoch_ms_median) / before:.3f}–"
          f"{max(result.epoch_ms_median) / before:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
