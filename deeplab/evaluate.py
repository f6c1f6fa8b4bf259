"""Evaluation protocols of the recipe (docs/recipe.md) and the loop that scores a split.

- single scale (the table's protocol): whole image, keep-ratio resized to fit ``eval_scale`` (native size
  when it is None), logits resized bilinearly back to the label's size before the argmax;
- multi-scale + flip (mmseg's extra column): ``evaluate.ms_ratios`` of that size, with horizontal flips;
  the softmax probabilities are averaged, as mmseg's ``aug_test`` does;
- sliding window: the (resized) image is covered by training-crop-sized windows with 2/3 overlap stride,
  logits averaged where windows overlap (mmseg's ``slide_inference``).
The confusion matrix stays on the device for the whole split.
"""
from __future__ import annotations

import copy
import math
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Subset
from torchvision.io import write_png

from deeplab.config import CellConfig, EvalSettings
from deeplab.datasets import DatasetError, SegmentationDataset, check_label, worker_init
from deeplab.metrics import ConfusionMatrix
from deeplab.precision import resolve_precision
from deeplab.transforms import eval_size, normalize


@dataclass(frozen=True)
class Protocol:
    name: str
    ratios: tuple[float, ...] = (1.0,)
    flip: bool = False
    window: tuple[int, int] | None = None  # sliding-window size (h, w); None = whole image


SINGLE_SCALE = Protocol("single-scale")


def multi_scale(settings: EvalSettings) -> Protocol:
    """mmseg's extra column: the ratios of params/evaluate.yaml, with flips when it says so."""
    return Protocol("multi-scale" + ("+flip" if settings.ms_flip else ""), settings.ms_ratios, settings.ms_flip)


def sliding_window(crop: tuple[int, int]) -> Protocol:
    """Crop-sized windows over the whole image at its test size (a third column some papers report)."""
    return Protocol("sliding-window", window=crop)


def _windows(length: int, crop: int, stride: int) -> list[int]:
    """Start offsets covering [0, length) with windows of ``crop`` (the last one flush with the end)."""
    count = max(length - crop + stride - 1, 0) // stride + 1
    return sorted({max(min(i * stride + crop, length) - crop, 0) for i in range(count)})


def forward_logits(model: nn.Module, x: torch.Tensor, window: tuple[int, int] | None) -> torch.Tensor:
    """(1, 3, h, w) normalised input -> (1, C, h, w) logits, whole image or by sliding windows."""
    if window is None:
        return model(x)["out"]
    (h, w), (ch, cw) = x.shape[-2:], window
    sh, sw = math.ceil(ch * 2 / 3), math.ceil(cw * 2 / 3)
    total, count = None, torch.zeros(1, 1, h, w, device=x.device)
    for top in _windows(h, ch, sh):
        for left in _windows(w, cw, sw):
            logits = model(x[..., top:top + ch, left:left + cw])["out"].float()
            if total is None:
                total = torch.zeros(1, logits.shape[1], h, w, device=x.device)
            total[..., top:top + ch, left:left + cw] += logits
            count[..., top:top + ch, left:left + cw] += 1
    return total / count


@dataclass(frozen=True)
class InputSpec:
    """How an image is fed to the model: the test size, the normalisation and the numerics of the run."""

    eval_scale: tuple[int, int] | None  # keep-ratio fit at evaluation; None = native size
    mean: Sequence[float]
    std: Sequence[float]
    dtype: torch.dtype | None = None    # autocast dtype; None = fp32
    channels_last: bool = True

    @classmethod
    def of(cls, cfg: CellConfig, device: torch.device) -> "InputSpec":
        """The cell's evaluation input: its test size and normalisation, at ``evaluate.precision`` (fp32 by
        default, as the reference scores; never the training precision)."""
        return cls(cfg.data.eval_scale, cfg.train.mean, cfg.train.std,
                   resolve_precision(cfg.evaluate.precision, device), cfg.train.channels_last)


