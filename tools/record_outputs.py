"""Regenerate the command outputs shown in the README and the documentation.

An output is marked in the Markdown source by the command that printed it::

    <!-- output of: python run_bench.py run -->
    ```
    …what the command printed…
    ```
    <!-- end of output -->

``python tools/record_outputs.py`` runs each marked command once (a command shown in several
files runs once), in a fresh empty directory so that it starts from nothing, as a new user's
would, and writes what it printed to stdout between the markers; ``--check`` runs them and
exits 1 if any shown output differs, changing nothing; ``--list`` names the marked commands
and where they are. ``python run_bench.py`` runs this checkout's ``run_bench.py`` with this
interpreter. The time each command took and the environment are logged, for the prose that
states them.
"""

from __future__ import annotations

import argparse
import logging
import os
import platform
import re
import shlex
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FILES = ("README.md", "docs")
_BLOCK = re.compile(r"(<!-- output of: (?P<command>.+?) -->\n```[a-z]*\n)(?P<output>.*?)"
                    r"(```\n<!-- end of output -->)", re.S)

logger = logging.getLogger("record_outputs")


@dataclass(frozen=True)
class Shown:
    """One marked output: the file, the command and what the file shows now."""

    path: Path
    command: str
    output: str


def marked(paths: list[Path]) -> list[Shown]:
    """Every marked output in ``paths`` (Markdown files, or folders searched for them)."""
    files = sorted({f for p in paths for f in ([p] if p.is_file() else p.rglob("*.md"))})
    return [Shown(f, m["command"], m["output"]) for f in files
            for m in _BLOCK.finditer(f.read_text(encoding="utf-8"))]


def run(command: str) -> str:
    """What ``command`` prints to stdout, run in a fresh empty directory; a failing command
    is an error naming it and its last lines of stderr."""
    argv = shlex.split(command)
    if argv[:2] == ["python", "run_bench.py"]:
        argv = [sys.executable, str(ROOT / "run_bench.py"), *argv[2:]]
    with tempfile.TemporaryDirectory(prefix="record-") as where:
        start = time.perf_counter()
        done = subprocess.run(argv, cwd=where, capture_output=True, text=True)
        logger.info("%s: %.0f s, exit %d", command, time.perf_counter() - start,
                    done.returncode)
    if done.returncode != 0:
        tail = "\n".join(done.stderr.strip().splitlines()[-5:])
        raise SystemExit(f"{command!r} failed (exit {done.returncode}):\n{tail}")
    return done.stdout.strip("\n") + "\n"


def record(paths: list[Path], check: bool = False) -> list[Shown]:
    """Run every marked command once; write its output into each file that shows it (with
    ``check``: change nothing). Returns the outputs that differed from what was shown."""
    shown = marked(paths)
    printed = {command: run(command) for command in dict.fromkeys(s.command for s in shown)}
    stale = [s for s in shown if s.output != printed[s.command]]
    if not check:
        for path in dict.fromkeys(s.path for s in stale):
            text = path.read_text(encoding="utf-8")
            text = _BLOCK.sub(lambda m: m[1] + printed[m["command"]] + m[4], text)
            path.write_text(text, encoding="utf-8")
    return stale


def _cpu() -> str:
    """The CPU's model name and core count, for the prose beside a recorded output."""
    try:
        names = [line.split(":", 1)[1].strip() for line in
                 Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("model name")]
    except OSError:
        names = []
    return f"{names[0] if names else platform.processor() or 'unknown CPU'}, {os.cpu_count()} cores"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("paths", nargs="*", type=Path,
                        help="Markdown files or folders (default: README.md and docs/)")
    parser.add_argument("--check", action="store_true",
                        help="exit 1 if a shown output differs; change nothing")
    parser.add_argument("--list", action="store_true", help="list the marked commands")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    paths = args.paths or [ROOT / f for f in FILES]
    if args.list:
        for s in marked(paths):
            print(f"{s.path}: {s.command}")
        return 0
    logger.info("Python %s on %s, %s", platform.python_version(), platform.machine(), _cpu())
    stale = record(paths, args.check)
    for s in stale:
        print(f"{s.path}: the output of {s.command!r} "
              + ("differs from what it prints now" if args.check else "re-recorded"))
    return 1 if args.check and stale else 0


if __name__ == "__main__":
    sys.exit(main())
