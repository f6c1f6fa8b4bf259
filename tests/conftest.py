"""Shared fixtures. Area-specific fixtures live beside their tests (tests/<area>_fixtures.py)."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def _isolated_mlflow(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """No test ever writes into the project's own MLflow store."""
    store = tmp_path_factory.mktemp("mlflow") / "mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{store}")


@pytest.fixture
def params_dir(tmp_path: Path) -> Path:
    """A private, editable copy of params/."""
    return Path(shutil.copytree(ROOT / "params", tmp_path / "params"))
