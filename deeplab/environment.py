"""Where a run ran: software and hardware, recorded with every training and evaluation.

When a cell lands below its reference, the first questions are which torch, CUDA and cuDNN computed it and
on what GPU. :func:`describe` answers them in one flat, JSON-ready dict; fields that do not apply (GPU
fields on a CPU run) are present with the value ``None``, never missing. :func:`freeze` lists every
installed distribution (``name==version``, as ``pip freeze``), and :func:`lock_state` says whether they are
the versions of the project's lock file.
"""
from __future__ import annotations

import hashlib
import importlib.metadata
import os
import platform
import re
import subprocess
from pathlib import Path
from typing import Any

import torch

LOCK_PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;\\]+)", re.MULTILINE)


def _normal(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def freeze() -> str:
    """Every installed distribution as ``name==version``, sorted (what ``pip freeze`` lists)."""
    found = {_normal(d.metadata["Name"]): d.version for d in importlib.metadata.distributions() if d.metadata["Name"]}
    return "".join(f"{name}=={version}\n" for name, version in sorted(found.items()))


def lock_state(lock: Path) -> dict[str, Any]:
    """The lock file's sha256 and whether the installed versions are the locked ones (and which are not)."""
    if not lock.is_file():
        return {"lock_sha256": None, "lock_matches": None, "lock_mismatches": ["no lock file"]}
    text = lock.read_text()
    installed = dict(line.split("==", 1) for line in freeze().splitlines())
    mismatches = [f"{name}: locked {version}, installed {installed.get(_normal(name), 'none')}"
                  for name, version in LOCK_PIN.findall(text)
                  if installed.get(_normal(name), "").split("+")[0] != version.split("+")[0]]
    return {"lock_sha256": hashlib.sha256(text.encode()).hexdigest(), "lock_matches": not mismatches,
            "lock_mismatches": mismatches[:20]}


def lock_drift(pyproject: str, lock: str) -> list[str]:
    """Each direct dependency of pyproject.toml (and its dev extra) that the lock does not pin to a version
    its specifier allows; empty when the lock is current (an offline stand-in for ``uv lock --check``)."""
    import tomllib

    from packaging.requirements import Requirement
    project = tomllib.loads(pyproject)["project"]
    pins = {_normal(name): version for name, version in LOCK_PIN.findall(lock)}
    problems = []
    for line in project["dependencies"] + project.get("optional-dependencies", {}).get("dev", []):
        requirement = Requirement(line)
        version = pins.get(_normal(requirement.name))
        if version is None or not requirement.specifier.contains(version, prereleases=True):
            problems.append(f"{requirement} (locked: {version or 'absent'})")
    return problems


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _driver() -> str | None:
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=30, check=True).stdout
        return out.splitlines()[0].strip() or None
    except (OSError, subprocess.SubprocessError, IndexError):
        return None


def describe(device: torch.device, lock: Path) -> dict[str, Any]:
    """The software and hardware of this process: versions, device, GPU, CPU and the lock's state."""
    import torchvision
    gpu = device.type == "cuda"
    properties = torch.cuda.get_device_properties(device) if gpu else None
    return {
        "python": platform.python_version(), "torch": torch.__version__, "torchvision": torchvision.__version__,
        "cuda": torch.version.cuda, "cudnn": torch.backends.cudnn.version() if gpu else None,
        "nccl": ".".join(map(str, torch.cuda.nccl.version())) if gpu else None,
        "device": device.type, "device_count": torch.cuda.device_count() if gpu else 0,
        "gpu_name": properties.name if properties else None,
        "gpu_memory_gib": round(properties.total_memory / 2**30, 1) if properties else None,
        "gpu_driver": _driver() if gpu else None,
        "cpu": _cpu_model(), "cpu_cores": os.cpu_count(), "host": platform.node(),
        **lock_state(lock),
    }


def summary(env: dict[str, Any]) -> str:
    """One line: '8x NVIDIA H100 80GB HBM3, torch 2.14.1+cu130, cuDNN 91900' or '2-core CPU, torch ...'."""
    where = (f"{env['device_count']}x {env['gpu_name']}" if env.get("gpu_name")
             else f"{env.get('cpu_cores')}-core CPU ({env.get('cpu')})")
    cudnn = f", cuDNN {env['cudnn']}" if env.get("cudnn") else ""
    return f"{where}, torch {env.get('torch')}{cudnn}"


def versions() -> dict[str, Any]:
    """The versions a checkpoint records: a resume under others is warned about (bit-equality is not promised)."""
    return {"torch": str(torch.__version__), "cuda": torch.version.cuda,  # str: TorchVersion is a class of its own
            "cudnn": torch.backends.cudnn.version() if torch.cuda.is_available() else None}


def git_state(project_root: str | Path) -> dict[str, Any]:
    """Commit of the project checkout and whether tracked files differ from it (provenance)."""
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=project_root, capture_output=True, text=True, timeout=20,
                              check=True).stdout.strip()
    try:
        return {"git_commit": git("rev-parse", "HEAD"),
                "git_dirty": bool(git("status", "--porcelain", "--untracked-files=no"))}
    except (OSError, subprocess.SubprocessError):
        return {"git_commit": "unknown (not a git checkout)", "git_dirty": None}
