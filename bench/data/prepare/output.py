"""The prepared folder: reusable step results, a manifest, and a placement a kill cannot half-do.

Why each piece:

* **Step cache.** Each step (labels, clinical, genomic, …) writes into
  ``OUT/.prepare-cache/<step>-<key>/``, keyed by the digests of its raw inputs, its options
  and :data:`VERSION`. A second ``prepare`` on the same download reuses every step whose
  key is unchanged (the PLINK merge and the note embedding take minutes to hours).
* **Placement.** The loaders accept a folder only when its label file exists. Placement
  first removes the label file and the manifest, then puts every other file in place
  (each written to a temporary name and renamed), then the manifest, then the label file
  last: a ``prepare`` killed at any point leaves a folder no loader accepts, never one
  that mixes two preparations.
* **Manifest.** ``OUT/manifest.json`` lists the raw inputs (size, SHA-256), the options,
  the library and tool versions, the split, the outputs (size, SHA-256) and the data
  digest that every run on this folder stores, so a run's key leads back to the download.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import platform
import shutil
from collections.abc import Callable, Iterable
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

from bench.data import official
from bench.data.digest import file_digest, files_digest
from bench.errors import UserError

logger = logging.getLogger(__name__)

#: Bumped when a step's output for the same inputs and options changes (invalidates caches).
VERSION = 1
CACHE = ".prepare-cache"
MANIFEST = "manifest.json"


def _describe(name: str, path: Path) -> dict[str, Any]:
    return {"path": name, "size": path.stat().st_size, "sha256": file_digest(path)}


def describe_inputs(raw: Path, paths: Iterable[Path]) -> list[dict[str, Any]]:
    """Each raw input as ``{"path", "size", "sha256"}`` (path relative to ``raw``)."""
    return [_describe(str(p.relative_to(raw)) if p.is_relative_to(raw) else p.name, p)
            for p in sorted(set(paths))]


def library_versions(names: Iterable[str]) -> dict[str, str]:
    """Installed versions of the named distributions (absent ones left out)."""
    found = {"python": platform.python_version()}
    for name in names:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return found


class Workspace:
    """One ``prepare`` of data set ``family`` into ``out``: its step cache and its final
    placement. The prepare owns the loader's files (``official.FILES[family]``) and
    ``extra`` files: one of them not produced this time is removed."""

    def __init__(self, out: Path, family: str, label_file: str,
                 extra: Iterable[str] = ()) -> None:
        if out.exists() and not out.is_dir():
            raise UserError(f"--out {out} exists and is not a folder; name a folder "
                            "(it is created if absent)")
        self.out = out
        self.cache = out / CACHE
        self.cache.mkdir(parents=True, exist_ok=True)
        self.family = family
        self.managed = official.FILES[family] + tuple(extra)
        self.label_file = label_file
        self.used: list[str] = []
        self.reused: list[str] = []

    def step(self, name: str, key: dict[str, Any], build: Callable[[Path], None]) -> Path:
        """The folder of step ``name`` for ``key``: reused when complete, else built by
        ``build(folder)`` into a partial folder that becomes the entry only when it returns."""
        text = json.dumps({"step": name, "version": VERSION, **key}, sort_keys=True,
                          default=str)
        entry = self.cache / f"{name}-{hashlib.sha256(text.encode()).hexdigest()[:16]}"
        self.used.append(entry.name)
        if (entry / ".complete").is_file():
            logger.info("%s: reusing %s", name, entry.relative_to(self.out))
            self.reused.append(name)
            return entry
        partial = self.cache / f".{entry.name}.partial-{os.getpid()}"
        shutil.rmtree(partial, ignore_errors=True)
        partial.mkdir()
        build(partial)
        (partial / ".complete").write_text(text)
        shutil.rmtree(entry, ignore_errors=True)
        partial.rename(entry)
        return entry

    def place(self, files: dict[str, Path], manifest: dict[str, Any]) -> dict[str, Any]:
        """Put ``files`` (name in the folder → built file) in place, label file last; write
        the manifest with the outputs' digests and the data digest the loader will compute
        (``official.content_digest``, here from the built files); drop cache entries this
        run did not use."""
        if self.label_file not in files:
            raise ValueError(f"internal: the outputs lack {self.label_file}")
        for name in (self.label_file, MANIFEST):
            (self.out / name).unlink(missing_ok=True)
        for name in self.managed:
            if name not in files and (self.out / name).is_file():
                logger.info("removing %s (not produced by this preparation)", name)
                (self.out / name).unlink()
        manifest["outputs"] = [_describe(name, src) for name, src in sorted(files.items())]
        manifest["data_digest"] = files_digest((n, p) for n, p in files.items()
                                               if n in official.FILES[self.family])
        for name in [n for n in files if n != self.label_file]:
            _link_atomic(files[name], self.out / name)
        _write_atomic(self.out / MANIFEST, json.dumps(manifest, indent=2) + "\n")
        _link_atomic(files[self.label_file], self.out / self.label_file)
        for entry in self.cache.iterdir():
            if entry.name not in self.used:
                shutil.rmtree(entry, ignore_errors=True)
        return manifest


def stamp() -> str:
    """The current UTC time, to the second, for the manifest."""
    return datetime.now(timezone.utc).replace(microsecond=0).isoformat()


def _link_atomic(source: Path, target: Path) -> None:
    """``target`` becomes a hard link to ``source`` (a copy across file systems), never a
    half-written file."""
    target.parent.mkdir(parents=True, exist_ok=True)
    if target.exists() and os.path.samefile(source, target):
        return  # rename() between two links of one file would do nothing
    tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}")
    tmp.unlink(missing_ok=True)
    try:
        os.link(source, tmp)
    except OSError:
        shutil.copyfile(source, tmp)
    os.replace(tmp, target)


def _write_atomic(target: Path, text: str) -> None:
    tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, target)
