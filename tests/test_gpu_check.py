"""`make gpu-check` (benchmarks/gpu_check.py) as it runs on a short GPU loan, here on the CPU: a plain
interpreter without the project's tools, a budget, and a report of what it ran on and what it skipped."""
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

from tests.test_benchmarks import BENCHMARKS, NUMBER, ROOT

pytestmark = pytest.mark.slow


# what the GPU machine's python3 lacks: gpu_check must run without them (torch, torchvision, numpy, pyyaml,
# pandas, pillow and opencv are there)
ABSENT_THERE = ("mlflow", "dvc", "snakemake", "tabulate", "matplotlib")
WITHOUT = ("import runpy, sys\n"
           "for name in {names!r}: sys.modules[name] = None  # importing any of them now fails\n"
           "sys.argv = {argv!r}\n"
           "runpy.run_path({script!r}, run_name='__main__')\n")


def run_gpu_check(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    """gpu_check.py as the GPU machine runs it: a plain interpreter on which mlflow, dvc, snakemake and the
    rest of ABSENT_THERE cannot be imported."""
    script = str(BENCHMARKS / "gpu_check.py")
    code = WITHOUT.format(names=ABSENT_THERE, argv=[script, *args], script=script)
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "2", "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-c", code], cwd=cwd, capture_output=True, text=True, timeout=600, env=env)


def sections_of(text: str) -> dict[str, str]:
    return {heading.split(" (")[0]: body for heading, body in
            re.findall(r"(?ms)^(### [^\n]+)\n(.*?)(?=^### |^Report made|\Z)", text)}


def test_gpu_check_on_a_short_budget_reports_the_machine_and_what_it_skipped(tmp_path: Path) -> None:
    """--quick --budget-s 60 on this CPU, without MLflow, DVC or Snakemake importable: the report names the
    machine first, every section it ran has its measured numbers, the ones that would overrun say so, and it
    ends within the budget (plus start-up)."""
    report = tmp_path / "out" / "gpu_check.md"
    started = time.monotonic()
    result = run_gpu_check("--quick", "--budget-s", "60", "--out", str(report), cwd=tmp_path)
    elapsed = time.monotonic() - started
    assert result.returncode == 0, result.stderr[-3000:]
    text = report.read_text()
    assert text.startswith("**Not a GPU result") and re.search(r"(?m)^Machine: \d+ CPU cores .*torch .*"
                                                               r"dense bf16 matrix rate measured here: [\d.]+ TFLOP/s", text)
    sections = sections_of(text)
    assert list(sections) == ["### Training step per cell shape", "### Training run", "### Evaluation",
                              "### Input pipeline", "### GPU-hours per cell", "### DDP", "### torch.compile"]
    # the first section always runs: rate, TFLOP/s, fraction of the measured rate, peak (nan on the CPU), predicted
    rows = [line for line in sections["### Training step per cell shape"].splitlines() if line.startswith("| r")]
    first = sections["### Training step per cell shape"]  # on a loaded machine the budget can stop it after a row
    assert (len(rows) == 2 or (rows and "budget ran out" in first)) and \
        all(re.search(rf"\| {NUMBER} \| {NUMBER} \| {NUMBER}% \|", row) for row in rows), (rows, first)
    if len(rows) == 2:
        assert re.search(r"(?m)^\| r101-os8 \(voc\) \| 64x64 \| fp32 \(TF32 off\), channels-last \| 16 \| - / 2 \| .* \| nan \| "
                         rf"{NUMBER} \| - \|$", sections["### Training step per cell shape"])
    ran = {name for name, body in sections.items() if not body.strip().startswith(("skipped", "stopped"))}
    skipped = {name: body.strip() for name, body in sections.items() if name not in ran}
    # the later ones ran with their numbers, or say why not (how many of them fit depends on the machine's load)
    assert all(re.match(r"skipped: about \d+ s expected, \d+ s of the 60 s budget left", body)
               or re.search(r"stopped after \d+ s: the 60 s budget ran out inside this section", body)
               or name in ("### DDP", "### torch.compile", "### GPU-hours per cell") for name, body in skipped.items()), skipped
    for name in ("### torch.compile", "### DDP", "### GPU-hours per cell"):  # on the CPU these say why they were skipped
        assert name in skipped, sections[name]
    if "### Training run" in ran:
        assert ": falls" in sections["### Training run"]
    if "### Evaluation" in ran:
        assert re.search(rf"(?m)^\| voc-r50-os16 \| 48x64 \| single-scale \| fp32 \(TF32 off\) \| {NUMBER} \|",
                         sections["### Evaluation"])
        assert "| bf16 autocast (not the table: beside it) |" in sections["### Evaluation"]
    assert re.search(r"Report made in \d+ s of a 60 s budget", text)
    assert elapsed < 60 + 45, elapsed  # the budget, plus interpreter start and imports on a loaded machine


