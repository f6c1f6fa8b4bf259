"""Label conversion of one file: read the dataset's encoding, check every value, map it to class indices
with a look-up table, check the size against the image, write a single-channel uint8 PNG.

Workers run this in a process pool; a job returns a problem string (naming the file) instead of raising,
so all violations are reported together.
"""
from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import scipy.io
from PIL import Image

from deeplab import atomic
from deeplab.data.labels import IGNORE_INDEX, ade20k_lut, cityscapes_label_to_train_lut


INVALID = 254  # marks raw values outside a dataset's encoding; every dataset has < 254 classes


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


def _tables() -> dict[str, tuple[np.ndarray, list[int]]]:
    """kind -> (valid raw values as a (256,) bool mask, look-up list raw -> class index, INVALID for
    values the encoding does not define)."""
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
    tables = {"voc": (voc_valid, identity), "sbd": (sbd_valid, identity),
              "ade20k": (ade_valid, ade20k_lut()), "cityscapes": (city_valid, cityscapes_label_to_train_lut())}
    return {kind: (valid, np.where(valid, lut, INVALID).tolist()) for kind, (valid, lut) in tables.items()}


_TABLES: dict[str, tuple[np.ndarray, list[int]]] = {}


def convert(job: Job) -> Result:
    """Convert one label; never raises for bad data (the problem is returned, naming the file)."""
    if not _TABLES:  # built once per worker process
        _TABLES.update(_tables())
    valid, lut = _TABLES[job.kind]
    try:
        raw = read_raw(job.kind, job.source)
        with Image.open(job.image) as image:  # header only: size and mode, no pixel decoding
            size, grayscale = image.size, image.mode != "RGB"
    except (OSError, ValueError, KeyError, IndexError) as err:
        return Result(f"{job.source}: cannot read ({err})", False)
    if raw.size != size:
        return Result(f"{job.source}: label is {raw.size[0]}x{raw.size[1]} but image {job.image} is "
                      f"{size[0]}x{size[1]} (width x height)", grayscale)
    # invalid raw values map to INVALID, which no dataset uses as a class: one C pass maps and marks,
    # and a memchr over the result finds any mark (3x cheaper than a histogram of every label)
    mapped = raw.point(lut).tobytes()
    if mapped.find(INVALID.to_bytes(1, "big")) >= 0:
        bad = np.flatnonzero((np.asarray(raw.histogram()) > 0) & ~valid)
        return Result(f"{job.source}: values {bad.tolist()} are not valid {job.kind} labels "
                      f"(allowed: {_describe(valid)})", grayscale)
    write_png(np.frombuffer(mapped, np.uint8).reshape(size[1], size[0]), job.target)
    return Result(None, grayscale)


def read_raw(kind: str, path: Path) -> Image.Image:
    """The label as shipped, as an 'L' image of raw values: palette indices (never colours) or the SBD
    class map."""
    if kind == "sbd":
        segmentation = scipy.io.loadmat(path)["GTcls"][0]["Segmentation"][0]
        if segmentation.ndim != 2 or segmentation.max(initial=0) > 255 or segmentation.min(initial=0) < 0:
            raise ValueError(f"GTcls.Segmentation has shape {segmentation.shape}, expected a 2-D class map")
        return Image.fromarray(np.ascontiguousarray(segmentation, np.uint8))
    image = Image.open(path)
    if image.mode == "P":  # reinterpret the indices as grey values; .convert() would map colours
        return Image.frombytes("L", image.size, image.tobytes())
    if image.mode != "L":
        raise ValueError(f"mode {image.mode}, expected a single-channel ('P' or 'L') PNG")
    image.load()
    return image


def encode_png(label: np.ndarray, level: int = 1) -> bytes:
    """(H, W) uint8 as a greyscale PNG. Every row uses filter 'None' and zlib level 1: for label maps
    (long runs of one value) this compresses about as well as PIL's adaptive filters at 3-4x the speed."""
    height, width = label.shape
    rows = np.zeros((height, width + 1), np.uint8)  # a leading 0 per row: filter type None
    rows[:, 1:] = label
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)  # 8-bit greyscale, no interlace
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", header) + _chunk(b"IDAT", zlib.compress(rows, level)) \
        + _chunk(b"IEND", b"")


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def write_png(label: np.ndarray, target: Path) -> None:
    """Single-channel uint8 PNG through a temp name (a killed worker never leaves a truncated label)."""
    atomic.write_bytes(target, encode_png(label))


def _describe(valid: np.ndarray) -> str:
    values = np.flatnonzero(valid).tolist()
    runs, start = [], values[0]
    for prev, cur in zip(values, values[1:] + [None]):
        if cur != prev + 1 if cur is not None else True:
            runs.append(f"{start}..{prev}" if prev != start else f"{start}")
            start = cur
    return ", ".join(runs)
