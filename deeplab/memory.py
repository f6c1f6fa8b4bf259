"""GPU memory of one training step, predicted on any machine with fake tensors (no real compute).

The model is built inside torch's ``FakeTensorMode`` and one training step of the recipe runs under its
``MemTracker``: forward with the aux head (autocast for bf16), the recipe's loss, backward and SGD with
momentum. The first step creates the optimiser state; the second, the steady state every later iteration
repeats, is the one measured. What the tracker reports is what ``torch.cuda.max_memory_allocated`` counts
(tensors), split into parameters, gradients, optimiser state and activations (with temporaries).

Peak memory grows linearly with the micro-batch, so :func:`fit_line` turns two predictions into all of
them. :func:`largest_fitting` applies the margin a real GPU needs on top of the tensors:
``RESERVED_GIB`` for the CUDA context and cuDNN's workspace, and ``FRAGMENTATION`` for the caching
allocator. The tracker is a private torch API (``torch.distributed._tools.mem_tracker``, torch 2.5 and
later): if it disappears or changes shape, :class:`MemoryPlanError` says so, naming the torch version.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch

from deeplab.config import CellConfig, TrainSettings
from deeplab.errors import PipelineError
from deeplab.losses import criterion
from deeplab.model import deeplabv3plus
from deeplab.schedule import build_optimizer

GIB = 2**30
RESERVED_GIB = 1.5     # CUDA context, cuDNN/cuBLAS workspaces: not tensors, not seen by the tracker
FRAGMENTATION = 1.10   # the caching allocator's slack over the tensors' peak


class MemoryPlanError(PipelineError):
    """The fake-tensor memory tracker is missing or answers in a shape this module does not know."""


@dataclass(frozen=True)
class StepMemory:
    """Peak bytes of one steady-state training step, by kind (the peak moment's split)."""

    parameters: int     # weights and BatchNorm buffers
    gradients: int
    optimizer: int      # SGD momentum buffers
    activations: int    # saved activations and temporaries
    total: int

    def gib(self) -> dict[str, float]:
        return {k: round(v / GIB, 3) for k, v in self.__dict__.items()}


@dataclass(frozen=True)
class ModelShape:
    """What a step's memory depends on: the network, the classes, the crop and the numerics."""

    backbone: Literal["r50", "r101"]
    output_stride: Literal[8, 16]
    num_classes: int
    crop: tuple[int, int]
    precision: Literal["fp32", "bf16"]
    aspp_channels: int = 512
    low_level_channels: int = 48
    decoder_channels: int = 512
    aux_channels: int = 512

    @classmethod
    def of(cls, cfg: CellConfig, precision: Literal["fp32", "bf16"]) -> "ModelShape":
        model = cfg.model
        return cls(cfg.cell.backbone, cfg.cell.output_stride, cfg.data.num_classes, cfg.data.crop_size, precision,
                   model.aspp_channels, model.low_level_channels, model.decoder_channels,
                   model.aux_channels)


def _tracker():  # noqa: ANN202
    try:
        from torch._subclasses.fake_tensor import FakeTensorMode
        from torch.distributed._tools.mem_tracker import MemTracker
    except ImportError as error:
        raise MemoryPlanError(f"torch {torch.__version__} has no fake-tensor memory tracker ({error}); the "
                              "memory plan needs torch.distributed._tools.mem_tracker (torch 2.5 to 2.14 have it)") from error
    return FakeTensorMode, MemTracker


def predict_step(shape: ModelShape, micro_batch: int, train: TrainSettings) -> StepMemory:
    """Peak memory of one steady-state training step of ``micro_batch`` images (at least 2: BatchNorm
    after the ASPP's image pooling needs two), with the optimiser and loss weights of ``train``."""
    fake_mode, mem_tracker = _tracker()
    with fake_mode():
        torch.manual_seed(0)
        model = deeplabv3plus(backbone=shape.backbone, output_stride=shape.output_stride,
                              num_classes=shape.num_classes,
                              aspp_channels=shape.aspp_channels, low_level_channels=shape.low_level_channels,
                              decoder_channels=shape.decoder_channels, aux_channels=shape.aux_channels).train()
        optimizer = build_optimizer(model, train)  # training's own: momentum buffers only where it has them
        images = torch.randn(micro_batch, 3, *shape.crop)
        labels = torch.randint(0, shape.num_classes, (micro_batch, *shape.crop), dtype=torch.uint8)
        tracker = mem_tracker()
        tracker.track_external(model, optimizer)
        with tracker:
            for step in range(2):  # the first step creates the momentum buffers; the second is measured
                if step:
                    tracker.reset_mod_stats()
                optimizer.zero_grad(set_to_none=True)
                with torch.autocast("cpu", dtype=torch.bfloat16, enabled=shape.precision == "bf16"):
                    outputs = model(images)
                criterion(outputs, labels, aux_weight=train.aux_weight)["loss"].backward()
                optimizer.step()
        return _breakdown(tracker.get_tracker_snapshot("peak"))


def predict_evaluation(shape: ModelShape, image: tuple[int, int], size: tuple[int, int], several: bool) -> int:
    """Peak bytes of the largest pass of an evaluation protocol: the forward of one (1, 3, ``size``) input
    (``shape.precision`` is the evaluation's, ``shape.crop`` unused), its logits resized to the ``image``
    size and, when ``several`` passes are averaged, their softmax added to the running sum."""
    import torch.nn.functional as F
    fake_mode, mem_tracker = _tracker()
    with fake_mode():
        model = deeplabv3plus(backbone=shape.backbone, output_stride=shape.output_stride,
                              num_classes=shape.num_classes, aux_loss=False,
                              aspp_channels=shape.aspp_channels, low_level_channels=shape.low_level_channels,
                              decoder_channels=shape.decoder_channels).eval()
        tracker = mem_tracker()
        tracker.track_external(model)
        with tracker, torch.no_grad():
            score = torch.zeros(1, shape.num_classes, *image) if several else None
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=shape.precision == "bf16"):
                logits = model(torch.randn(1, 3, *size))["out"].float()
            logits = F.interpolate(logits, size=image, mode="bilinear", align_corners=False)
            if score is not None:
                score.add_(logits.softmax(1))
        (device,) = tracker.get_tracker_snapshot("peak").values()
        return int(next(v for k, v in device.items() if str(getattr(k, "value", k)) == "Total"))


