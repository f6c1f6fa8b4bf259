"""GPU slots: hand every concurrent job on one host its own GPUs, through a pool of lock files.

Workflow managers count GPUs (``resources: gpu=1``) but do not say *which* GPU a job may use, so two jobs
started together would both land on GPU 0. Here each GPU of the host has a lock file; a job takes ``count``
of them with ``fcntl.flock`` (exclusive, non-blocking, under a short pool-wide lock so several slots are
taken atomically), sets ``CUDA_VISIBLE_DEVICES`` to exactly those GPUs and replaces itself with the real
command (``exec``). The open lock files are inherited by that command, so the slots stay taken while it and
any child it forked live, and the kernel frees them when the last of them exits, even after SIGKILL: there
is no stale lock to clean up after a crash.

Where no locking is needed the command runs unchanged: on a host without GPUs (the CPU smoke preset) and
inside a SLURM job, whose GPUs the scheduler has already isolated.
"""
from __future__ import annotations

import fcntl
import os
import re
import shutil
import subprocess
import tempfile
import time
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, NoReturn, Sequence

from deeplab.errors import PipelineError

POOL_ENV = "DEEPLAB_GPUS"  # comma-separated GPU ids this host may hand out (default: all GPUs found)
LOCK_DIR_ENV = "DEEPLAB_GPU_LOCK_DIR"  # where the slot files live (default: <tmp>/deeplab-gpu-slots)


class GpuSlotError(PipelineError):
    """A job asked for GPUs this host cannot give; the message says what to change."""

    exit_code = 1


@dataclass
class Slots:
    """GPUs held by this process: ``ids`` for CUDA_VISIBLE_DEVICES, ``fds`` the open, locked slot files."""

    ids: list[str]
    fds: list[int] = field(default_factory=list)

    def release(self) -> None:
        for fd in self.fds:
            os.close(fd)  # closing the last descriptor drops the flock
        self.fds.clear()

    def __enter__(self) -> "Slots":
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def default_lock_dir(env: Mapping[str, str] = os.environ) -> Path:
    return Path(env.get(LOCK_DIR_ENV) or Path(tempfile.gettempdir()) / "deeplab-gpu-slots")


def gpu_pool(env: Mapping[str, str] = os.environ) -> list[str]:
    """The GPU ids slots are handed out from: $DEEPLAB_GPUS, else $CUDA_VISIBLE_DEVICES, else nvidia-smi."""
    for name in (POOL_ENV, "CUDA_VISIBLE_DEVICES"):
        if name in env:
            return [gpu.strip() for gpu in env[name].split(",") if gpu.strip() not in ("", "-1")]
    if shutil.which("nvidia-smi") is None:
        return []  # no NVIDIA driver: a CPU host
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=index", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=60, check=True).stdout
    except (subprocess.SubprocessError, OSError):
        return []  # driver present but no usable GPU (e.g. a container without devices)
    return [line.strip() for line in out.splitlines() if line.strip()]


def acquire(count: int, pool: Sequence[str], lock_dir: Path, poll_s: float = 2.0,
            timeout_s: float | None = None, owner: str = "") -> Slots:
    """Block until ``count`` GPUs of ``pool`` are free, take them and return them (locked)."""
    if count < 1:
        raise GpuSlotError(f"a job must ask for at least 1 GPU slot, not {count}")
    if count > len(pool):
        raise GpuSlotError(f"the job asks for {count} GPUs but this host offers {len(pool)} "
                           f"({', '.join(pool) or 'none'}; from ${POOL_ENV}, $CUDA_VISIBLE_DEVICES or "
                           f"nvidia-smi): lower the cell's `gpus` in params/cells.yaml or run it elsewhere")
    lock_dir.mkdir(parents=True, exist_ok=True)
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    while True:
        slots = _try_take(count, pool, lock_dir, owner)
        if slots is not None:
            return slots
        if deadline is not None and time.monotonic() > deadline:
            raise TimeoutError(f"no {count} free GPU slots among {', '.join(pool)} in {lock_dir} "
                               f"after {timeout_s:.0f} s")
        time.sleep(poll_s)


def _try_take(count: int, pool: Sequence[str], lock_dir: Path, owner: str) -> Slots | None:
    """One attempt: all ``count`` slots or none, under the pool-wide lock (no partial hold-and-wait)."""
    with ExitStack() as stack:
        guard = _open(lock_dir / "pool.lock")
        stack.callback(os.close, guard)
        fcntl.flock(guard, fcntl.LOCK_EX)  # held for microseconds: only while slots are probed
        slots = Slots(ids=[])
        for gpu in pool:
            fd = _open(lock_dir / f"gpu-{_safe(gpu)}.lock")
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                continue
            slots.ids.append(gpu)
            slots.fds.append(fd)
            _note_owner(fd, owner)
            if len(slots.ids) == count:
                return slots
        slots.release()
    return None


def exec_with_gpus(count: int, command: Sequence[str], env: Mapping[str, str] = os.environ,
                   lock_dir: Path | None = None, poll_s: float = 2.0) -> NoReturn:
    """Take ``count`` GPU slots, export CUDA_VISIBLE_DEVICES and replace this process by ``command``."""
    if not command:
        raise GpuSlotError("no command given to run on the GPU slots (usage: ... -- python -m ...)")
    child_env = dict(env)
    pool = [] if "SLURM_JOB_ID" in env else gpu_pool(env)  # SLURM already isolates a job's GPUs
    if pool:
        slots = acquire(count, pool, lock_dir or default_lock_dir(env), poll_s=poll_s,
                        owner=" ".join(command))
        for fd in slots.fds:
            os.set_inheritable(fd, True)  # the exec'd command keeps the locks until it exits
        child_env["CUDA_VISIBLE_DEVICES"] = ",".join(slots.ids)
    os.execvpe(command[0], list(command), child_env)


def module_command(module: str, args: Sequence[str], gpus: int, python: str) -> list[str]:
    """``python -m module args``; with several GPUs the same under torchrun on this node (one process per
    GPU; --standalone picks a free rendezvous port, so concurrent jobs do not collide)."""
    if gpus == 1:
        return [python, "-m", module, *args]
    return [python, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={gpus}",
            "-m", module, *args]


def _open(path: Path) -> int:
    try:
        return os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    except PermissionError:  # another user's slot file: flock works on a read-only descriptor too
        return os.open(path, os.O_RDONLY)


def _note_owner(fd: int, owner: str) -> None:
    """Write who holds the slot into its file, for a human looking at a busy GPU."""
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} since {time.strftime('%Y-%m-%d %H:%M:%S')}: {owner}\n".encode(), 0)
    except OSError:
        pass  # read-only descriptor: the lock is what matters, the note is a courtesy


def _safe(gpu: str) -> str:
    """A GPU id (index or UUID such as MIG-...) as a file-name part."""
    return re.sub(r"[^A-Za-z0-9_.-]", "_", gpu)
