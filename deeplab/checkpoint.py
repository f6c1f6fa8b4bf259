"""Resumable training state: atomic checkpoints, the config they were made with, and a folder lock.

A checkpoint holds everything a restarted job needs to continue as if never stopped: model, optimiser,
scheduler, grad scaler, RNG states (python, numpy, torch, CUDA), the iteration (which is also the data
order position: the order is a function of the iteration) and the resolved config with its digest. It is
written to a temporary name and renamed, so a kill never leaves a half checkpoint under the real name.
"""
from __future__ import annotations

import fcntl
import os
import pickle
import random
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch

from deeplab import atomic
from deeplab.errors import PipelineError


class CheckpointError(PipelineError):
    """A checkpoint cannot be used (another config, another job holds it, unreadable)."""


def atomic_save(obj: Any, path: str | Path) -> None:
    """torch.save to a temporary file in the same folder, fsync, then rename over ``path``."""
    with atomic.replacing(path, "wb", fsync=True) as f:
        torch.save(obj, f)


def load_saved(path: str | Path) -> dict[str, Any]:
    """A file this project wrote with torch.save (model.pt, a checkpoint), read with ``weights_only=True``: its
    contents are tensors and plain types, so a file that needs anything else to load (pickled code, planted in a
    shared results folder) is refused instead of run. Raises CheckpointError naming the file."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise CheckpointError(f"{path}: refused: it holds objects other than tensors and plain values, which this "
                              f"project never writes (torch.load(weights_only=True): {_unsupported(exc)}); "
                              "delete it, or retrain the run that should have written it") from exc


def _unsupported(exc: Exception) -> str:
    """The line of torch's refusal that names what the file needed (its other lines are advice)."""
    lines = [line.strip() for line in str(exc).splitlines() if "Unsupported" in line or "GLOBAL" in line]
    return lines[0] if lines else str(exc).splitlines()[0]


def rng_state() -> dict[str, Any]:
    name, keys, pos, has_gauss, cached = np.random.get_state()  # its key array as a tensor: weights_only loads it
    state = {"python": random.getstate(), "numpy": (name, torch.from_numpy(keys.copy()), pos, has_gauss, cached),
             "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: Mapping[str, Any]) -> None:
    random.setstate(state["python"])
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy(), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])


def config_differences(saved: Mapping[str, Any], current: Mapping[str, Any], prefix: str = "") -> list[str]:
    """``key.path: saved -> current`` for every leaf that differs between two plain config dicts."""
    lines = []
    for key in sorted(set(saved) | set(current)):
        a, b = saved.get(key, "<absent>"), current.get(key, "<absent>")
        if isinstance(a, Mapping) and isinstance(b, Mapping):
            lines += config_differences(a, b, f"{prefix}{key}.")
        elif a != b:
            lines.append(f"{prefix}{key}: {a!r} -> {b!r}")
    return lines


def load_checkpoint(path: str | Path, digest: str, config: Mapping[str, Any]) -> dict[str, Any]:
    """Read a checkpoint and refuse it, saying what differs, when it was made under another config."""
    path = Path(path)
    try:
        state = load_saved(path)
    except CheckpointError:
        raise
    except Exception as exc:  # a corrupt file must not be silently replaced by a fresh start
        raise CheckpointError(f"{path} cannot be read ({exc}); delete it to start this cell over") from exc
    if state.get("digest") != digest:
        differences = config_differences(state.get("config", {}), config) or ["(digest only)"]
        raise CheckpointError(
            f"{path} was made under a different resolved config; differences (checkpoint -> now):\n  "
            + "\n  ".join(differences)
            + f"\nRestore the old params to resume, or delete {path.parent} to train this cell from scratch.")
    return state


class FolderLock:
    """An exclusive ``flock`` on ``<folder>/.lock``: a second copy of the same job (e.g. an orphan left
    by a killed workflow manager) refuses to run. The OS drops the lock when the holder dies."""

    def __init__(self, folder: str | Path) -> None:
        self.path = Path(folder) / ".lock"
        self.handle: Any = None

    def __enter__(self) -> "FolderLock":
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.handle = open(self.path, "a+")
        try:
            fcntl.flock(self.handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self.handle.seek(0)
            holder = self.handle.read().strip() or "unknown"
            self.handle.close()
            raise CheckpointError(f"another training process (pid {holder}) is using {self.path.parent}; "
                                  "stop it, or wait for it to finish, before starting this job again") from None
        self.handle.seek(0)
        self.handle.truncate()
        self.handle.write(str(os.getpid()))
        self.handle.flush()
        return self

    def __exit__(self, *exc: Any) -> None:
        fcntl.flock(self.handle, fcntl.LOCK_UN)
        self.handle.close()
