"""Helpers for the DAG tests: a temporary copy of the checkout, the tools run inside it, the processes they start."""
from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent  # the venv running the tests: snakemake, dvc and python live here
GIT_ENV = {"GIT_AUTHOR_NAME": "test", "GIT_AUTHOR_EMAIL": "test@example.invalid",
           "GIT_COMMITTER_NAME": "test", "GIT_COMMITTER_EMAIL": "test@example.invalid"}


def copy_checkout(dest: Path) -> Path:
    """The files git tracks (as they are in the working tree) copied to ``dest``, committed in a fresh git
    repository there: what a clean clone sees, without .venv, data/, results of earlier runs or .dvc/cache."""
    listed = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True).stdout
    for name in filter(None, listed.decode().split("\0")):
        source = ROOT / name
        if source.is_file():  # skip tracked files deleted in the working tree
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, dest / name)
    env = {**os.environ, **GIT_ENV}
    for command in (["git", "init", "-q"], ["git", "add", "-A"], ["git", "commit", "-q", "-m", "snapshot"]):
        subprocess.run(command, cwd=dest, env=env, check=True, capture_output=True)
    return dest


def tool_env(**extra: str) -> dict[str, str]:
    """The environment for snakemake / dvc: the venv first on PATH (dvc.yaml calls plain `python`)."""
    env = {**os.environ, **GIT_ENV, **extra}
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    env.pop("CUDA_VISIBLE_DEVICES", None)
    return env


def alive(pid: int) -> bool:
    """Whether process ``pid`` still runs: a zombie (exited, not yet reaped, as a daemon is in a container
    with no init reaping it) counts as gone."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, IndexError):
        return False


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now, for a server a test starts."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def run_tool(args: list[str], cwd: Path, timeout: float, **extra_env: str) -> subprocess.CompletedProcess[str]:
    """Run ``args`` (first item a venv tool name) in ``cwd``; on failure the error shows its output."""
    result = subprocess.run([str(BIN / args[0]), *args[1:]], cwd=cwd, env=tool_env(**extra_env), text=True,
                            capture_output=True, timeout=timeout)
    if result.returncode != 0:
        raise AssertionError(f"{' '.join(args)} failed ({result.returncode}) in {cwd}:\n"
                             f"{result.stdout[-6000:]}\n{result.stderr[-6000:]}")
    return result
