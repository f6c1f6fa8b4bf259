"""The training split kept a second time as uncompressed uint8 arrays, so that loader workers decode nothing.

A 2048x1024 Cityscapes PNG takes about 30 ms to decode, more than the rest of a training sample's chain; the
same pixels as a ``.npy`` file are read by memory map, and the crop-first chain (deeplab.transforms) then
reads only the rows and columns its crop needs. ``datasets.<name>.train_arrays: true`` makes the
``store_arrays`` stage write, for every training pair of the prepared folder, ``<image path>.npy`` ((H, W, 3)
RGB, as the loader decodes the image) and ``<label path>.npy`` ((H, W) class indices) under the dataset's
arrays folder (deeplab.paths ``arrays_dir``), beside the prepared one. Disk: 8 MB per 2048x1024 pair,
about 24 GB for Cityscapes' 2,975 training images (their PNGs take about 7 GB).

The arrays are a storage format, not data: they live in a folder (and a stage) of their own so that
turning them on or off rewrites that folder and nothing else. Training orders itself after the stage
through the folder's ``source.json``, which names the prepared split's identity (its manifest hash) and
is the same whether arrays are stored or not; ``stored.json`` says whether they are. The loader reads them
only where they were made from the very split it trains (deeplab.datasets.stored_arrays).
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from deeplab import atomic
from deeplab.data.prepare import in_pool, remove_leftovers, swap_in
from deeplab.datasets import (ARRAYS_SOURCE, ARRAYS_STORED, array_path, manifest_hash, read_image, read_label,
                              read_split)

DESCRIPTION = ("the split also as uncompressed uint8 .npy (image (H, W, 3) RGB, label (H, W)), read by memory map")


def write_pair(prepared: Path, out: Path, image: str, label: str) -> None:
    """Decode one training pair as the loader would and store both as arrays under ``out`` (``image`` and
    ``label`` are paths relative to the prepared folder ``prepared``)."""
    for relative, pixels in ((image, read_image(prepared / image).permute(1, 2, 0)), (label, read_label(prepared / label))):
        target = array_path(out, relative)
        target.parent.mkdir(parents=True, exist_ok=True)
        np.save(target, np.ascontiguousarray(pixels.numpy()), allow_pickle=False)


def store(prepared: Path, out: Path, split: str, enabled: bool, workers: int | None = None) -> dict[str, object]:
    """(Re)build the arrays folder ``out`` of the prepared folder's ``split``: its arrays where ``enabled``,
    and in any case ``source.json`` (the split's identity) and ``stored.json``. Built beside ``out`` and
    swapped in, so a killed run leaves the old folder or the new one, never a mix. Returns stored.json."""
    pairs = [(str(image.relative_to(prepared)), str(label.relative_to(prepared)))
             for image, label in read_split(prepared, split)]
    remove_leftovers(out)
    build = out.parent / f".{out.name}.build-{os.getpid()}"
    build.mkdir()
    if enabled:
        in_pool(_write_pair, [(prepared, build, image, label) for image, label in pairs], workers)
    stored = {"stored": enabled, "split": split, "pairs": len(pairs) if enabled else 0,
              "format": DESCRIPTION if enabled else "none: the loader decodes the prepared files"}
    atomic.write_json(build / ARRAYS_STORED, stored, indent=1)
    atomic.write_json(build / ARRAYS_SOURCE, {"split": split, "data_hash": manifest_hash(prepared, split)}, indent=1)
    swap_in(build, out)
    return stored


def _write_pair(job: tuple[Path, Path, str, str]) -> None:
    write_pair(*job)
