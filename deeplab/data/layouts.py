"""What each dataset's extracted archives hold: its archives, class names and palette, and the label
conversion jobs of each split. Paths are relative to the extraction root (the prepared folder).
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from deeplab.errors import PipelineError
from deeplab.data.convert import Job
from deeplab.data.labels import VOC_CLASSES, cityscapes_train_classes, voc_palette
from deeplab.data.sources import ARCHIVES

VOC_ROOT = "VOCdevkit/VOC2012"
SBD_ROOT = "benchmark_RELEASE/dataset"
ADE_ROOT = "ADEChallengeData2016"


class LayoutError(PipelineError):
    """The extracted archives do not have the official layout; the message names the missing file."""

    exit_code = 1


@dataclass(frozen=True)
class Layout:
    archives: tuple[str, ...]                        # official archive names, all required
    keep: Callable[[str], bool] | None               # which archive members to extract
    classes: Callable[[Path], tuple[str, ...]]       # class names (may read the extracted archive)
    palette: Callable[[int], list[list[int]]]        # RGB colour per class
    jobs: Callable[[Path], dict[str, list[Job]]]     # split -> conversion jobs, sorted


# ------------------------------------------------------------------------------------------------- VOC
def voc_jobs(root: Path) -> dict[str, list[Job]]:
    """trainaug = (VOC train | SBD train | SBD val) - VOC val, VOC's label where it has one (with its 255
    border), SBD's GTcls class map otherwise; val = VOC val with VOC labels."""
    lists = {name: _read_ids(root / path) for name, path in (
        ("voc_train", f"{VOC_ROOT}/ImageSets/Segmentation/train.txt"),
        ("voc_val", f"{VOC_ROOT}/ImageSets/Segmentation/val.txt"),
        ("sbd_train", f"{SBD_ROOT}/train.txt"), ("sbd_val", f"{SBD_ROOT}/val.txt"))}
    val = set(lists["voc_val"])
    trainaug = (set(lists["voc_train"]) | set(lists["sbd_train"]) | set(lists["sbd_val"])) - val
    return {"train": [_voc_job(root, i) for i in sorted(trainaug)],
            "val": [_voc_job(root, i, voc_only=True) for i in sorted(val)]}


def _voc_job(root: Path, image_id: str, voc_only: bool = False) -> Job:
    voc_label = root / VOC_ROOT / "SegmentationClass" / f"{image_id}.png"
    image = root / VOC_ROOT / "JPEGImages" / f"{image_id}.jpg"
    if not image.exists():  # every SBD image is a VOC image, but take SBD's copy if one is missing
        image = root / SBD_ROOT / "img" / f"{image_id}.jpg"
    target = root / "labels" / f"{image_id}.png"
    if voc_label.exists():
        return Job("voc", voc_label, target, image)
    if voc_only:
        raise LayoutError(f"{voc_label} is missing but {image_id} is listed in VOC's val.txt")
    return Job("sbd", root / SBD_ROOT / "cls" / f"{image_id}.mat", target, image)


def _read_ids(path: Path) -> list[str]:
    if not path.is_file():
        raise LayoutError(f"{path} not found: the archive does not have the official layout")
    ids = path.read_text().split()
    for number, image_id in enumerate(ids, start=1):
        if not re.fullmatch(r"[\w-]+", image_id):
            raise LayoutError(f"{path}: entry {number} {image_id!r} is not an image id")
    return ids


# ---------------------------------------------------------------------------------------------- ADE20k
def ade20k_jobs(root: Path) -> dict[str, list[Job]]:
    splits = {}
    for split, folder in (("train", "training"), ("val", "validation")):
        images = sorted((root / ADE_ROOT / "images" / folder).glob("*.jpg"))
        splits[split] = [Job("ade20k", root / ADE_ROOT / "annotations" / folder / f"{p.stem}.png",
                             root / "labels" / folder / f"{p.stem}.png", p) for p in images]
    return splits


def ade20k_classes(root: Path) -> tuple[str, ...]:
    """The 150 names from the archive's objectInfo150.txt (first synonym of each line), in index order."""
    path = root / ADE_ROOT / "objectInfo150.txt"
    if not path.is_file():
        raise LayoutError(f"{path} not found: the archive does not have the official layout")
    names = {}
    for number, line in enumerate(path.read_text().splitlines()[1:], start=2):
        fields = line.split("\t")
        if len(fields) < 5 or not fields[0].strip().isdigit():
            raise LayoutError(f"{path}:{number}: expected 'Idx<TAB>Ratio<TAB>Train<TAB>Val<TAB>Name'")
        names[int(fields[0])] = re.split(r"[,;]", fields[4])[0].strip()
    if sorted(names) != list(range(1, 151)):
        raise LayoutError(f"{path}: expected indices 1..150, found {len(names)} entries")
    return tuple(names[k] for k in range(1, 151))


def ade20k_palette(n: int) -> list[list[int]]:
    """A fixed distinct colour per class (ADE20k ships no palette; mmseg's is arbitrary too)."""
    from deeplab.data.synthetic import class_colours
    return class_colours(n).tolist()


# ------------------------------------------------------------------------------------------ Cityscapes
def cityscapes_jobs(root: Path) -> dict[str, list[Job]]:
    """Pairs ``leftImg8bit/<split>/<city>/<stem>_leftImg8bit.png`` with ``gtFine/.../<stem>_gtFine_labelIds.png``;
    the converted trainIds go next to them as ``<stem>_gtFine_labelTrainIds.png`` (the official name)."""
    splits = {}
    for split in ("train", "val"):
        images = sorted((root / "leftImg8bit" / split).glob("*/*_leftImg8bit.png"))
        jobs = []
        for image in images:
            stem = image.name[: -len("_leftImg8bit.png")]
            gt = root / "gtFine" / split / image.parent.name
            jobs.append(Job("cityscapes", gt / f"{stem}_gtFine_labelIds.png",
                            gt / f"{stem}_gtFine_labelTrainIds.png", image))
        splits[split] = jobs
    return splits


def _cityscapes_keep(name: str) -> bool:
    """Only train and val: the test split's ground truth is dummy and its images are 1525 x 2 MB."""
    return not re.match(r"(leftImg8bit|gtFine)/test/", name)


def _names(dataset: str) -> tuple[str, ...]:
    return tuple(spec.filename for spec in ARCHIVES[dataset])


LAYOUTS: dict[str, Layout] = {
    "voc": Layout(_names("voc"), None, lambda root: VOC_CLASSES,
                  lambda n: [voc_palette()[3 * k: 3 * k + 3] for k in range(n)], voc_jobs),
    "ade20k": Layout(_names("ade20k"), None, ade20k_classes, ade20k_palette, ade20k_jobs),
    "cityscapes": Layout(_names("cityscapes"), _cityscapes_keep,
                         lambda root: cityscapes_train_classes()[0],
                         lambda n: cityscapes_train_classes()[1], cityscapes_jobs),
}