class OutOfMemoryFallback:
    """What an evaluation does when one forward does not fit the GPU: that image's pass at that scale (and
    flip) is done again with its logits taken to the CPU before they are resized to the label and summed
    there; if the forward itself still does not fit, it runs on a CPU copy of the model. The passes are
    summed in the same order as always, so the prediction is the same (to the last bit on a CPU; on a GPU
    up to the CPU's rounding of the resize and softmax). One warning per image and scale names them."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self._cpu_model: nn.Module | None = None
        self.retried: list[tuple[str, float]] = []

    def cpu_model(self) -> nn.Module:
        """A CPU copy of the model, made without allocating anything on the GPU (which has just run out):
        each parameter and buffer is copied straight to the CPU and the module tree is deep-copied around
        those copies (``copy.deepcopy(model).cpu()`` would first clone every tensor on the GPU)."""
        if self._cpu_model is None:
            memo: dict[int, Any] = {}
            for tensor in self.model.parameters():
                memo[id(tensor)] = nn.Parameter(tensor.detach().to("cpu", copy=True), tensor.requires_grad)
            for tensor in self.model.buffers():
                memo[id(tensor)] = tensor.detach().to("cpu", copy=True)
            self._cpu_model = copy.deepcopy(self.model, memo).eval()
        return self._cpu_model

    def retry(self, source: torch.Tensor, ratio: float, flip: bool, protocol: Protocol, spec: InputSpec,
              several: bool, name: str) -> torch.Tensor:
        """One pass (``ratio``, ``flip``) of ``source`` that ran out of memory, done again off the GPU."""
        if source.device.type == "cuda":
            torch.cuda.empty_cache()
        cpu = torch.device("cpu")
        try:
            part, how = _pass(self.model, source, ratio, flip, protocol, spec, several, cpu), \
                "its logits resized and summed on the CPU"
        except torch.OutOfMemoryError:
            if source.device.type == "cuda":
                torch.cuda.empty_cache()
            part, how = _pass(self.cpu_model(), source.cpu(), ratio, flip, protocol, spec, several, cpu), \
                "the forward pass on the CPU"
        if (name, ratio) not in self.retried:
            self.retried.append((name, ratio))
            warnings.warn(f"evaluation: {name or 'an image'} at scale {ratio}{' (flipped)' if flip else ''} did not fit "
                          f"the GPU's memory; done again with {how} (same prediction, slower)", RuntimeWarning,
                          stacklevel=3)
        return part


def _pass(model: nn.Module, source: torch.Tensor, ratio: float, flip: bool, protocol: Protocol, spec: InputSpec,
          several: bool, out: torch.device | None = None) -> torch.Tensor:
    """One pass of the protocol: (1, 3, H, W) float image -> (1, C, H, W) logits (probabilities when
    ``several`` passes are averaged) at the image's size, on ``out`` (default: the image's device)."""
    height, width = source.shape[-2:]
    size = eval_size(height, width, spec.eval_scale, ratio)
    x = F.interpolate(source, size=size, mode="bilinear", align_corners=False).round_() \
        if size != (height, width) else source                          # as a uint8 resize would
    x = normalize(x, spec.mean, spec.std)
    if spec.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    with torch.autocast(source.device.type, dtype=spec.dtype or torch.bfloat16, enabled=spec.dtype is not None):
        logits = forward_logits(model, x.flip(-1) if flip else x, protocol.window).float()
    if out is not None:
        logits = logits.to(out)
    logits = F.interpolate(logits.flip(-1) if flip else logits, size=(height, width), mode="bilinear",
                           align_corners=False)                        # (1, C, H, W)
    return logits.softmax(1) if several else logits


@torch.inference_mode()
def predict(model: nn.Module, image: torch.Tensor, protocol: Protocol, spec: InputSpec,
            fallback: OutOfMemoryFallback | None = None, name: str = "") -> torch.Tensor:
    """uint8 (3, H, W) image on the model's device -> (H, W) predicted class indices (int64) on that device.
    A pass that runs out of GPU memory is done again by ``fallback`` (:class:`OutOfMemoryFallback`)."""
    source = image.float()[None]
    several = len(protocol.ratios) > 1 or protocol.flip
    score = None
    for ratio in protocol.ratios:
        for flip in (False, True) if protocol.flip else (False,):
            try:
                part = _pass(model, source, ratio, flip, protocol, spec, several)
            except torch.OutOfMemoryError:
                fallback = fallback or OutOfMemoryFallback(model)
                part = fallback.retry(source, ratio, flip, protocol, spec, several, name)
                score = None if score is None else score.to(part.device)  # from here on summed on the CPU
            score = part if score is None else score.add_(part.to(score.device))
    return score.argmax(1)[0].to(image.device)


@dataclass
class SplitResult:
    matrices: dict[str, ConfusionMatrix]
    images: int
    samples: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]  # (image, label, prediction) on the CPU


def evaluate_split(model: nn.Module, prepared_dir: str | Path, split: str, *, num_classes: int,
                   spec: InputSpec, protocols: list[Protocol], device: torch.device, workers: int = 0,
                   rank: int = 0, world: int = 1, predictions_dir: str | Path | None = None,
                   keep_samples: int = 0) -> SplitResult:
    """Score this rank's share (every ``world``-th image) of ``split`` under each protocol. The caller
    sums the matrices across ranks. Predictions of the first protocol go to ``predictions_dir``."""
    dataset = SegmentationDataset(prepared_dir, split)
    share = Subset(dataset, range(rank, len(dataset), world))
    loader = DataLoader(share, batch_size=None, num_workers=workers, pin_memory=device.type == "cuda",
                        worker_init_fn=worker_init)
    matrices = {p.name: ConfusionMatrix(num_classes, device) for p in protocols}
    samples: list[Any] = []
    model.eval()
    fallback = OutOfMemoryFallback(model)
    for image, label, name in loader:
        check_label(label, num_classes, name)
        image, target = image.to(device, non_blocking=True), label.to(device, non_blocking=True)
        for k, protocol in enumerate(protocols):
            prediction = predict(model, image, protocol, spec, fallback, name)
            matrices[protocol.name].update(prediction, target)
            if k == 0 and predictions_dir is not None:
                write_png(prediction.to(torch.uint8)[None].cpu(), str(Path(predictions_dir) / name))
            if k == 0 and len(samples) < keep_samples:
                samples.append((image.cpu(), label, prediction.cpu()))
    return SplitResult(matrices, len(share), samples)


def summarize(matrix: ConfusionMatrix, class_names: list[str]) -> dict[str, Any]:
    """metrics.json's numbers: mIoU, aAcc, mAcc (percent) and per-class IoU / accuracy by class name."""
    values = matrix.compute()
    if len(class_names) != matrix.num_classes:
        raise DatasetError(f"meta.json lists {len(class_names)} classes but the model has {matrix.num_classes}")
    per_class = lambda key: {n: (None if math.isnan(v) else round(v, 4)) for n, v in zip(class_names, values[key])}
    return {"mIoU": round(values["mIoU"], 4), "aAcc": round(values["aAcc"], 4), "mAcc": round(values["mAcc"], 4),
            "per_class_iou": per_class("iou"), "per_class_acc": per_class("acc"), "pixels": values["pixels"]}
