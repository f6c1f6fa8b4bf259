"""Shared fixtures. Area-specific fixtures live beside their tests (tests/<area>_fixtures.py)."""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


SERVERS = {"file_server", "cityscapes_server", "silent_server"}  # fixtures that start a server on 127.0.0.1
# The modules that take longest under `make test` (fresh clone, 2 cores), longest first. The two workers take
# modules from the front of the queue, so the long ones start at once and the short ones fill the end evenly;
# in xdist's own order (by test count) the 6-minute smoke DAG could start minutes in. Re-measure with
# `PYTEST_ADDOPTS=--durations=40 make test` when a module grows past these.
LONGEST_FIRST = ["test_smoke_dag", "test_own_data_dag", "test_slurm", "test_smoke_dvc", "test_benchmarks",
                 "test_gpu_check", "test_faults", "test_train", "test_reruns", "test_export", "test_doctor"]


def pytest_configure(config: pytest.Config) -> None:
    """Under pytest-xdist (make test-fast: a worker per core) each worker computes on one thread: two workers
    with torch's default of a thread per core would oversubscribe the cores."""
    if os.environ.get("PYTEST_XDIST_WORKER"):
        os.environ.setdefault("OMP_NUM_THREADS", "1")
        import torch
        torch.set_num_threads(1)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """A test that starts a server is an integration test (make test-fast leaves those out), whichever module
    it is in. Modules in LONGEST_FIRST order come first; within a module, and otherwise, the order stays."""
    for item in items:
        if SERVERS & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.integration)
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.stem, len(rank)))


@pytest.fixture(autouse=True)
def _isolated_mlflow(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """No test ever writes into the project's own MLflow store."""
    store = tmp_path_factory.mktemp("mlflow") / "mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{store}")


@pytest.fixture
def params_dir(tmp_path: Path) -> Path:
    """A private, editable copy of params/."""
    return Path(shutil.copytree(ROOT / "params", tmp_path / "params"))
