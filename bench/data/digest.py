"""Content digests of data read from files, part of every run's identity.

A run's key must change when one byte of its input changes, and must not change when the
same files are reached by another path. Size and modification time can stay equal while the
content changes, so the bytes are hashed — once per process per file version (the cache
key is the resolved path with its size, modification time and inode).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable
from functools import lru_cache
from pathlib import Path

_CHUNK = 1 << 20


@lru_cache(maxsize=1024)
def _file_sha256(path: str, size: int, mtime_ns: int, inode: int) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def file_digest(path: str | Path) -> str:
    """SHA-256 of one file's bytes (hex)."""
    p = Path(path).resolve()
    st = os.stat(p)
    return _file_sha256(str(p), st.st_size, st.st_mtime_ns, st.st_ino)


def files_digest(files: Iterable[tuple[str, str | Path]]) -> str:
    """One short digest of several files, each given as ``(name, path)``: the names (relative,
    so the folder's location does not matter) and every file's bytes."""
    h = hashlib.sha256()
    for name, path in sorted((str(n), p) for n, p in files):
        h.update(f"{name}\0{file_digest(path)}\n".encode())
    return h.hexdigest()[:16]
