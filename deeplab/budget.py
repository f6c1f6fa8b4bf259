"""Compute budget of a cell: training FLOPs and the GPU-hours they take at an assumed achieved rate.

Used to size job requests (runtime on a cluster) and to tell users what a cell costs. FLOPs are the
reference model's forward FLOPs at 512x512 as it trains (the auxiliary head included; measured with
torch.utils.flop_counter, deeplab.model), scaled by the crop's pixel count, times 3 for forward + backward,
times the images the schedule shows.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

from deeplab.config import CellConfig, Params

if TYPE_CHECKING:
    import pandas as pd
from deeplab.data.folder import image_count, source_files
from deeplab.flops import AUX_GFLOPS_512, FORWARD_GFLOPS_512  # 21 classes; the class count changes it by < 0.1 %
# Achieved training rates assumed for planning: 12 % of each GPU's dense bf16 peak (H100 SXM 989 TFLOP/s,
# A100 312 TFLOP/s). Anchors: ordinary PyTorch training of a BatchNorm convnet reaches about a tenth of the
# peak; the best published convnet training, MLPerf ResNet-50 with a hand-tuned stack, stays under a fifth.
# A measured rate replaces this wherever a run exists (the table stage's GPU-hours, `make gpu-check`).
PEAK_BF16_TFLOPS = {"H100": 989.0, "A100": 312.0}
ACHIEVED_SHARE = 0.12
ACHIEVED_TFLOPS = {gpu: peak * ACHIEVED_SHARE for gpu, peak in PEAK_BF16_TFLOPS.items()}


def train_count(config: CellConfig) -> int:
    """The training split's size: the official count, or for a dataset of your own its prepared count (its
    folder's images less the val share before it is prepared; fewer than one batch is the doctor's and
    prepare's refusal, and shows as no iterations here, not as a batch)."""
    if config.data.expected_counts is not None:
        return config.data.expected_counts["train"]
    meta = Path(config.preset.paths.prepared_meta(config.cell.dataset))
    if meta.is_file():
        return int(json.loads(meta.read_text())["counts"]["train"])
    images = image_count(source_files(config.data.source or ""))
    return images - round(images * config.data.val_share)


def training_images(config: CellConfig, num_train_images: int | None = None) -> int:
    """Images the schedule shows: iterations x global batch (the official train count by default)."""
    count = train_count(config) if num_train_images is None else num_train_images
    if count < config.data.batch_size:  # nothing to train on: prepare and the doctor refuse it, naming the count
        return 0
    return config.max_iters(count) * config.data.batch_size


def image_training_flops(config: CellConfig) -> float:
    """Forward + backward FLOPs of one training crop (3 x the training forward, aux head included)."""
    height, width = config.data.crop_size
    stride = config.cell.output_stride
    per_image = (FORWARD_GFLOPS_512[(config.cell.backbone, stride)] + AUX_GFLOPS_512[stride]) * 1e9
    return 3 * per_image * (height * width) / (512 * 512)


def training_flops(config: CellConfig, num_train_images: int | None = None) -> float:
    """Forward + backward FLOPs of the whole schedule."""
    return training_images(config, num_train_images) * image_training_flops(config)


def images_per_second(config: CellConfig, gpu: str = "H100") -> float:
    """Training crops one GPU consumes per second at ``ACHIEVED_TFLOPS[gpu]``: what its loader must feed."""
    return ACHIEVED_TFLOPS[gpu] * 1e12 / image_training_flops(config)


def cost_frame(params: Params, preset: str, measured: Mapping[str, float | None],
               reference: Mapping[str, Any] | None = None) -> "pd.DataFrame":
    """README's cost table: per cell the training FLOPs, the GPU-hours at the assumed rates, the GPU-hours
    measured from its training logs where it has run (``measured``: cell -> hours or None), and what the
    reference's own training log says it spent (``reference``: cell -> deeplab.reference.Spent or None)."""
    import pandas as pd  # here: the Snakefile imports this module for job sizes, and pandas costs it a second
    rows = []
    for cell_id in params.cells:
        config = params.resolve(cell_id, preset)
        hours = measured.get(cell_id)
        spent = (reference or {}).get(cell_id)
        theirs = spent.gpu_hours if spent is not None else None
        rows.append({"cell": cell_id, "images seen": f"{training_images(config):,}",
                     "crop": "x".join(map(str, config.data.crop_size)),
                     "training PFLOP": f"{training_flops(config) / 1e15:,.0f}",
                     **{f"{gpu} GPU-hours (assumed)": f"{estimated_gpu_hours(config, gpu):.1f}" for gpu in ACHIEVED_TFLOPS},
                     "measured GPU-hours": "-" if hours is None else f"{hours:.1f}",
                     "reference GPU-hours (its log)": "-" if theirs is None
                     else f"{theirs:.1f} ({spent.seconds_per_iter:.2f} s/it x {spent.gpus})"})
    total = sum(training_flops(params.resolve(c, preset)) for c in params.cells)
    rows.append({"cell": f"all {len(params.cells)}", "images seen": "", "crop": "",
                 "training PFLOP": f"{total / 1e15:,.0f}",
                 **{f"{gpu} GPU-hours (assumed)": f"{total / (rate * 1e12) / 3600:.0f}"
                    for gpu, rate in ACHIEVED_TFLOPS.items()}, "measured GPU-hours": "",
                 "reference GPU-hours (its log)": ""})
    return pd.DataFrame(rows)


def estimated_gpu_hours(config: CellConfig, gpu: str = "H100", num_train_images: int | None = None) -> float:
    """GPU-hours of training at ``ACHIEVED_TFLOPS[gpu]`` (evaluation adds well under 1 %)."""
    if gpu not in ACHIEVED_TFLOPS:
        raise KeyError(f"no assumed rate for GPU '{gpu}'; known: {', '.join(ACHIEVED_TFLOPS)}")
    return training_flops(config, num_train_images) / (ACHIEVED_TFLOPS[gpu] * 1e12) / 3600
