"""Helpers for the own-data tests: a folder of images and masks a model can learn from, and its declaration
in a params copy (a dataset entry and cells), written the way a user would add them."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import yaml
from PIL import Image

from deeplab.data.labels import voc_palette

COLOURS = [(20, 20, 20), (230, 40, 40), (40, 60, 230)]  # background, then two objects: learnable from colour
NAMES = ("background", "cat", "dog")


def draw(rng: np.random.Generator, h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    """An image of class-coloured blocks (noisy) and its index mask, with a 255 border as annotators leave."""
    label = np.zeros((h, w), np.uint8)
    for k in (1, 2):
        top, left = int(rng.integers(0, h // 2)), int(rng.integers(0, w // 2))
        label[top:top + h // 3 + 2, left:left + w // 3 + 2] = k
    pixels = np.array(COLOURS, np.int16)[label] + rng.integers(-15, 16, (h, w, 3))
    label[0, :] = 255
    return np.clip(pixels, 0, 255).astype(np.uint8), label


def write_learnable_folder(root: Path, n: int = 24, seed: int = 0, masks: str = "index") -> Path:
    """``n`` pairs in the folder layout, of odd sizes: JPEG and PNG images in mixed extension case, one
    grayscale image, one EXIF-rotated JPEG (its mask in the orientation a viewer shows); no split lists (a
    seeded split is drawn). ``masks``: "index" (palette and plain single-channel masks, a 255 border;
    classes.txt with names), "color" (RGB masks in classes.txt's colours) or "binary" (two classes written
    0 and 255: they need ``label_values: {0: 0, 255: 1}``)."""
    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    names = NAMES[:2] if masks == "binary" else NAMES
    (root / "classes.txt").write_text("".join(
        f"{name} {' '.join(map(str, COLOURS[k]))}\n" if masks == "color" else f"{name}\n"
        for k, name in enumerate(names)))
    for k in range(n):
        h, w = 41 + k % 5, 57 + 2 * (k % 7)
        pixels, label = draw(rng, h, w)
        if masks == "binary":  # one object class on background, no ignore: 0 and 255 as such tools write them
            label[label == 2], label[label == 255] = 1, 0
            pixels = np.where(label[..., None] == 1, np.uint8(230), pixels)
        stem = f"photo_{k:03d}"
        if k == 0:
            Image.fromarray(pixels).convert("L").save(root / "images" / f"{stem}.png")
        elif k == 1:  # stored turned: EXIF orientation 6 shows it h high and w wide
            exif = Image.Exif()
            exif[0x0112] = 6
            Image.fromarray(np.ascontiguousarray(np.rot90(pixels, 1))).save(root / "images" / f"{stem}.jpg",
                                                                           exif=exif, quality=95)
        else:
            suffix = (".jpg", ".JPG", ".png")[k % 3]
            Image.fromarray(pixels).save(root / "images" / f"{stem}{suffix}",
                                         **({"quality": 95} if suffix != ".png" else {}))
        if masks == "color":
            rgb = np.array(COLOURS, np.uint8)[np.where(label == 255, 0, label)]
            Image.fromarray(rgb).save(root / "labels" / f"{stem}.png")
        elif masks == "binary":
            Image.fromarray((label * 255).astype(np.uint8), mode="L").save(root / "labels" / f"{stem}.png")
        else:
            save_index_mask(label, root / "labels" / f"{stem}.png", paletted=k % 2 == 0)
    return root


def save_index_mask(label: np.ndarray, path: Path, paletted: bool) -> None:
    """An index mask as users' tools write them: a palette PNG (VOC's colours) or a plain single-channel one."""
    if not paletted:
        Image.fromarray(label, mode="L").save(path)
        return
    image = Image.fromarray(label, mode="P")
    image.putpalette(voc_palette())
    image.save(path)


def declare(params_dir: Path, name: str, entry: dict[str, Any], cells: dict[str, dict[str, Any]]) -> None:
    """Append a dataset entry to the copy's datasets.yaml and cells to its cells.yaml, as a user adds them
    (the paper's entries and their comments stay as they are)."""
    with (params_dir / "datasets.yaml").open("a") as f:
        f.write(yaml.safe_dump({name: entry}, sort_keys=False, default_flow_style=None))
    lines = "".join(f"  {cell_id}: {yaml.safe_dump(spec, default_flow_style=True).strip()}\n"
                    for cell_id, spec in cells.items())
    with (params_dir / "cells.yaml").open("a") as f:
        f.write(lines)