def _gpu_check_module():  # noqa: ANN202
    spec = importlib.util.spec_from_file_location("gpu_check", BENCHMARKS / "gpu_check.py")
    gpu_check = importlib.util.module_from_spec(spec)
    sys.modules["gpu_check"] = gpu_check  # its dataclasses look their module up
    try:
        spec.loader.exec_module(gpu_check)
    finally:
        del sys.modules["gpu_check"]
    return gpu_check


def test_a_section_that_overruns_the_budget_is_stopped_keeping_its_rows() -> None:
    """The budget stops a section while it runs (not only skips one by its estimate): the rows measured so
    far stay in the report, with a line saying it was stopped."""
    gpu_check = _gpu_check_module()
    setup = gpu_check.Setup(torch.device("cpu"), scale=1 / 8, steps=1, train_iters=1, gpu=False, quick=True)

    def slow(setup, found):  # noqa: ANN001, ANN202
        yield "| first row |"
        time.sleep(30)
        yield "| never |"
    started = time.monotonic()
    text = gpu_check.report(setup, 3.0, sections=[("Slow", 1, slow), ("After", 1, lambda s, f: iter(["| after |"]))])
    assert time.monotonic() - started < 10
    body = sections_of(text)["### Slow"]
    assert "| first row |" in body and "| never |" not in body
    assert re.search(r"stopped after \d+ s: the 3 s budget ran out inside this section", body)
    assert re.match(r"skipped: about 1 s expected, 0 s of the 3 s budget left", sections_of(text)["### After"].strip())


def test_gpu_checks_loader_section_measures_every_dataset_warm_and_cold_and_every_cell(tmp_path: Path,
                                                                                        monkeypatch) -> None:  # noqa: ANN001
    gpu_check = _gpu_check_module()
    monkeypatch.chdir(tmp_path)
    setup = gpu_check.Setup(torch.device("cpu"), scale=1 / 8, steps=1, train_iters=1, gpu=False, quick=True)
    found = {"step": {("voc", "r50", 16): 100.0, ("cityscapes", "r50", 16): 40.0}}
    text = "\n".join(gpu_check.loader_rows(setup, found))
    assert re.match(r"Page-cache drop check: 64 MiB read warm in \d+ ms, after posix_fadvise\(DONTNEED\) in \d+ ms", text)
    for dataset in ("voc", "ade20k", "cityscapes"):
        assert re.search(rf"(?m)^\| {dataset} \| {NUMBER} \| {NUMBER} \| \d+ \|$", text), text
    assert re.search(r"(?m)^\| cityscapes-r50-os16 \| [\d.e+-]+ \| [\d.e+-]+ \| [\d.e+-]+ \| (yes|no) \|$", text), text
    assert re.search(r"(?m)^\| ade20k-r50-os16 \| 100 \|", text)  # ADE20k's crop is VOC's: the same step
    assert "CPU cores per GPU" in text and list(tmp_path.iterdir()) == []  # its files are cleaned up
