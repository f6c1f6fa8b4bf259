"""The one atomic writer every stage uses: a failed write leaves the old file and no temp behind."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from deeplab import atomic


def test_write_replaces_creates_folders_and_leaves_no_temp(tmp_path: Path) -> None:
    target = tmp_path / "a" / "b" / "metrics.json"
    atomic.write_json(target, {"mIoU": 1.0})
    atomic.write_json(target, {"mIoU": 2.0}, sort_keys=True)
    assert json.loads(target.read_text()) == {"mIoU": 2.0} and target.read_text().endswith("\n")
    assert [p.name for p in target.parent.iterdir()] == ["metrics.json"]
    assert target.stat().st_mode & 0o777 == 0o644


def test_a_failed_write_keeps_the_old_file_and_removes_its_temp(tmp_path: Path) -> None:
    target = tmp_path / "table.md"
    atomic.write_text(target, "old\n")
    with pytest.raises(TypeError):
        atomic.write_json(target, {"not json": object()})  # fails before anything is renamed
    with pytest.raises(TypeError):
        atomic.write_text(target, b"bytes")  # type: ignore[arg-type]  # fails inside the temp file
    assert target.read_text() == "old\n"
    assert [p.name for p in tmp_path.iterdir()] == ["table.md"]
