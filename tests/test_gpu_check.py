"""make gpu-check runs to completion on a machine without a GPU (tiny sizes, labelled as not a GPU result),
so it is known to work before anyone pays for a GPU."""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_gpu_check_runs_on_the_cpu_and_says_so(tmp_path: Path) -> None:
    report = tmp_path / "gpu_check.md"
    result = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_check.py"), "--out", str(report)],
                            capture_output=True, text=True, timeout=900, env={"PATH": "/usr/bin:/bin",
                                                                              "CUDA_VISIBLE_DEVICES": ""})
    assert result.returncode == 0, result.stderr[-3000:]
    text = report.read_text()
    assert text.startswith("**Not a GPU result")
    sections = {heading.split(" (")[0]: body for heading, body in
                re.findall(r"(?ms)^(### [^\n]+)\n(.*?)(?=^### |^Report made|\Z)", text)}
    number = r"\d+\.\d+"
    for name in ("### Training step", "### Evaluation"):  # a measured rate in every row of the table
        rows = [line for line in sections[name].splitlines() if line.startswith("| r")]
        assert rows and all(re.search(rf"\| {number} \|", row) for row in rows), (name, rows)
    assert re.search(rf"One loader worker: {number} images/s", sections["### Input pipeline"])
    # rate, TFLOP/s, peak measured (nan: no CUDA allocator on the CPU) and predicted
    assert re.search(r"(?m)^\| r101-os8 \| bf16 \+ channels-last \| \d+ \| [\d.]+ \| [\d.]+ \| nan \| [\d.]+ \|$",
                     sections["### Training step"])
    for name in ("### torch.compile", "### DDP"):  # on the CPU these say why they were skipped
        assert sections[name].strip().startswith("skipped"), sections[name]
    assert text.count("| r101-os8 |") == 3 and ": falls" in text  # both precisions, evaluation; loss fell
