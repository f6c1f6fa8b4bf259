"""The memory plan: every cell's predicted GPU memory per precision, and what fits on common GPUs.

Each (cell, precision) entry holds two fake-tensor predictions (micro-batches 2 and 4, deeplab.memory) and
the key they were made for (network, classes, crop, precision, torch version). Everything else, the peak at
any micro-batch and the largest micro-batch a GPU size takes, follows from the line through them. The plan
is stored as a small JSON file so the README table it renders can be checked without predicting again;
an entry whose key no longer matches params is stale and is predicted again.
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

import pandas as pd
import torch

from deeplab.config import CellConfig, Params
from deeplab.evaluate import multi_scale
from deeplab.model import ASPP_RATES
from deeplab.memory import (FRAGMENTATION, GIB, POINTS, RESERVED_GIB, Line, ModelShape, StepMemory,
                            fit_line, gpus_for_whole_batch, largest_fitting, predict_evaluation, predict_step,
                            usable_bytes)
from deeplab.transforms import eval_size

PRECISIONS = ("bf16", "fp32")
GPU_SIZES = (24, 40, 80)     # GiB, the README's columns
BEGIN = "<!-- memory-plan:begin -->"
END = "<!-- memory-plan:end -->"


def entry_key(shape: ModelShape) -> dict[str, Any]:
    return {**dataclasses.asdict(shape), "crop": list(shape.crop), "aspp_rates": list(ASPP_RATES[shape.output_stride]),
            "torch": torch.__version__.split("+")[0]}


def evaluation_passes(cfg: CellConfig) -> dict[str, dict[str, list[int]]]:
    """The largest pass of each evaluation protocol: the label's size (``image``) and the input's (``size``).
    With a keep-ratio test size (h, w) the largest image a fit can give is min(h, w) x max(h, w); at native
    size (Cityscapes) the dataset's base scale is its images' size."""
    scale = cfg.data.eval_scale or cfg.data.base_scale
    image = (min(scale), max(scale))
    protocol = multi_scale(cfg.evaluate)
    return {name: {"image": list(image), "size": list(eval_size(*image, cfg.data.eval_scale, ratio))}
            for name, ratio in (("single-scale", 1.0), (protocol.name, max(protocol.ratios)))}


def evaluation_key(cfg: CellConfig) -> dict[str, Any]:
    shape = ModelShape.of(cfg, cfg.evaluate.precision)
    return {**{k: v for k, v in entry_key(shape).items() if k not in ("crop", "aux_channels")},
            "passes": evaluation_passes(cfg)}


def build(params: Params, preset: str, cells: Iterable[str], stored: dict[str, Any] | None = None,
          progress: Callable[[str], None] = lambda line: None) -> dict[str, Any]:
    """The plan of ``cells``: stored entries whose key still matches are kept, the others predicted."""
    entries = dict((stored or {}).get("entries", {}))
    for cell_id in cells:
        cfg = params.resolve(cell_id, preset)
        if entries.get(f"{cell_id}/eval", {}).get("key") != evaluation_key(cfg):
            progress(f"predicting {cell_id}'s evaluation passes")
            shape = ModelShape.of(cfg, cfg.evaluate.precision)
            entries[f"{cell_id}/eval"] = {"key": evaluation_key(cfg), "peaks": {
                name: predict_evaluation(shape, tuple(p["image"]), tuple(p["size"]), name != "single-scale")
                for name, p in evaluation_passes(cfg).items()}}
        for precision in PRECISIONS:
            cfg = params.resolve(cell_id, preset)
            shape = ModelShape.of(cfg, precision)
            name = f"{cell_id}/{precision}"
            if entries.get(name, {}).get("key") == entry_key(shape):
                continue
            progress(f"predicting {name} at micro-batches {', '.join(map(str, POINTS))}")
            entries[name] = {"key": entry_key(shape), "points": [dataclasses.asdict(predict_step(shape, n, cfg.train))
                                                                for n in POINTS]}
    return {"reserved_gib": RESERVED_GIB, "fragmentation": FRAGMENTATION, "entries": entries}


def line_of(entry: dict[str, Any]) -> Line:
    return fit_line(*((n, point["total"]) for n, point in zip(POINTS, entry["points"])))


def at_share(entry: dict[str, Any], images: int) -> StepMemory:
    """The predicted split at ``images`` per GPU: fixed parts from the larger point, activations scaled."""
    large = StepMemory(**entry["points"][-1])
    total = line_of(entry).at(images)
    fixed = large.parameters + large.gradients + large.optimizer
    return StepMemory(large.parameters, large.gradients, large.optimizer, int(total - fixed), int(total))


def stale(plan: dict[str, Any], params: Params, preset: str) -> list[str]:
    """The entries of ``preset``'s cells that are missing or were predicted for other settings."""
    entries = plan.get("entries", {})
    return [f"{cell}/{p}" for cell in params.cells for p in PRECISIONS
            if entries.get(f"{cell}/{p}", {}).get("key") != entry_key(ModelShape.of(params.resolve(cell, preset), p))] \
        + [f"{cell}/eval" for cell in params.cells
           if entries.get(f"{cell}/eval", {}).get("key") != evaluation_key(params.resolve(cell, preset))]


