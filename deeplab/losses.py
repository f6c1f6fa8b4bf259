"""The training loss of the recipe: cross-entropy averaged over non-ignored pixels, main + weighted aux."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from deeplab.data.labels import IGNORE_INDEX


def criterion(outputs: dict[str, torch.Tensor], labels: torch.Tensor, *, aux_weight: float,
              valid_pixels: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """Loss of one (micro-)batch: ``{"loss": total, "main": ..., "aux": ...}``.

    ``outputs["out"]`` / ``["aux"]`` are (N, C, H, W) logits, ``labels`` (N, H, W) class indices with 255
    ignored. Each term is the sum of per-pixel cross-entropy divided by ``valid_pixels``; by default the
    batch's own count of non-ignored pixels (the reference's mean). With gradient accumulation the caller
    passes the count over the whole per-GPU batch, so the summed micro-batch losses equal the full batch's.
    """
    labels = labels.long()
    if valid_pixels is None:
        valid_pixels = (labels != IGNORE_INDEX).sum()
    denominator = valid_pixels.clamp(min=1).float()
    terms = {"main": F.cross_entropy(outputs["out"].float(), labels, ignore_index=IGNORE_INDEX,
                                     reduction="sum") / denominator}
    total = terms["main"]
    if "aux" in outputs:
        terms["aux"] = F.cross_entropy(outputs["aux"].float(), labels, ignore_index=IGNORE_INDEX,
                                       reduction="sum") / denominator
        total = total + aux_weight * terms["aux"]
    else:
        terms["aux"] = torch.zeros_like(total)
    return {"loss": total, **terms}
