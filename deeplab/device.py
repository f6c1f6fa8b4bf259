"""Where a job computes: ``train.device`` resolved to a torch device, checked before anything else runs.

``cuda`` requires a usable NVIDIA GPU: when torch cannot use one, :func:`resolve` stops within seconds,
before any data, weights or MLflow run is touched, with the cause and its fix (a CPU-only torch build, an
empty ``CUDA_VISIBLE_DEVICES``, no NVIDIA driver in this job, a driver older than the one this torch build
needs, or no GPU the driver sees). ``auto`` takes the GPU when torch can use one and the CPU otherwise,
saying why when a GPU is there but unusable. ``cpu`` is the CPU, for whoever means it.

The driver's version comes from NVML (nvidia-ml-py), which answers without CUDA, so an old driver is named
as such instead of surfacing as ``torch.cuda.is_available() == False``.
"""
from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from typing import Literal

import torch

from deeplab.errors import PipelineError

# Oldest driver series each CUDA major release runs on (NVIDIA's minor-version compatibility: any 13.x
# runtime on r580+, any 12.x on r525+, any 11.x on r450+).
MIN_DRIVER = {13: 580, 12: 525, 11: 450}
OLDER_CUDA = "make lock TORCH_INDEX=https://download.pytorch.org/whl/cu128"  # README: "Older drivers"


class DeviceError(PipelineError):
    """The job asks for a GPU this process cannot use; the message names the cause and the fix."""

    exit_code = 2


@dataclass(frozen=True)
class Probe:
    """What this process can see of its GPUs, gathered without initialising CUDA when it cannot work."""

    cuda_build: str | None            # torch.version.cuda; None = a CPU-only torch build
    cuda_available: bool              # torch.cuda.is_available()
    device_count: int                 # torch.cuda.device_count() (0 when not available)
    visible: str | None               # $CUDA_VISIBLE_DEVICES as set (None = unset)
    driver: str | None                # NVML's driver version, e.g. "580.65.06"; None = no NVML answer
    nvml_gpus: int | None             # GPUs the driver sees; None = no NVML answer
    nvml_error: str | None = None     # why NVML did not answer

    @property
    def required_driver(self) -> int | None:
        """The oldest driver series this torch build's CUDA runs on (None: not known / CPU build)."""
        if not self.cuda_build:
            return None
        return MIN_DRIVER.get(int(self.cuda_build.split(".")[0]))


def nvml_state() -> tuple[str | None, int | None, str | None]:
    """(driver version, GPU count, error) as NVML reports them; NVML never needs CUDA to answer."""
    try:
        import pynvml
    except ImportError:
        return None, None, "nvidia-ml-py is not installed"
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError as error:
        return None, None, str(error)
    try:
        driver = pynvml.nvmlSystemGetDriverVersion()
        return driver.decode() if isinstance(driver, bytes) else driver, pynvml.nvmlDeviceGetCount(), None
    except pynvml.NVMLError as error:
        return None, None, str(error)
    finally:
        pynvml.nvmlShutdown()


def probe() -> Probe:
    """This process's view of its GPUs (seconds at most, also on a machine without any)."""
    driver, gpus, error = nvml_state()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # an old driver makes torch warn; the diagnosis below says it better
        available = torch.cuda.is_available()
    return Probe(cuda_build=torch.version.cuda, cuda_available=available,
                 device_count=torch.cuda.device_count() if available else 0,
                 visible=os.environ.get("CUDA_VISIBLE_DEVICES"), driver=driver, nvml_gpus=gpus, nvml_error=error)


def driver_series(version: str) -> int:
    """580 of '580.65.06'."""
    return int(version.split(".")[0])


def gpu_problem(seen: Probe) -> str | None:
    """Why torch cannot use a GPU here, with the fix, or None when it can."""
    cpu_fix = "or set train.device: cpu in the preset's overrides to run on the CPU on purpose"
    if seen.cuda_available and seen.device_count > 0:
        return None
    if not seen.cuda_build:
        return (f"torch {torch.__version__} is a CPU-only build: install the project's lock (make .venv/.installed) "
                f"or another CUDA build of torch, {cpu_fix}")
    if seen.visible is not None and not [g for g in seen.visible.split(",") if g.strip() not in ("", "-1")]:
        return (f"CUDA_VISIBLE_DEVICES is {seen.visible!r}: this job was given no GPU; ask the scheduler for one "
                f"(e.g. sbatch --gpus 1) or unset the variable, {cpu_fix}")
    if seen.driver is None:
        return (f"no NVIDIA driver in this job ({seen.nvml_error or 'NVML did not answer'}): run it on a machine "
                f"or node with an NVIDIA GPU, {cpu_fix}")
    need = seen.required_driver
    if need is not None and driver_series(seen.driver) < need:
        return (f"the NVIDIA driver {seen.driver} is older than the r{need} series this torch build (CUDA "
                f"{seen.cuda_build}) needs: update the driver to r{need} or newer, or lock torch for the CUDA "
                f"your driver runs ({OLDER_CUDA}; README, 'Older drivers')")
    if not seen.nvml_gpus:
        return f"the NVIDIA driver {seen.driver} sees no GPU in this job: ask the scheduler for one, {cpu_fix}"
    return (f"torch cannot use the {seen.nvml_gpus} GPU(s) the driver {seen.driver} sees (CUDA "
            f"{seen.cuda_build} build; CUDA_VISIBLE_DEVICES={seen.visible!r}): run `python -m pipeline.doctor "
            f"--preset <preset>` for details, {cpu_fix}")


def resolve(setting: Literal["auto", "cuda", "cpu"], local_rank: int = 0, seen: Probe | None = None) -> torch.device:
    """The device ``setting`` means for this process (``local_rank``: its GPU under torchrun), or
    :class:`DeviceError` naming why a required GPU cannot be used."""
    if setting == "cpu":
        return torch.device("cpu")
    seen = seen or probe()
    problem = gpu_problem(seen)
    if problem is None:
        if local_rank >= seen.device_count:
            raise DeviceError(f"process {local_rank} of this node needs GPU {local_rank} but only "
                              f"{seen.device_count} are visible: start as many processes per node as GPUs")
        return torch.device("cuda", local_rank)
    if setting == "cuda":
        raise DeviceError(f"train.device is cuda but {problem}")
    if seen.nvml_gpus:  # auto, with GPUs the driver sees but torch cannot use: say so once
        warnings.warn(f"train.device auto runs on the CPU: {problem}", RuntimeWarning, stacklevel=2)
    return torch.device("cpu")
