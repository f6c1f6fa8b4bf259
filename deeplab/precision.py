"""Numeric precision of a run: the autocast dtype a setting means on a device, and the backend switches.

``fp32`` means fp32 everywhere (no autocast, TF32 off for matmul and cuDNN): the reference's own choice.
``auto`` is bf16 autocast on GPUs that have it, fp16 with a grad scaler on older GPUs, fp32 on a CPU.
"""
from __future__ import annotations

import contextlib
import os
from typing import Iterator

import torch


def resolve_precision(setting: str, device: torch.device) -> torch.dtype | None:
    """Autocast dtype, or None for fp32. An explicit bf16 / fp16 / fp32 is honoured on any device."""
    if setting == "auto":
        if device.type != "cuda":
            return None
        return torch.bfloat16 if bf16_available(device) else torch.float16
    return of_name(setting)


def bf16_available(device: torch.device) -> bool:
    """Whether ``device`` runs bf16 autocast: every CPU torch supports, a GPU that says so (Ampere and newer)."""
    return device.type != "cuda" or torch.cuda.is_bf16_supported()


def short_name(dtype: torch.dtype | None) -> str:
    """The precision a run computed in, as the settings spell it: bf16, fp16 or fp32."""
    return {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[dtype]


def of_name(name: str) -> torch.dtype | None:
    """The autocast dtype of a precision name (bf16, fp16, fp32)."""
    return {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": None}[name]


def configure_backends(dtype: torch.dtype | None, deterministic: bool = False, benchmark: bool = True) -> None:
    """Determinism, cuDNN autotuning, and TF32 only when the run is not strict fp32."""
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)
    torch.backends.cudnn.benchmark = benchmark and not deterministic
    torch.backends.cuda.matmul.allow_tf32 = dtype is not None
    torch.backends.cudnn.allow_tf32 = dtype is not None


@contextlib.contextmanager
def tf32_as(dtype: torch.dtype | None) -> Iterator[None]:
    """TF32 as a run at ``dtype`` computes (off for fp32, on under autocast), restored afterwards: periodic
    validation scores at the evaluation's numerics inside a training that runs with TF32 on."""
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = dtype is not None
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def precision_name(dtype: torch.dtype | None) -> str:
    """How a run computed, for the record: ``fp32 (TF32 off)`` or ``bf16 autocast`` / ``fp16 autocast``."""
    names = {None: "fp32 (TF32 off)", torch.bfloat16: "bf16 autocast", torch.float16: "fp16 autocast"}
    return names[dtype]
