"""Compute budget of a cell: training FLOPs and the GPU-hours they take at an assumed achieved rate.

Used to size job requests (runtime on a cluster) and to tell users what a cell costs. FLOPs are the
reference model's forward FLOPs at 512x512 (measured with torch.utils.flop_counter; deeplab.model),
scaled by the crop's pixel count, times 3 for forward + backward, times the images the schedule shows.
"""
from __future__ import annotations

from deeplab.config import CellConfig
from deeplab.model import FORWARD_GFLOPS_512  # 21 classes; the head's class count changes it by < 0.1 %
# Achieved training rates assumed for planning: about 30 % of the dense bf16 peak of each GPU (H100 SXM
# 989 TFLOP/s, A100 312 TFLOP/s), typical of a convnet with BatchNorm in bf16 and channels-last.
ACHIEVED_TFLOPS = {"H100": 300.0, "A100": 100.0}


def training_images(config: CellConfig, num_train_images: int | None = None) -> int:
    """Images the schedule shows: iterations x global batch (the official train count by default)."""
    count = config.data.expected_counts["train"] if num_train_images is None else num_train_images
    return config.max_iters(count) * config.data.batch_size


def training_flops(config: CellConfig, num_train_images: int | None = None) -> float:
    """Forward + backward FLOPs of the whole schedule (3 x forward)."""
    height, width = config.data.crop_size
    per_image = FORWARD_GFLOPS_512[(config.cell.backbone, config.cell.output_stride)] * 1e9
    return training_images(config, num_train_images) * 3 * per_image * (height * width) / (512 * 512)


def gpu_hours(config: CellConfig, gpu: str = "H100", num_train_images: int | None = None) -> float:
    """GPU-hours of training at ``ACHIEVED_TFLOPS[gpu]`` (evaluation adds well under 1 %)."""
    if gpu not in ACHIEVED_TFLOPS:
        raise KeyError(f"no assumed rate for GPU '{gpu}'; known: {', '.join(ACHIEVED_TFLOPS)}")
    return training_flops(config, num_train_images) / (ACHIEVED_TFLOPS[gpu] * 1e12) / 3600
