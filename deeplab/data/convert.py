"""Label conversion of one file: read the dataset's encoding, check every value, map it to class indices
with a look-up table, check the size against the image, write a single-channel uint8 PNG.

Workers run this in a process pool; a job returns a problem string (naming the file) instead of raising,
so all violations are reported together.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import scipy.io
from PIL import Image

from deeplab.data.labels import IGNORE_INDEX, ade20k_lut, cityscapes_label_to_train_lut


@dataclass(frozen=True)
class Job:
    kind: str        # 'voc' (palette PNG), 'sbd' (.mat GTcls), 'ade20k' (raw PNG), 'cityscapes' (labelIds)
    source: Path     # label as shipped in the archive
    target: Path     # converted label to write
    image: Path      # its image, for the size check


@dataclass(frozen=True)
class Result:
    problem: str | None  # None when the label is valid and written
    grayscale: bool      # the image is not RGB (ADE20k has some): readers must convert it


def _tables() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """kind -> (valid raw values as a (256,) bool mask, (256,) uint8 look-up table raw -> class index)."""
    identity = np.arange(256, dtype=np.uint8)
    voc_valid = np.zeros(256, bool)
    voc_valid[:21] = voc_valid[IGNORE_INDEX] = True
    sbd_valid = np.zeros(256, bool)
    sbd_valid[:21] = True
    ade_valid = np.zeros(256, bool)
    ade_valid[:151] = True
    from cityscapesscripts.helpers.labels import labels
    city_valid = np.zeros(256, bool)
    city_valid[[l.id for l in labels if 0 <= l.id < 256]] = True
    return {"voc": (voc_valid, identity), "sbd": (sbd_valid, identity),
            "ade20k": (ade_valid, ade20k_lut()), "cityscapes": (city_valid, cityscapes_label_to_train_lut())}


_TABLES: dict[str, tuple[np.ndarray, np.ndarray]] = {}


def convert(job: Job) -> Result:
    """Convert one label; never raises for bad data (the problem is returned, naming the file)."""
    if not _TABLES:  # built once per worker process
        _TABLES.update(_tables())
    valid, lut = _TABLES[job.kind]
    try:
        raw = read_raw(job.kind, job.source)
        with Image.open(job.image) as image:
            size, grayscale = image.size, image.mode != "RGB"
    except (OSError, ValueError, KeyError, IndexError) as err:
        return Result(f"{job.source}: cannot read ({err})", False)
    if raw.shape != (size[1], size[0]):
        return Result(f"{job.source}: label is {raw.shape[1]}x{raw.shape[0]} but image {job.image} is "
                      f"{size[0]}x{size[1]} (width x height)", grayscale)
    histogram = np.bincount(raw.ravel(), minlength=256)
    bad = np.flatnonzero((histogram > 0) & ~valid)
    if bad.size:
        return Result(f"{job.source}: values {bad.tolist()} are not valid {job.kind} labels "
                      f"(allowed: {_describe(valid)})", grayscale)
    write_png(lut[raw], job.target)
    return Result(None, grayscale)


def read_raw(kind: str, path: Path) -> np.ndarray:
    """(H, W) uint8 label as shipped: raw palette indices (never colours) or the SBD class map."""
    if kind == "sbd":
        segmentation = scipy.io.loadmat(path)["GTcls"][0]["Segmentation"][0]
        if segmentation.ndim != 2 or segmentation.max(initial=0) > 255 or segmentation.min(initial=0) < 0:
            raise ValueError(f"GTcls.Segmentation has shape {segmentation.shape}, expected a 2-D class map")
        return segmentation.astype(np.uint8)
    with Image.open(path) as image:
        if image.mode not in ("P", "L"):
            raise ValueError(f"mode {image.mode}, expected a single-channel ('P' or 'L') PNG")
        return np.asarray(image)  # a 'P' image gives its indices here, not colours


def write_png(label: np.ndarray, target: Path) -> None:
    """Single-channel uint8 PNG through a temp name (a killed worker never leaves a truncated label)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    Image.fromarray(np.ascontiguousarray(label, np.uint8)).save(tmp, format="PNG", compress_level=1)  # level 1: 3x faster, ~same size
    os.replace(tmp, target)


def _describe(valid: np.ndarray) -> str:
    values = np.flatnonzero(valid).tolist()
    runs, start = [], values[0]
    for prev, cur in zip(values, values[1:] + [None]):
        if cur != prev + 1 if cur is not None else True:
            runs.append(f"{start}..{prev}" if prev != start else f"{start}")
            start = cur
    return ", ".join(runs)
