"""The smoke DAG through DVC, in a fresh copy of the checkout: the same stages and commands as Snakemake's
(tests/test_smoke_dag.py runs the whole demo through Snakemake; this module runs beside it on the other
worker). DVC runs one stage at a time, so its DAG is shown on a reduced configuration."""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from deeplab.config import load_params
from tests.dag_fixtures import run_tool
from tests.test_smoke_dag import DAG_TIMEOUT_S, PARAMS, _check_outcome, _run_dag

pytestmark = [pytest.mark.slow, pytest.mark.timeout(DAG_TIMEOUT_S + 600)]


# DVC runs one stage at a time, the same commands as Snakemake: its DAG is shown on a reduced configuration
# (two datasets; a cell with two seeds and one without; one epoch each), the whole smoke DAG by Snakemake.
DVC_CELLS = ("voc-r50-os16", "cityscapes-r101-os16")


@pytest.fixture(scope="module")
def dvc_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    return _run_dag(tmp_path_factory, "dvc", ["dvc", "repro", "smoke/dvc.yaml"], epochs=1, cells=DVC_CELLS)


def test_dvc_runs_the_smoke_dag(dvc_run: tuple[Path, str]) -> None:
    _check_outcome(*dvc_run, learned=False)  # one epoch per cell: the stages, not the learning
    checkout, _ = dvc_run
    status = run_tool(["dvc", "status", "smoke/dvc.yaml"], checkout, timeout=300).stdout
    assert "up to date" in status, status


def test_dvc_metrics_plots_and_experiments_work(dvc_run: tuple[Path, str], tmp_path: Path) -> None:
    checkout, uri = dvc_run
    shown = json.loads(run_tool(["dvc", "metrics", "show", "--json"], checkout, timeout=300).stdout)
    found = {path: source.get("data") for rev in shown.values() for path, source in rev.get("data", {}).items()}
    paths = PARAMS.preset("smoke").paths
    runs = load_params(checkout / "params").runs("smoke")  # the reduced configuration's
    for run in runs:  # the headline numbers only (the full preset's files are declared too, and absent here)
        assert set(found.get(run.files.scores) or {}) == {"mIoU", "aAcc", "mAcc"}, \
            (run.run_key, sorted(found))
    seeds = found[paths.seeds_summary("voc-r50-os16")]  # the one cell with two seeds: their mean and spread
    assert seeds["seeds"] == 2 and set(seeds) == {"seeds", "mIoU_mean", "aAcc_mean", "mAcc_mean", "mIoU_std"}
    assert {path for path in found if path.startswith(f"{paths.results_dir}/")} == \
        {run.files.scores for run in runs} | {paths.seeds_summary("voc-r50-os16")}  # no per-class columns
    run_tool(["python", "-m", "pipeline.plots_template"], checkout, timeout=120)  # as make does after installing
    run_tool(["dvc", "plots", "show", "-o", str(tmp_path / "plots")], checkout, timeout=300)
    page = (tmp_path / "plots" / "index.html").read_text()
    assert not re.search(r"<script[^>]+src=", page) and "window.vegaEmbed" in page  # renders offline
    assert "cityscapes-r101-os16, val IoU per class" in page and "voc-r50-os16/seed1, val IoU per class" in page
    assert "has not run yet" in page and "dvc plots show smoke/dvc.yaml" in page  # DVC's own warning names no file
    shown = run_tool(["dvc", "plots", "show", "smoke/dvc.yaml", "-o", str(tmp_path / "demo")], checkout, timeout=300)
    assert "failed to load" not in shown.stdout + shown.stderr  # README's command for the demo's plots alone
    assert "cityscapes-r101-os16, val IoU per class" in (tmp_path / "demo" / "index.html").read_text()
    # a reference mIoU is read only by the table stage: the experiment reruns just that stage
    run_tool(["dvc", "exp", "run", "smoke/dvc.yaml", "-S", "params/cells.yaml:cells.voc-r50-os16.reference_miou=70.0"],
             checkout, timeout=600, MLFLOW_TRACKING_URI=uri)
    assert re.search(r"\|\s*70\.00%\s*\|", (checkout / "results" / "smoke" / "table.md").read_text())
