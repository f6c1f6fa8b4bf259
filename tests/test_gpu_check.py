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
    sections = dict(re.findall(r"(?ms)^(### [^\n]+)\n(.*?)(?=^### |\Z)", text))
    for name in ("### Training step", "### Training run", "### Evaluation", "### Input pipeline",
                 "### torch.compile", "### DDP"):
        body = next((b for heading, b in sections.items() if heading.startswith(name)), None)
        assert body is not None, f"{name} missing"
        assert re.search(r"(?m)^\|.*\d+(\.\d+)?\s*(ms|s|GiB|img/s|%|x)?\s*\|", body), f"{name}: no measured row"
    assert text.count("| r101-os8 |") == 3 and ": falls" in text  # both precisions, evaluation; loss fell
