"""The training split kept a second time as uncompressed uint8 arrays, so that loader workers decode nothing.

A 2048x1024 Cityscapes PNG takes about 30 ms to decode, more than the rest of a training sample's chain; the
same pixels as a ``.npy`` file are read by memory map, and the crop-first chain (deeplab.transforms) then
reads only the rows and columns its crop needs. ``datasets.<name>.train_arrays: true`` makes the prepare
stage write, for every training pair, ``arrays/<image path>.npy`` ((H, W, 3) RGB, as the loader decodes the
image) and ``arrays/<label path>.npy`` ((H, W) class indices) inside the prepared folder; the image and label
files stay (evaluation and the tools read them). Disk: 8 MB per 2048x1024 pair, about 24 GB for Cityscapes'
2,975 training images (their PNGs take about 7 GB).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

FOLDER = "arrays"
DESCRIPTION = ("train split also as uncompressed uint8 .npy under arrays/ (image (H, W, 3) RGB, label (H, W)), "
               "read by memory map")


def array_path(root: Path, relative: str | Path) -> Path:
    """Where the array of the prepared folder's file ``relative`` lives."""
    return root / FOLDER / f"{relative}.npy"


def write_pair(root: Path, image: str, label: str) -> None:
    """Decode one training pair as the loader would and store both as arrays (``image`` and ``label`` are
    paths relative to ``root``)."""
    from deeplab.datasets import read_image, read_label  # the loader's own decoders: the same pixels
    for relative, pixels in ((image, read_image(root / image).permute(1, 2, 0)), (label, read_label(root / label))):
        target = array_path(root, relative)
        target.parent.mkdir(parents=True, exist_ok=True)
        np.save(target, np.ascontiguousarray(pixels.numpy()), allow_pickle=False)


def open_array(path: Path) -> np.ndarray:
    """A read-only memory map of a stored array."""
    return np.load(path, mmap_mode="r", allow_pickle=False)
