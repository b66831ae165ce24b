"""The command line's entry point (``run_bench.py``, ``flexmoe-bench``): parse, run the command
(:mod:`bench.cli.commands`), and turn what went wrong into the right answer — one line and
exit 2 for the user's input or a fault of the machine (a full disk, a damaged store), a
traceback and exit 1 for a bug, a resume hint and exit 130 for Ctrl-C."""

from __future__ import annotations

import argparse
import errno
import logging
import sqlite3
import sys
import traceback

from bench import registry
from bench.cli.args import build_parser
from bench.cli.commands import COMMANDS
from bench.errors import UserError
from bench.execution.options import MissingExtra
from bench.results.store import ResultStore, StoreError


def main(argv: list[str] | None = None) -> int:
    """Run one command line; return its exit status."""
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exc:  # --help, or an argparse error already printed in one line
        return int(exc.code or 0)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(levelname)s %(name)s: %(message)s")
    stored = _stored(args)
    try:
        for module in args.plugin:
            registry.load_plugin(module)
        return COMMANDS[args.command](args)
    except (UserError, StoreError, MissingExtra, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except (OSError, sqlite3.DatabaseError) as exc:
        message = _fault(exc, args)
        if message is None:
            raise
        print(f"error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        now = _stored(args)
        done = "" if stored is None or now is None else f"{now - stored} run(s) stored, "
        print(f"\ninterrupted: {done}nothing half-written; run the same command to resume "
              "(finished runs are skipped)", file=sys.stderr)
        return 130
    except Exception:  # a bug, not the user's input: keep the whole traceback
        traceback.print_exc()
        print("\nThis is an internal error of flexmoe-bench, not a problem with your input: "
              "please report it with the traceback above.", file=sys.stderr)
        return 1


def _fault(exc: BaseException, args: argparse.Namespace) -> str | None:
    """One line for a fault of the machine rather than of the code — a full disk, a damaged
    store — saying what to do; None for any other error (a bug: its traceback is kept)."""
    from bench.results.store import default_store_path

    path = default_store_path(getattr(args, "store", None))
    if (isinstance(exc, OSError) and exc.errno == errno.ENOSPC) or "disk is full" in str(exc):
        return (f"the disk is full ({exc}); runs already finished are stored — free some "
                "space and run the same command to resume")
    if isinstance(exc, sqlite3.DatabaseError) and "malformed" in str(exc):
        return (f"the results store {path} is damaged ({exc}); run_bench.py recover --store "
                f"{path} rebuilds it from its backup, the rows still readable and the rows "
                "kept since the backup (the damaged file is kept beside it)")
    return None


def _stored(args: argparse.Namespace) -> int | None:
    """Finished runs in the store of a command that trains (None for the others, or when
    the store cannot be read)."""
    if args.command not in ("run", "reproduce") or getattr(args, "dry_run", False):
        return None
    from bench.results.store import default_store_path

    path = default_store_path(args.store)
    if not path.is_file():
        return 0
    try:
        with ResultStore(path, readonly=True) as store:
            return len(store.done_keys())
    except (StoreError, OSError):
        return None


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
