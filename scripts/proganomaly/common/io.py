"""Atomic file writes and checksums, the one implementation every stage uses.

A result is written beside its destination under a temporary name and renamed into place, so an interrupted job
never leaves a half-written file (or directory) where Snakemake or a later stage would take it for a finished one.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any


@contextlib.contextmanager
def atomic_path(path: str | Path, suffix: str = ".partial") -> Iterator[Path]:
    """Yield a temporary sibling path to write to; on success it replaces `path`, on error it is removed.

    Works for files and directories (a directory destination is removed only once the new one is complete).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + suffix)
    _remove(tmp)
    try:
        yield tmp
    except BaseException:
        _remove(tmp)
        raise
    if tmp.is_dir() and path.is_dir():
        shutil.rmtree(path)
    tmp.replace(path)


def write_bytes(path: str | Path, data: bytes, *, fsync: bool = False) -> None:
    """Write `data` atomically; with fsync the bytes are on disk before the rename (survives a power cut too)."""
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            fh.write(data)
            if fsync:
                fh.flush()
                os.fsync(fh.fileno())


def write_text(path: str | Path, text: str, *, fsync: bool = False) -> None:
    write_bytes(path, text.encode(), fsync=fsync)


def write_json(path: str | Path, data: Any) -> None:
    """JSON with numpy scalars/arrays and paths converted, indented, written atomically."""
    write_text(path, json.dumps(data, indent=2, default=_jsonable) + "\n")


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file, read in chunks (files may be larger than memory)."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(chunk), b""):
            digest.update(block)
    return digest.hexdigest()


def _remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


def _jsonable(obj):
    import numpy as np

    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")
