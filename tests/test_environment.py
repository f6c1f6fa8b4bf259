"""The environment on record: the lock file agrees with pyproject.toml, and a run's environment fields."""
from __future__ import annotations

import json
from pathlib import Path

import torch

from deeplab.environment import describe, freeze, lock_drift, lock_state, summary
from tests.train_fixtures import ROOT

REFRESH = "make lock (uv pip compile ...) and commit requirements.lock"


def test_the_lock_satisfies_every_requirement_of_pyproject() -> None:
    """Drift check, offline: each direct dependency (and the dev extra) is pinned in requirements.lock to a
    version its specifier allows. Editing pyproject.toml without refreshing the lock fails here."""
    problems = lock_drift((ROOT / "pyproject.toml").read_text(), (ROOT / "requirements.lock").read_text())
    assert not problems, f"requirements.lock disagrees with pyproject.toml: {problems}; run {REFRESH}"


def test_the_drift_check_catches_a_stale_lock() -> None:
    pyproject, lock = (ROOT / "pyproject.toml").read_text(), (ROOT / "requirements.lock").read_text()
    assert lock_drift(pyproject.replace('"mlflow==3.17.2"', '"mlflow==3.18.0"'), lock) == \
        ["mlflow==3.18.0 (locked: 3.17.2)"]
    assert lock_drift(pyproject.replace('"pandas>=2",', '"pandas>=2",\n    "no-such-package>=1",'), lock) == \
        ["no-such-package>=1 (locked: absent)"]


def test_installed_packages_are_compared_with_the_lock(tmp_path: Path) -> None:
    lock = tmp_path / "requirements.lock"
    lock.write_text(f"torch=={torch.__version__.split('+')[0]} \\\n    --hash=sha256:00\nnot-installed-pkg==1.0\n")
    state = lock_state(lock)
    assert state["lock_matches"] is False and state["lock_mismatches"] == [
        "not-installed-pkg: locked 1.0, installed none"]
    lock.write_text(f"torch=={torch.__version__.split('+')[0]}\n")
    assert lock_state(lock)["lock_matches"] is True and len(lock_state(lock)["lock_sha256"]) == 64
    assert f"\ntorch=={torch.__version__.split('+')[0]}" in freeze()


def test_a_cpu_run_names_every_field_and_says_there_is_no_gpu() -> None:
    env = describe(torch.device("cpu"), ROOT / "requirements.lock")
    assert {"python", "torch", "torchvision", "cuda", "cudnn", "nccl", "device", "device_count", "gpu_name",
            "gpu_memory_gib", "gpu_driver", "cpu", "cpu_cores", "lock_sha256", "lock_matches"} <= set(env)
    assert env["device"] == "cpu" and env["device_count"] == 0
    assert env["gpu_name"] is None and env["gpu_driver"] is None and env["cudnn"] is None  # explicit, not missing
    assert env["torch"] == torch.__version__ and env["cpu_cores"] > 0
    assert summary(env).startswith(f"{env['cpu_cores']}-core CPU") and f"torch {torch.__version__}" in summary(env)
    json.dumps(env)  # JSON-ready
