"""DDP: two gloo processes under torchrun train one cell; each takes half of the global batch, so the
log counts the full global batch per iteration, and only rank 0 writes the cell's files."""
from __future__ import annotations

import csv
import os
import subprocess
from pathlib import Path

import pytest
import torch
import yaml

from tests.train_fixtures import PYTHON, ROOT, project, shrink_params  # noqa: F401  (fixture)

CELL = "voc-r50-os16"


@pytest.mark.integration
def test_two_process_gloo_run_honours_the_global_batch(project: Path) -> None:
    shrink_params(project / "params", batch=4)  # 2 images per process, 2 iterations
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    result = subprocess.run([PYTHON, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                             "-m", "pipeline.train", "--cell", CELL, "--preset", "smoke"],
                            cwd=project, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    cell_dir = project / "results" / "smoke" / CELL
    with (cell_dir / "train_log.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert [(int(r["iteration"]), int(r["images"])) for r in rows] == [(1, 4), (2, 4)]
    assert yaml.safe_load((cell_dir / "config.yaml").read_text())["world_size"] == 2
    saved = torch.load(cell_dir / "model.pt", weights_only=True)
    assert saved["iteration"] == 2 and all(torch.isfinite(v).all() for v in saved["state_dict"].values()
                                           if v.is_floating_point())
    assert result.stdout.count("done (2 iterations)") == 1  # rank 0 only