def fits(entry: dict[str, Any], images: int, gpu_gib: float) -> str:
    """'16' (the whole share at once), '8 x 2' (micro-batch x accumulation steps) or '-' (nothing fits)."""
    micro = largest_fitting(line_of(entry), images, gpu_gib)
    if micro is None:
        return "-"
    steps = images // micro  # micro divides the share
    return str(micro) if steps == 1 else f"{micro} x {steps}"


def gpus_keeping_statistics(entry: dict[str, Any], batch: int, gpu_gib: float) -> str:
    """'2' (GPUs that each hold their whole share, SyncBatchNorm over the whole batch) or '-'."""
    gpus = gpus_for_whole_batch(line_of(entry), batch, gpu_gib)
    return "-" if gpus is None else str(gpus)


def evaluation_peaks(plan: dict[str, Any], cell_id: str) -> dict[str, int]:
    """Peak bytes of each protocol's largest pass, single scale first (the stored JSON sorts its keys)."""
    peaks = plan["entries"][f"{cell_id}/eval"]["peaks"]
    return {name: peaks[name] for name in sorted(peaks, key=lambda name: name != "single-scale")}


def evaluation_fits(plan: dict[str, Any], cell_id: str, gpu_gib: float) -> dict[str, bool]:
    """Per protocol, whether its largest pass fits a GPU of ``gpu_gib`` (else evaluation falls back to the
    CPU for such passes: same numbers, slower)."""
    return {name: peak <= usable_bytes(gpu_gib) for name, peak in evaluation_peaks(plan, cell_id).items()}


def frame(plan: dict[str, Any], params: Params, preset: str, gpu_sizes: Iterable[int] = GPU_SIZES,
          cells: Iterable[str] | None = None, reference: Mapping[str, Any] | None = None) -> pd.DataFrame:
    """One row per cell: the peak at its whole per-GPU share in each precision, what fits per GPU, and
    (``reference``: cell -> deeplab.reference.Spent or None) the peak the reference's own log reports."""
    rows = []
    for cell_id in cells or params.cells:
        images = params.resolve(cell_id, preset).share()
        row = {"cell": cell_id, "images/GPU": images}
        for precision in PRECISIONS:
            entry = plan["entries"][f"{cell_id}/{precision}"]
            row[f"{precision} peak (GiB)"] = f"{line_of(entry).at(images) / GIB:.1f}"
        row["eval peak (GiB): single / ms+flip"] = " / ".join(
            f"{peak / GIB:.1f}" for peak in evaluation_peaks(plan, cell_id).values())
        for size in gpu_sizes:
            row[f"{size} GB: bf16 / fp32"] = " / ".join(
                fits(plan["entries"][f"{cell_id}/{p}"], images, size) for p in PRECISIONS)
        if reference is not None:
            spent = reference.get(cell_id)
            row["reference, fp32, 2 images/GPU (its log)"] = \
                "-" if spent is None or spent.max_gpu_gb is None else f"{spent.max_gpu_gb:.1f} GB"
        rows.append(row)
    return pd.DataFrame(rows)


def statistics_frame(plan: dict[str, Any], params: Params, preset: str, gpu_sizes: Iterable[int] = GPU_SIZES,
                     cells: Iterable[str] | None = None) -> pd.DataFrame:
    """One row per cell: how many GPUs of each size, each running its whole share under SyncBatchNorm,
    keep the reference's images per BatchNorm statistic (its whole batch)."""
    rows = []
    for cell_id in cells or params.cells:
        cfg = params.resolve(cell_id, preset)
        row = {"cell": cell_id, "images per statistic": cfg.reference_batchnorm_images}
        for size in gpu_sizes:
            row[f"{size} GB: bf16 / fp32"] = " / ".join(
                gpus_keeping_statistics(plan["entries"][f"{cell_id}/{p}"], cfg.data.batch_size, size) for p in PRECISIONS)
        rows.append(row)
    return pd.DataFrame(rows)


def render(plan: dict[str, Any], params: Params, preset: str, reference: Mapping[str, Any] | None = None) -> str:
    table = frame(plan, params, preset, reference=reference).to_markdown(index=False, tablefmt="pipe",
                                                                         disable_numparse=True)
    gpus = statistics_frame(plan, params, preset).to_markdown(index=False, tablefmt="pipe", disable_numparse=True)
    return (f"{table}\n\nGPUs (SyncBatchNorm, each running its whole share at once) that keep the reference's "
            f"images per BatchNorm statistic, per GPU size:\n\n{gpus}\n")


def read(path: Path) -> dict[str, Any] | None:
    return json.loads(path.read_text()) if path.is_file() else None
