"""Pictures of a cell's results, as PNG (matplotlib, Agg backend): per-class IoU bars, learning curves
from train_log.csv, and a grid of image / ground truth / prediction in the dataset's palette."""
from __future__ import annotations

import csv
from pathlib import Path
from typing import Any, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after choosing the backend)
import torch  # noqa: E402

from deeplab import atomic  # noqa: E402
from deeplab.data.labels import IGNORE_INDEX  # noqa: E402


def _save(fig: Any, path: str | Path) -> Path:
    """Write to a temporary name and rename: a killed job never leaves half a PNG."""
    try:
        with atomic.replacing(path, "wb", suffix=".png") as f:
            fig.savefig(f, format="png", dpi=100, bbox_inches="tight")
    finally:
        plt.close(fig)
    return Path(path)


def iou_bars(per_class_iou: dict[str, float | None], path: str | Path, title: str) -> Path:
    """Horizontal bar per class (classes without pixels shown empty), the mIoU as a line."""
    names = list(per_class_iou)
    values = [v if v is not None else 0.0 for v in per_class_iou.values()]
    defined = [v for v in per_class_iou.values() if v is not None]
    fig, ax = plt.subplots(figsize=(7, max(3.0, 0.18 * len(names) + 1)))
    ax.barh(range(len(names)), values, color="tab:blue")
    ax.set_yticks(range(len(names)), names, fontsize=6 if len(names) > 40 else 8)
    ax.invert_yaxis()
    if defined:
        ax.axvline(sum(defined) / len(defined), color="tab:red", linestyle="--", label="mIoU")
        ax.legend(loc="lower right")
    ax.set_xlim(0, 100)
    ax.set_xlabel("IoU (%)")
    ax.set_title(title)
    return _save(fig, path)


def learning_curves(train_log: str | Path, path: str | Path, title: str,
                    reference: list[dict[str, str]] | None = None) -> Path:
    """Loss (total, main, aux) and learning rate against the iteration; with ``reference`` (its parsed
    training log) its total loss and learning rate dashed beside ours."""
    with Path(train_log).open() as f:
        rows = list(csv.DictReader(f))
    it = [int(r["iteration"]) for r in rows]
    fig, (ax_loss, ax_lr) = plt.subplots(1, 2, figsize=(10, 3.5))
    for key in ("loss", "main_loss", "aux_loss"):
        ax_loss.plot(it, [float(r[key]) for r in rows], label=key)
    if reference:
        ref_it = [int(r["iteration"]) for r in reference]
        ax_loss.plot(ref_it, [float(r["loss_total"]) for r in reference], "k--", label="reference loss")
        ax_lr.plot(ref_it, [float(r["learning_rate"]) for r in reference], "k--", label="reference")
    ax_loss.set_xlabel("iteration")
    ax_loss.set_ylabel("cross-entropy")
    ax_loss.legend()
    ax_lr.plot(it, [float(r["lr"]) for r in rows], color="tab:green", label="ours")
    if reference:
        ax_lr.legend()
    ax_lr.set_xlabel("iteration")
    ax_lr.set_ylabel("learning rate")
    fig.suptitle(title)
    return _save(fig, path)


def colorize(label: torch.Tensor, palette: Sequence[Sequence[int]]) -> torch.Tensor:
    """(H, W) class indices -> (H, W, 3) uint8 colours; ignored pixels white."""
    table = torch.full((256, 3), 255, dtype=torch.uint8)
    table[:len(palette)] = torch.tensor([list(c)[:3] for c in palette], dtype=torch.uint8)
    return table[label.long().clamp(0, 255)]


def prediction_grid(samples: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]],
                    palette: Sequence[Sequence[int]], path: str | Path, title: str) -> Path:
    """One row per sample: image (uint8 (3, H, W)), ground truth and prediction in the palette."""
    rows = max(len(samples), 1)
    fig, axes = plt.subplots(rows, 3, figsize=(9, 2.6 * rows), squeeze=False)
    for row, (image, label, prediction) in enumerate(samples):
        pictures = (image.permute(1, 2, 0), colorize(label, palette), colorize(prediction, palette))
        for ax, picture, name in zip(axes[row], pictures, ("image", "ground truth", "prediction")):
            ax.imshow(picture.numpy())
            ax.set_title(name if row == 0 else "", fontsize=9)
    for ax in axes.flat:
        ax.axis("off")
    fig.suptitle(f"{title} (white = ignored, label {IGNORE_INDEX})")
    return _save(fig, path)