def _breakdown(snapshot: object) -> StepMemory:
    try:
        (device,) = snapshot.values()  # type: ignore[attr-defined]
        kinds = {str(getattr(k, "value", k)): int(v) for k, v in device.items()}
        return StepMemory(parameters=kinds["Parameter"] + kinds["Buffer"], gradients=kinds["Gradient"],
                          optimizer=kinds["Optstate"], activations=kinds["Activation"] + kinds["Temp"]
                          + kinds.get("Other", 0), total=kinds["Total"])
    except (AttributeError, KeyError, ValueError, TypeError) as error:
        raise MemoryPlanError(f"torch {torch.__version__}'s memory tracker answered in an unknown shape "
                              f"({type(error).__name__}: {error}); deeplab/memory.py needs updating") from error


@dataclass(frozen=True)
class Line:
    """Peak bytes = fixed + per_image x micro-batch, fitted through two predictions."""

    fixed: float
    per_image: float

    def at(self, micro_batch: int) -> float:
        return self.fixed + self.per_image * micro_batch


def fit_line(small: tuple[int, int], large: tuple[int, int]) -> Line:
    """The line through two (micro-batch, peak bytes) points."""
    (n1, b1), (n2, b2) = small, large
    per_image = (b2 - b1) / (n2 - n1)
    return Line(b1 - per_image * n1, per_image)


POINTS = (2, 4)  # the two micro-batches every line is fitted through


def predicted_line(shape: ModelShape, train: TrainSettings) -> Line:
    """Peak memory against micro-batch for ``shape``: the line through predictions at ``POINTS``."""
    return fit_line(*((n, predict_step(shape, n, train).total) for n in POINTS))


def usable_bytes(gpu_gib: float) -> float:
    """Tensor bytes a GPU of ``gpu_gib`` GiB can hold for training, after the stated margins."""
    return (gpu_gib - RESERVED_GIB) * GIB / FRAGMENTATION


def micro_batches(share: int) -> list[int]:
    """The micro-batch sizes that split a per-GPU share evenly (at least 2 images each), largest first."""
    return sorted((k for k in range(2, share + 1) if share % k == 0), reverse=True) or [share]


def largest_fitting(line: Line, share: int, gpu_gib: float) -> int | None:
    """The largest micro-batch dividing ``share`` whose predicted peak fits ``gpu_gib``; None if none does."""
    return next((k for k in micro_batches(share) if line.at(k) <= usable_bytes(gpu_gib)), None)


def gpus_for_whole_batch(line: Line, batch: int, gpu_gib: float) -> int | None:
    """The fewest GPUs of ``gpu_gib`` that each run their whole share of ``batch`` at once (at least 2
    images each), so that SyncBatchNorm normalises over the whole batch as the reference does; None when
    even the smallest share does not fit."""
    return next((gpus for gpus in range(1, batch // 2 + 1)
                 if batch % gpus == 0 and line.at(batch // gpus) <= usable_bytes(gpu_gib)), None)


def accumulation_steps(share: int, max_micro_batch: int) -> int:
    """Fewest equal micro-batches of at most ``max_micro_batch`` images that make up ``share``."""
    if max_micro_batch <= 0 or max_micro_batch >= share:
        return 1
    return next(k for k in range(math.ceil(share / max_micro_batch), share + 1) if share % k == 0)
