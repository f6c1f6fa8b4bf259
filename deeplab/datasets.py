"""Prepared datasets on disk and the order in which training reads them.

A prepared folder holds ``splits/{train,val}.txt`` (lines ``<image> <label>``, paths relative to the
folder), single-channel uint8 label PNGs (255 = ignore) and ``meta.json`` (``classes``, ``palette``,
``ignore_index``, ...). Images are decoded with torchvision.io (libjpeg-turbo / libpng) straight into
uint8 tensors; grayscale images become RGB.

Training order is a pure function of (seed, iteration): :class:`GlobalBatchSampler` yields, for each
iteration, this rank's share of the global batch as ``(image index, augmentation seed)`` pairs, so a
resumed or differently parallelised run reads the same images with the same crops.
"""
from __future__ import annotations

import ctypes
import hashlib
import json
import os
import signal
import sys
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler
from torchvision.io import ImageReadMode, decode_image, read_file

from deeplab.data.labels import IGNORE_INDEX
from deeplab.errors import PipelineError
from deeplab.transforms import Augmentation, sample_seed, train_sample


PR_SET_PDEATHSIG = 1  # prctl(2): the signal this process gets when its parent dies
ARRAYS_SOURCE, ARRAYS_STORED = "source.json", "stored.json"  # an arrays folder's files (deeplab.data.arrays)


class DatasetError(PipelineError):
    """The prepared dataset is missing or malformed; the message names the file and what to run."""


def read_meta(prepared_dir: str | Path) -> dict[str, Any]:
    path = Path(prepared_dir) / "meta.json"
    if not path.is_file():
        raise DatasetError(f"{path} not found: prepare the dataset first (python -m pipeline.prepare ...)")
    meta = json.loads(path.read_text())
    missing = [key for key in ("classes", "palette") if key not in meta]
    if missing:
        raise DatasetError(f"{path}: missing key(s) {', '.join(missing)}; re-run the prepare stage")
    return meta


def manifest_hash(prepared_dir: str | Path, split: str) -> str:
    """sha256 of meta.json and the split list: identifies the data a model was trained or scored on."""
    digest = hashlib.sha256()
    for path in (Path(prepared_dir) / "meta.json", Path(prepared_dir) / "splits" / f"{split}.txt"):
        digest.update(path.read_bytes() if path.is_file() else b"")
    return digest.hexdigest()


def array_path(root: Path, relative: str | Path) -> Path:
    """Where the array of the prepared folder's file ``relative`` lives in the arrays folder ``root``."""
    return root / f"{relative}.npy"


def open_array(path: Path) -> np.ndarray:
    """A read-only memory map of a stored array."""
    return np.load(path, mmap_mode="r", allow_pickle=False)


def stored_arrays(arrays_dir: str | Path | None, prepared_dir: str | Path, split: str) -> str | None:
    """Why the training split cannot be read from the arrays folder ``arrays_dir`` (deeplab.data.arrays), or
    None when it can: arrays stored, of this very split (its manifest hash)."""
    if arrays_dir is None:
        return "no arrays folder"
    root = Path(arrays_dir)
    try:
        stored = json.loads((root / ARRAYS_STORED).read_text())
        source = json.loads((root / ARRAYS_SOURCE).read_text())
    except (OSError, json.JSONDecodeError):
        return f"{root} holds no complete arrays folder (run the store_arrays stage)"
    if not stored.get("stored"):
        return "train_arrays is off"
    if source.get("split") != split or source.get("data_hash") != manifest_hash(prepared_dir, split):
        return (f"{root} was made from other pixels than {prepared_dir}'s {split} split: re-run the store_arrays "
                "stage (python -m pipeline.store_arrays)")
    return None


def read_split(prepared_dir: str | Path, split: str) -> list[tuple[Path, Path]]:
    root = Path(prepared_dir)
    path = root / "splits" / f"{split}.txt"
    if not path.is_file():
        raise DatasetError(f"{path} not found: prepare the dataset first (python -m pipeline.prepare ...)")
    pairs = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        parts = line.split()
        if len(parts) != 2:
            raise DatasetError(f"{path}:{number}: expected '<image> <label>', got {line!r}")
        pairs.append((root / parts[0], root / parts[1]))
    if not pairs:
        raise DatasetError(f"{path} lists no images; re-run the prepare stage")
    return pairs


def _decode(path: Path, mode: ImageReadMode) -> torch.Tensor:
    try:
        return decode_image(read_file(str(path)), mode=mode)
    except (RuntimeError, ValueError, OSError) as error:
        raise DatasetError(f"{path}: cannot be decoded ({str(error).strip().splitlines()[-1]}); the prepared "
                           "dataset is damaged: delete its folder and re-run the prepare stage") from None


def read_image(path: Path) -> torch.Tensor:
    """uint8 (3, H, W) RGB, whatever the file's channels."""
    return _decode(path, ImageReadMode.RGB)


def check_label(label: torch.Tensor, num_classes: int, name: str | Path) -> None:
    """Refuse labels with values that are neither a class nor the ignore index (a bad prepare)."""
    bad = (label >= num_classes) & (label != IGNORE_INDEX)
    if bool(bad.any()):
        raise DatasetError(f"label {name} holds value {int(label[bad].max())}, but the dataset has "
                           f"{num_classes} classes (and {IGNORE_INDEX} = ignore); re-run the prepare stage")


def worker_init(worker_id: int = 0) -> None:
    """Loader workers die with the process that started them (Linux ``PR_SET_PDEATHSIG``): a training job
    killed with SIGKILL leaves no worker holding its GPU slot or its files."""
    if not sys.platform.startswith("linux"):
        return
    parent = os.getppid()
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent:  # the parent died before the request took effect
        os._exit(1)


