"""Atomic file writes: a temp file in the target's folder, then a rename over the target.

A stage killed mid-write leaves either the old file or the new one, never half of one, so the presence of
an output (a manifest, meta.json, metrics.json, a table) always means it is complete. The temp name is
unique, so two writers racing for one target never write into each other's temp file.
"""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any


def write_text(path: str | Path, text: str) -> Path:
    """Replace ``path`` by ``text`` atomically (parent folders are created); return the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(handle, "w") as f:
            f.write(text)
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; outputs are ordinary files
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_json(path: str | Path, doc: Any, *, indent: int = 2, sort_keys: bool = False) -> Path:
    """``doc`` as JSON (a trailing newline included), written atomically."""
    return write_text(path, json.dumps(doc, indent=indent, sort_keys=sort_keys) + "\n")
