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

from deeplab.config import Params
from deeplab.model import ASPP_RATES
from deeplab.memory import (FRAGMENTATION, GIB, POINTS, RESERVED_GIB, Line, ModelShape, StepMemory,
                            fit_line, largest_fitting, predict_step)

PRECISIONS = ("bf16", "fp32")
GPU_SIZES = (24, 40, 80)     # GiB, the README's columns
BEGIN = "<!-- memory-plan:begin -->"
END = "<!-- memory-plan:end -->"


def entry_key(shape: ModelShape) -> dict[str, Any]:
    return {**dataclasses.asdict(shape), "crop": list(shape.crop), "aspp_rates": list(ASPP_RATES[shape.output_stride]),
            "torch": torch.__version__.split("+")[0]}


def build(params: Params, preset: str, cells: Iterable[str], stored: dict[str, Any] | None = None,
          progress: Callable[[str], None] = lambda line: None) -> dict[str, Any]:
    """The plan of ``cells``: stored entries whose key still matches are kept, the others predicted."""
    entries = dict((stored or {}).get("entries", {}))
    for cell_id in cells:
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
            if entries.get(f"{cell}/{p}", {}).get("key") != entry_key(ModelShape.of(params.resolve(cell, preset), p))]


def fits(entry: dict[str, Any], images: int, gpu_gib: float) -> str:
    """'16' (the whole share at once), '8 x 2' (micro-batch x accumulation steps) or '-' (nothing fits)."""
    micro = largest_fitting(line_of(entry), images, gpu_gib)
    if micro is None:
        return "-"
    steps = images // micro  # micro divides the share
    return str(micro) if steps == 1 else f"{micro} x {steps}"


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
        for size in gpu_sizes:
            row[f"{size} GB: bf16 / fp32"] = " / ".join(
                fits(plan["entries"][f"{cell_id}/{p}"], images, size) for p in PRECISIONS)
        if reference is not None:
            spent = reference.get(cell_id)
            row["reference, fp32, 2 images/GPU (its log)"] = \
                "-" if spent is None or spent.max_gpu_gb is None else f"{spent.max_gpu_gb:.1f} GB"
        rows.append(row)
    return pd.DataFrame(rows)


def render(plan: dict[str, Any], params: Params, preset: str, reference: Mapping[str, Any] | None = None) -> str:
    table = frame(plan, params, preset, reference=reference).to_markdown(index=False, tablefmt="pipe",
                                                                         disable_numparse=True)
    return table + "\n"


def read(path: Path) -> dict[str, Any] | None:
    return json.loads(path.read_text()) if path.is_file() else None
