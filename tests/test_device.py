"""The device comes first: a preset that says cuda stops within seconds, naming the cause and the fix,
before any data, weights, results or MLflow store is touched; each cause is diagnosed from what NVML and
torch see (driver, visible devices, build)."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from deeplab.device import DeviceError, Probe, gpu_problem, resolve
from tests.train_fixtures import ROOT

USABLE = Probe(cuda_build="13.0", cuda_available=True, device_count=2, visible=None, driver="580.65.06", nvml_gpus=2)


def seen(**changes: object) -> Probe:
    """What a machine whose GPUs torch cannot use looks like, with ``changes``."""
    base = dict(cuda_build="13.0", cuda_available=False, device_count=0, visible=None, driver="580.65.06", nvml_gpus=1)
    return Probe(**{**base, **changes})


@pytest.mark.parametrize("probe, cause", [
    (seen(cuda_build=None), "is a CPU-only build"),
    (seen(visible=""), "CUDA_VISIBLE_DEVICES is '': this job was given no GPU"),
    (seen(visible="-1"), "CUDA_VISIBLE_DEVICES is '-1'"),
    (seen(driver=None, nvml_gpus=None, nvml_error="NVML Shared Library Not Found"), "no NVIDIA driver in this job"),
    (seen(driver="570.86.15"), "the NVIDIA driver 570.86.15 is older than the r580 series this torch build (CUDA 13.0)"),
    (seen(cuda_build="12.8", driver="535.104.05"), None),  # 12.x runs on r525+: not the driver's fault
    (seen(nvml_gpus=0), "sees no GPU in this job"),
])
def test_each_cause_is_named_with_its_fix(probe: Probe, cause: str | None) -> None:
    problem = gpu_problem(probe)
    assert problem is not None and ("train.device: cpu" in problem or "older than" in problem)
    if cause:
        assert cause in problem, problem
    else:
        assert "older than" not in problem and "torch cannot use the 1 GPU(s)" in problem
    if "older than" in problem:
        assert "make lock TORCH_INDEX=" in problem and "update the driver to r580" in problem
    assert gpu_problem(USABLE) is None


def test_cuda_stops_auto_falls_back_and_cpu_is_the_cpu() -> None:
    with pytest.raises(DeviceError, match="train.device is cuda but the NVIDIA driver 570.86.15 is older"):
        resolve("cuda", seen=seen(driver="570.86.15"))
    with pytest.warns(RuntimeWarning, match="train.device auto runs on the CPU: the NVIDIA driver 570.86.15"):
        assert resolve("auto", seen=seen(driver="570.86.15")) == torch.device("cpu")
    assert resolve("auto", seen=seen(driver=None, nvml_gpus=None)) == torch.device("cpu")  # a CPU machine: silent
    assert resolve("cpu", seen=seen(cuda_build=None)) == torch.device("cpu")
    assert resolve("cuda", 1, seen=USABLE) == torch.device("cuda", 1)
    with pytest.raises(DeviceError, match="needs GPU 2 but only 2 are visible"):
        resolve("cuda", 2, seen=USABLE)


@pytest.mark.parametrize("argv", [["pipeline.train", "--cell", "voc-r50-os16"],
                                  ["pipeline.evaluate", "--cell", "voc-r50-os16"],
                                  ["pipeline.reference_eval", "--cell", "voc-r50-os16"]])
def test_the_full_preset_without_a_gpu_stops_before_touching_anything(argv: list[str], tmp_path: Path) -> None:
    """A job given no GPU (CUDA_VISIBLE_DEVICES empty: the same cause on every machine): exit 2 in seconds,
    one line naming it; no data, results, downloads or MLflow store appear in the project."""
    shutil.copytree(ROOT / "params", tmp_path / "params")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "CUDA_VISIBLE_DEVICES": "",
           "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}", "DEEPLAB_MIRROR": str(tmp_path / "mirror")}
    started = time.monotonic()
    result = subprocess.run([sys.executable, "-m", *argv, "--preset", "full"], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=120)
    elapsed = time.monotonic() - started
    assert result.returncode == 2, result.stderr
    assert "error: train.device is cuda but CUDA_VISIBLE_DEVICES is '': this job was given no GPU" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["params"]
    print(f"{argv[0]} stopped in {elapsed:.1f} s")  # about 3 s here: the imports of torch
    assert elapsed < 30  # loose: a loaded CI machine; the point is that nothing slow ran first
