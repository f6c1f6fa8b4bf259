"""Segmentation metrics from a confusion matrix accumulated on the device.

``ConfusionMatrix.update`` adds one batch with a single ``bincount`` and no host synchronisation (ignored
pixels go to an overflow bin instead of being filtered out, which would need a sync); ``compute`` turns
the matrix into mIoU, aAcc, mAcc and per-class IoU as the recipe defines them (classes whose union is 0
are left out of the mean).
"""
from __future__ import annotations

import math

import torch

from deeplab.data.labels import IGNORE_INDEX


class ConfusionMatrix:
    """(C, C) counts, rows = ground truth, columns = prediction, on ``device``."""

    def __init__(self, num_classes: int, device: torch.device | str = "cpu",
                 ignore_index: int = IGNORE_INDEX) -> None:
        self.num_classes, self.ignore_index = num_classes, ignore_index
        self.matrix = torch.zeros(num_classes, num_classes, dtype=torch.int64, device=device)

    def update(self, prediction: torch.Tensor, target: torch.Tensor) -> None:
        """Add predictions and targets of any matching shape (class indices; ``ignore_index`` skipped).
        Target values outside [0, C) other than the ignore index are counted as ignored too."""
        c = self.num_classes
        target = target.to(self.matrix.device, torch.int32)
        prediction = prediction.to(self.matrix.device, torch.int32)
        valid = (target >= 0) & (target < c)
        index = torch.where(valid, target * c + prediction, c * c)  # c*c = overflow bin for ignored pixels
        counts = torch.bincount(index.reshape(-1), minlength=c * c + 1)[:c * c]
        self.matrix += counts.view(c, c)

    def merge(self, other: torch.Tensor) -> None:
        self.matrix += other.to(self.matrix.device)

    def compute(self) -> dict[str, float | list[float]]:
        """mIoU, aAcc, mAcc in percent; ``iou`` / ``acc`` per class (NaN where undefined)."""
        m = self.matrix.double().cpu()
        true_positive = m.diag()
        gt_total, pred_total = m.sum(1), m.sum(0)
        union = gt_total + pred_total - true_positive
        iou = torch.where(union > 0, true_positive / union.clamp(min=1), torch.full_like(union, math.nan))
        acc = torch.where(gt_total > 0, true_positive / gt_total.clamp(min=1), torch.full_like(union, math.nan))
        pixels = m.sum()
        return {"mIoU": _percent(torch.nanmean(iou)), "aAcc": _percent(true_positive.sum() / pixels.clamp(min=1)),
                "mAcc": _percent(torch.nanmean(acc)), "iou": [_percent(v) for v in iou],
                "acc": [_percent(v) for v in acc], "pixels": int(pixels)}


def _percent(value: torch.Tensor) -> float:
    return float(value) * 100