def read_label(path: Path) -> torch.Tensor:
    """uint8 (H, W) class indices."""
    label = _decode(path, ImageReadMode.UNCHANGED)
    if label.shape[0] != 1:
        raise DatasetError(f"{path}: label must be a single-channel PNG of class indices, "
                           f"got {label.shape[0]} channels; re-run the prepare stage")
    return label[0]


class SegmentationDataset(Dataset):
    """One split of a prepared dataset: ``(image uint8 (3, H, W), label uint8 (H, W), label name)``."""

    def __init__(self, prepared_dir: str | Path, split: str) -> None:
        self.pairs = read_split(prepared_dir, split)

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor, str]:
        image_path, label_path = self.pairs[index]
        image, label = read_image(image_path), read_label(label_path)
        if image.shape[-2:] != label.shape:
            raise DatasetError(f"{image_path} is {tuple(image.shape[-2:])} but its label {label_path} is "
                               f"{tuple(label.shape)}; re-run the prepare stage")
        return image, label, label_path.name


class TrainDataset(Dataset):
    """The training split with the recipe's augmentation; items are addressed by ``(index, seed)``.

    Where ``arrays_dir`` holds the split as arrays made from this very split (deeplab.data.arrays), a sample
    reads only its crop's pixels through a memory map; otherwise it decodes the prepared files. Each label is checked whole the first time a process
    reads it (0.4 ms for a VOC label, 3.5 ms for a Cityscapes one: a tenth of their chain when it was done
    for every sample), so a value beyond the classes is refused wherever it lies."""

    def __init__(self, prepared_dir: str | Path, split: str, aug: Augmentation, num_classes: int,
                 arrays_dir: str | Path | None = None) -> None:
        self.root = Path(prepared_dir)
        self.images = SegmentationDataset(prepared_dir, split)
        self.aug, self.num_classes = aug, num_classes
        self.arrays_dir = Path(arrays_dir) if arrays_dir is not None else None
        self.why_not_arrays = stored_arrays(arrays_dir, prepared_dir, split)
        self.arrays = self.why_not_arrays is None
        self.checked: set[int] = set()  # labels this process has checked whole

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, item: tuple[int, int]) -> dict[str, torch.Tensor]:
        index, seed = item
        image_path, label_path = self.images.pairs[index]
        if self.arrays:
            image, label = (self._array(path) for path in (image_path, label_path))
            if image.shape[:2] != label.shape:
                raise DatasetError(f"{image_path}'s array is {image.shape[:2]} but its label's {label.shape}; "
                                   "re-run the prepare stage")
        else:
            image, label, _ = self.images[index]
        if index not in self.checked:
            check_label(torch.from_numpy(np.array(label)) if self.arrays else label, self.num_classes, label_path)
            self.checked.add(index)
        return train_sample(image, label, self.aug, seed)

    def _array(self, path: Path) -> np.ndarray:
        stored = array_path(self.arrays_dir, path.relative_to(self.root))
        try:
            return open_array(stored)
        except (OSError, ValueError) as error:
            raise DatasetError(f"{stored}: cannot be read ({error}); the arrays folder is damaged: delete it and "
                               "re-run the store_arrays stage") from None


def epoch_order(seed: int, epoch: int, num_images: int) -> torch.Tensor:
    """The permutation of the images in ``epoch``: a pure function of (seed, epoch)."""
    gen = torch.Generator().manual_seed(sample_seed(seed, epoch, -1))
    return torch.randperm(num_images, generator=gen)


class GlobalBatchSampler(Sampler[list[tuple[int, int]]]):
    """Yields this rank's micro-batches of ``(index, seed)`` for iterations ``start`` .. ``stop - 1``.

    Iteration ``it`` takes the global batch ``order[b * B:(b + 1) * B]`` of epoch ``it // per_epoch``
    (``b = it % per_epoch``, the last incomplete batch of an epoch dropped); rank ``r`` of ``world`` takes
    slots ``[r * B / world, (r + 1) * B / world)``, cut into ``accumulation`` micro-batches. The slot's
    augmentation seed depends only on (seed, iteration, slot).
    """

    def __init__(self, num_images: int, global_batch: int, *, seed: int, start: int, stop: int,
                 rank: int = 0, world: int = 1, accumulation: int = 1) -> None:
        if global_batch % world:
            raise ValueError(f"global batch {global_batch} cannot be split over {world} processes")
        share = global_batch // world
        if accumulation < 1 or share % accumulation:
            raise ValueError(f"per-process batch {share} cannot be cut into {accumulation} equal micro-batches")
        if num_images < global_batch:
            raise ValueError(f"{num_images} images cannot fill one global batch of {global_batch}")
        self.num_images, self.batch, self.seed = num_images, global_batch, seed
        self.start, self.stop, self.rank, self.share, self.accumulation = start, stop, rank, share, accumulation
        self.per_epoch = num_images // global_batch
        self._order: tuple[int, torch.Tensor] | None = None  # (epoch, permutation) cache

    def __len__(self) -> int:
        return max(self.stop - self.start, 0) * self.accumulation

    def rank_items(self, iteration: int) -> list[tuple[int, int]]:
        epoch, position = divmod(iteration, self.per_epoch)
        if self._order is None or self._order[0] != epoch:
            self._order = (epoch, epoch_order(self.seed, epoch, self.num_images))
        order = self._order[1]
        first = position * self.batch + self.rank * self.share
        slots = range(self.rank * self.share, (self.rank + 1) * self.share)
        return [(int(order[first + i]), sample_seed(self.seed, iteration, slot)) for i, slot in enumerate(slots)]

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        micro = self.share // self.accumulation
        for iteration in range(self.start, self.stop):
            items = self.rank_items(iteration)
            for k in range(self.accumulation):
                yield items[k * micro:(k + 1) * micro]
