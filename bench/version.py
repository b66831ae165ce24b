"""The version of the code that produced a result (a run's row, a prepared folder's manifest):
recorded beside it, never hashed into a key."""

from __future__ import annotations

import subprocess
from functools import lru_cache

import bench
from bench.resources import checkout_root


@lru_cache(maxsize=1)
def code_version() -> str:
    """Package version plus the git commit when run from a checkout (never the commit of
    some other repository an installed copy happens to sit in)."""
    root = checkout_root()
    if root is None:
        return bench.__version__
    try:
        out = subprocess.run(["git", "-C", str(root), "describe", "--always", "--dirty"],
                             capture_output=True, text=True, timeout=5, check=True)
        return f"{bench.__version__}+{out.stdout.strip()}"
    except (OSError, subprocess.SubprocessError):
        return bench.__version__
