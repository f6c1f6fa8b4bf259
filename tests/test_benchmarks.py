"""Benchmarks that cannot rot: every script in benchmarks/ runs here with --quick (and its smallest knobs),
so an API change that breaks one fails the suite; gpu_check also runs as it would on a short GPU loan (a
budget) and says what it ran on and what it skipped. About 3 minutes together, slow tier."""
from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
BENCHMARKS = ROOT / "benchmarks"
pytestmark = pytest.mark.slow
NUMBER = r"\d+\.\d+"
# script -> (arguments, a line its output must have)
RUNS = {
    "evaluate.py": (["--quick"], r"ratio"),
    "input_pipeline.py": (["--quick"], rf"ratio Cityscapes new / previous per worker: {NUMBER}x"),
    "model_step.py": (["--quick", "--steps", "1", "--warmup", "1"], r"ratio"),
    "orchestration.py": (["--quick", "--repeats", "1"], rf"ratio dry run / snakemake --version: {NUMBER}x"),
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


def test_gpu_check_on_a_short_budget_reports_the_machine_and_what_it_skipped(tmp_path: Path) -> None:
    """--quick --budget-s 60 on this CPU: the report names the machine first, every section it ran has its
    measured numbers, the ones that would overrun say so, and it ends within the budget (plus start-up)."""
    report = tmp_path / "gpu_check.md"
    started = time.monotonic()
    result = run("gpu_check.py", "--quick", "--budget-s", "60", "--out", str(report), cwd=tmp_path)
    elapsed = time.monotonic() - started
    assert result.returncode == 0, result.stderr[-3000:]
    text = report.read_text()
    assert text.startswith("**Not a GPU result") and re.search(r"(?m)^Machine: \d+ CPU cores .*torch ", text)
    sections = {heading.split(" (")[0]: body for heading, body in
                re.findall(r"(?ms)^(### [^\n]+)\n(.*?)(?=^### |^Report made|\Z)", text)}
    assert list(sections) == ["### Training step", "### Training run", "### Evaluation", "### Input pipeline",
                              "### DDP", "### torch.compile"]
    # the first section always runs: rate, TFLOP/s, peak measured (nan: no CUDA allocator on the CPU), predicted
    rows = [line for line in sections["### Training step"].splitlines() if line.startswith("| r")]
    assert len(rows) == 4 and all(re.search(rf"\| {NUMBER} \|", row) for row in rows), rows
    assert re.search(r"(?m)^\| r101-os8 \| bf16 \+ channels-last \| \d+ \| [\d.]+ \| [\d.]+ \| nan \| [\d.]+ \|$",
                     sections["### Training step"])
    ran = {name for name, body in sections.items() if not body.strip().startswith("skipped")}
    skipped = {name: body.strip() for name, body in sections.items() if name not in ran}
    # the later ones ran with their numbers, or say why not (how many of them fit depends on the machine's load)
    assert all(re.match(r"skipped: about \d+ s expected, \d+ s of the 60 s budget left", body)
               or name in ("### DDP", "### torch.compile") for name, body in skipped.items()), skipped
    for name in ("### torch.compile", "### DDP"):  # on the CPU these say why they were skipped
        assert name in skipped, sections[name]
    if "### Training run" in ran:
        assert ": falls" in sections["### Training run"]
    if "### Evaluation" in ran:
        assert re.search(rf"(?m)^\| r50-os16 \| .* \| {NUMBER} \|$", sections["### Evaluation"])
    if "### Input pipeline" in ran:
        assert re.search(rf"\| cityscapes \| {NUMBER} \|", sections["### Input pipeline"])
    assert re.search(r"Report made in \d+ s of a 60 s budget", text)
    assert elapsed < 60 + 45, elapsed  # the budget, plus interpreter start and imports on a loaded machine


def test_gpu_checks_loader_section_measures_every_dataset_and_cell() -> None:
    spec = importlib.util.spec_from_file_location("gpu_check", BENCHMARKS / "gpu_check.py")
    gpu_check = importlib.util.module_from_spec(spec)
    sys.modules["gpu_check"] = gpu_check  # its dataclasses look their module up
    try:
        spec.loader.exec_module(gpu_check)
    finally:
        del sys.modules["gpu_check"]
    setup = gpu_check.Setup(torch.device("cpu"), size=64, images=2, steps=1, train_iters=1, gpu=False, quick=True)
    rows = gpu_check.loader_rows({("r50", 16): 100.0, ("r101", 8): 40.0}, setup)
    text = "\n".join(rows)
    for dataset in ("voc", "ade20k", "cityscapes"):
        assert re.search(rf"(?m)^\| {dataset} \| {NUMBER} \|$", text), text
    assert re.search(r"(?m)^\| cityscapes-r50-os16 \| [\d.e+-]+ \| [\d.e+-]+ \| (yes|no) \|$", text), text
    assert "CPU cores per GPU" in text
