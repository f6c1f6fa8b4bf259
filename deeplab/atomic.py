"""Atomic file writes: a temp file in the target's folder, then a rename over the target.

A stage killed mid-write leaves either the old file or the new one, never half of one, so the presence of
an output (a manifest, meta.json, metrics.json, a table, a checkpoint) always means it is complete. The
temp name is unique, so two writers racing for one target never write into each other's temp file.
"""
from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path
from typing import IO, Any, Iterator


@contextlib.contextmanager
def replacing(path: str | Path, mode: str = "w", *, fsync: bool = False, suffix: str = ".tmp") -> Iterator[IO[Any]]:
    """Yield a file open on a temp name beside ``path``; when the block ends without error, it replaces
    ``path`` (mode 0644, parent folders created). On error the temp file is removed and ``path`` untouched.
    ``fsync`` flushes the data to disk before the rename (checkpoints); ``suffix`` keeps a file type."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=path.parent)
    try:
        with os.fdopen(handle, mode) as f:
            yield f
            if fsync:
                f.flush()
                os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; outputs are ordinary files
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def remove_leftovers(path: str | Path) -> list[Path]:
    """Delete the temp files that writers of ``path`` killed mid-write left beside it; return them. Call
    it only while no other process can be writing ``path`` (e.g. under the job's lock)."""
    path = Path(path)
    found = sorted(path.parent.glob(f".{path.name}.*")) if path.parent.is_dir() else []
    for leftover in found:
        leftover.unlink(missing_ok=True)
    return found


def write_text(path: str | Path, text: str) -> Path:
    """Replace ``path`` by ``text`` atomically (parent folders are created); return the path."""
    with replacing(path) as f:
        f.write(text)
    return Path(path)


def write_bytes(path: str | Path, data: bytes) -> Path:
    with replacing(path, "wb") as f:
        f.write(data)
    return Path(path)


def write_json(path: str | Path, doc: Any, *, indent: int = 2, sort_keys: bool = False) -> Path:
    """``doc`` as JSON (a trailing newline included), written atomically."""
    return write_text(path, json.dumps(doc, indent=indent, sort_keys=sort_keys) + "\n")
