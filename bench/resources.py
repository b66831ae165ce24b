"""Where the files shipped with the suite live: the checkout's folders or the installed copy.

The repository keeps its shipped data at the top level — ``datasets/`` (the ``mfeat`` CSVs
and the data cards) and ``results/paper/`` (the paper's published numbers). A wheel maps them
into the package as ``bench/_shipped/datasets`` and ``bench/_shipped/paper``
(``[tool.setuptools.package-dir]`` in ``pyproject.toml``). :func:`shipped` returns the
checkout's folder when ``bench`` is imported from a checkout (a clone, an editable install)
and the installed package's copy otherwise.
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

#: name → (folder in the checkout, relative to its root; folder inside the installed package).
SHIPPED = {"datasets": ("datasets", "_shipped/datasets"),
           "paper": ("results/paper", "_shipped/paper")}


def checkout_root() -> Path | None:
    """The repository root when ``bench`` is imported from a checkout, else None.

    A checkout is recognised by its ``pyproject.toml`` beside ``bench/``: a bare
    ``datasets/`` folder beside an installed ``bench`` is some other package's (e.g. the
    ``datasets`` library in site-packages).
    """
    root = Path(__file__).resolve().parents[1]
    return root if (root / "pyproject.toml").is_file() else None


def shipped(name: str) -> Path:
    """The folder of the shipped resource ``name`` ("datasets" or "paper")."""
    in_checkout, in_package = SHIPPED[name]
    root = checkout_root()
    if root is not None and (root / in_checkout).is_dir():
        return root / in_checkout
    # An installed wheel is unpacked on disk, so the resource is a real directory.
    return Path(str(files("bench").joinpath(*in_package.split("/"))))
