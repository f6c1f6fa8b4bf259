"""Benchmarks that cannot rot: every script in benchmarks/ runs here with --quick (and its smallest knobs),
so an API change that breaks one fails the suite (gpu_check: tests/test_gpu_check.py, a module of its own so
that the two share the workers). About 3 minutes together, slow tier."""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
BENCHMARKS = ROOT / "benchmarks"
pytestmark = pytest.mark.slow
NUMBER = r"\d+\.\d+"
# script -> (arguments, a line its output must have)
RUNS = {
    "evaluate.py": (["--quick"], r"ratio"),
    "input_pipeline.py": (["--quick"], rf"ratio Cityscapes new / previous per worker: {NUMBER}x"),
    "model_step.py": (["--quick", "--steps", "1", "--warmup", "1", "--variants", "r50-os16"], r"ratio"),
    "onnx_runtime.py": (["--quick"], rf"ratio onnxruntime / PyTorch: {NUMBER}x"),
    "orchestration.py": (["--quick", "--repeats", "1", "--warmups", "0"], rf"ratio dry run / snakemake --version: {NUMBER}x"),
    "prepare.py": (["--quick"], r"ratio"),
}


def run(script: str, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "2"}
    return subprocess.run([sys.executable, str(BENCHMARKS / script), *args], cwd=cwd, capture_output=True,
                          text=True, timeout=600, env=env)


def test_every_benchmark_is_run_here() -> None:
    assert sorted(p.name for p in BENCHMARKS.glob("*.py")) == sorted([*RUNS, "gpu_check.py"])


@pytest.mark.parametrize("script", sorted(RUNS))
def test_the_benchmark_runs_and_prints_its_ratio(script: str, tmp_path: Path) -> None:
    args, expected = RUNS[script]
    result = run(script, *args, cwd=tmp_path)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    assert re.search(expected, result.stdout), result.stdout[-2000:]
