"""The micro-batch a training job runs: what fits the GPU it was given, found before the first iteration.

``train.max_micro_batch: auto``: the first candidate is the memory plan's choice for this GPU's free memory
(deeplab.plan / deeplab.memory: a line through two fake-tensor predictions), confirmed by one real
training step (forward, loss, backward, SGD step) on random data of the cell's crop on a throwaway copy of
the model; if it runs out of memory, or leaves less than ``HEADROOM`` of the GPU free, the next smaller
divisor of the per-GPU share is tried. The common case costs one trial. On a CPU ``auto`` is the whole
share. The choice stays out of the config digest, so a resume on another GPU is allowed; gradient
accumulation keeps the global batch and the loss normalisation (deeplab.losses) keeps the gradient.
"""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import Callable, Protocol

import torch
from torch import nn

from deeplab.config import CellConfig
from deeplab.errors import PipelineError
from deeplab.losses import criterion
from deeplab.memory import GIB, Line, micro_batches, usable_bytes

HEADROOM = 0.05  # a trial that leaves less than this share of the GPU free counts as not fitting


class OutOfMemory(PipelineError):
    """Not even the smallest micro-batch fits; the message says what to change."""


class Memory(Protocol):
    """What auto-fit needs to know of a device: its free bytes, and whether a trial step fits."""

    def free_bytes(self) -> int: ...
    def trial(self, micro_batch: int) -> bool: ...


@dataclass
class CudaMemory:
    """The real GPU: free memory from the driver, a trial step on a copy of the model."""

    model: nn.Module
    cfg: CellConfig
    device: torch.device
    dtype: torch.dtype | None

    def free_bytes(self) -> int:
        return torch.cuda.mem_get_info(self.device)[0]

    def trial(self, micro_batch: int) -> bool:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(self.device)
        try:
            trial_step(self.model, self.cfg, micro_batch, self.device, self.dtype)
            peak = torch.cuda.max_memory_reserved(self.device)
            return peak <= (1 - HEADROOM) * torch.cuda.get_device_properties(self.device).total_memory
        except torch.OutOfMemoryError:
            return False
        finally:
            torch.cuda.empty_cache()


def trial_step(model: nn.Module, cfg: CellConfig, micro_batch: int, device: torch.device,
               dtype: torch.dtype | None) -> None:
    """One training step of ``micro_batch`` random images at the cell's crop, on a copy of ``model``."""
    trial = copy.deepcopy(model).train()
    optimizer = torch.optim.SGD(trial.parameters(), lr=cfg.train.lr, momentum=cfg.train.momentum)
    images = torch.randn(micro_batch, 3, *cfg.data.crop_size, device=device)
    if cfg.train.channels_last:
        images = images.contiguous(memory_format=torch.channels_last)
    labels = torch.randint(0, cfg.data.num_classes, (micro_batch, *cfg.data.crop_size), device=device)
    with torch.autocast(device.type, dtype=dtype or torch.bfloat16, enabled=dtype is not None):
        outputs = trial(images)
    criterion(outputs, labels, aux_weight=cfg.train.aux_weight)["loss"].backward()
    optimizer.step()


def choose(share: int, memory: Memory, line: Line | None, log: Callable[[str], None] = print) -> int:
    """The largest micro-batch dividing ``share`` that a real trial confirms, starting from the plan's."""
    candidates = micro_batches(share)
    if line is not None:
        free_gib = memory.free_bytes() / GIB
        planned = [k for k in candidates if line.at(k) <= usable_bytes(free_gib)]
        start = candidates.index(planned[0]) if planned else len(candidates) - 1
        candidates = candidates[start:]
        log(f"auto-fit: the memory plan expects micro-batch {candidates[0]} to fit {free_gib:.1f} GiB free")
    for micro in candidates:
        if memory.trial(micro):
            log(f"auto-fit: micro-batch {micro} of {share} images per GPU "
                f"({math.ceil(share / micro)} accumulation steps), confirmed by a trial step")
            return micro
        log(f"auto-fit: micro-batch {micro} does not fit; trying the next smaller")
    raise OutOfMemory(f"not even a micro-batch of {candidates[-1]} images fits this GPU's free memory: free "
                      "the GPU of other processes, use a larger GPU, or lower the crop size in params")


def smaller(share: int, micro: int) -> int | None:
    """The next smaller micro-batch dividing ``share`` (at least 2), or None."""
    return next((k for k in micro_batches(share) if k < micro), None)
