"""The training loss of the recipe, normalised as the reference's 8 GPUs normalise it.

The reference splits the global batch over ``reference_replicas`` (8) GPUs; each averages cross-entropy
over the non-ignored pixels of its own images (2, or 1 for Cityscapes) and DDP averages the 8 gradients.
So the batch loss is the mean over groups of consecutive images of each group's valid-pixel mean, however
many GPUs and micro-batches this run uses: :func:`image_weights` gives each image the weight that makes
``sum_i w_i * (cross-entropy summed over image i)`` exactly that, and :func:`criterion` applies it.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from deeplab.data.labels import IGNORE_INDEX


def valid_pixels(labels: torch.Tensor) -> torch.Tensor:
    """(N, H, W) labels -> (N,) count of non-ignored pixels per image."""
    return (labels != IGNORE_INDEX).flatten(1).sum(1)


def image_weights(group_valid: torch.Tensor, groups: torch.Tensor, world: int,
                  dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Per-image loss weights: ``world / (G * valid pixels of the image's group)``.

    ``group_valid`` (G,) counts each reference group's valid pixels over the whole global batch (summed
    over ranks), ``groups`` (N,) the group of each of this rank's images. DDP averages the ``world`` ranks'
    gradients, hence the factor ``world``; a group without valid pixels contributes nothing."""
    return world / (len(group_valid) * group_valid.clamp(min=1).to(dtype)[groups])


def criterion(outputs: dict[str, torch.Tensor], labels: torch.Tensor, *, aux_weight: float,
              weights: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """Loss of one (micro-)batch: ``{"loss": total, "main": ..., "aux": ...}``.

    ``outputs["out"]`` / ``["aux"]`` are (N, C, H, W) logits, ``labels`` (N, H, W) class indices with 255
    ignored. Each term is ``sum_i weights[i] * (cross-entropy summed over image i's pixels)``; by default
    every image weighs 1 / (the batch's valid pixels): the plain valid-pixel mean of the batch."""
    labels = labels.long()
    dtype = torch.float64 if outputs["out"].dtype == torch.float64 else torch.float32  # fp16/bf16 -> fp32
    if weights is None:
        weights = (1 / valid_pixels(labels).sum().clamp(min=1).to(dtype)).expand(len(labels))

    def term(logits: torch.Tensor) -> torch.Tensor:
        logits = logits.to(dtype)
        per_pixel = F.cross_entropy(logits, labels, ignore_index=IGNORE_INDEX, reduction="none")
        return (per_pixel.flatten(1).sum(1) * weights).sum()
    terms = {"main": term(outputs["out"])}
    terms["aux"] = term(outputs["aux"]) if "aux" in outputs else torch.zeros_like(terms["main"])
    return {"loss": terms["main"] + aux_weight * terms["aux"], **terms}
