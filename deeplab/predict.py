"""Predictions of a trained cell on a user's own images: class indices, colours and an overlay per image.

For each image: ``<stem>.png`` (uint8 class indices at the image's size, 255 never used), ``<stem>_color.png``
(the dataset's palette) and ``<stem>_overlay.jpg`` (the colours blended over the image). The protocols are
the evaluation's (deeplab.evaluate): single scale at the dataset's test size by default, with other scales
and horizontal flips when asked.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator

import torch
from torchvision.io import ImageReadMode, decode_image, encode_jpeg, encode_png, read_file

from deeplab import atomic
from deeplab.datasets import DatasetError
from deeplab.evaluate import InputSpec, Protocol, predict
from deeplab.plots import colorize

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")
OVERLAY_ALPHA = 0.5  # weight of the class colours over the image


@dataclass(frozen=True)
class Written:
    source: Path
    classes: Path
    color: Path
    overlay: Path


def images_in(inputs: Iterable[str | Path]) -> list[Path]:
    """The image files named or inside the folders named (sorted, by suffix), in the order given."""
    found: list[Path] = []
    for item in map(Path, inputs):
        if item.is_dir():
            found += sorted(p for p in item.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        elif item.is_file():
            found.append(item)
        else:
            raise DatasetError(f"{item}: no such image or folder")
    if not found:
        raise DatasetError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in {', '.join(map(str, inputs))}")
    return found


def read_any_image(path: Path) -> torch.Tensor:
    """uint8 (3, H, W) RGB; an undecodable file is refused naming it."""
    try:
        return decode_image(read_file(str(path)), mode=ImageReadMode.RGB)
    except (RuntimeError, ValueError, OSError) as error:
        raise DatasetError(f"{path}: cannot be decoded as an image ({str(error).strip().splitlines()[-1]})") from None


def predict_images(model: torch.nn.Module, images: list[Path], out: Path, protocol: Protocol, spec: InputSpec,
                   palette: list[list[int]], device: torch.device) -> Iterator[Written | DatasetError]:
    """Predict each image into ``out``; yields what was written, or the error of an image it could not read."""
    out.mkdir(parents=True, exist_ok=True)
    for path in images:
        try:
            image = read_any_image(path)
        except DatasetError as error:
            yield error
            continue
        classes = predict(model, image.to(device), protocol, spec).to(torch.uint8).cpu()      # (H, W)
        color = colorize(classes, palette).permute(2, 0, 1).contiguous()                        # (3, H, W)
        overlay = (image.float() * (1 - OVERLAY_ALPHA) + color.float() * OVERLAY_ALPHA).round().to(torch.uint8)
        written = Written(path, out / f"{path.stem}.png", out / f"{path.stem}_color.png",
                          out / f"{path.stem}_overlay.jpg")
        atomic.write_bytes(written.classes, encode_png(classes[None]).numpy().tobytes())
        atomic.write_bytes(written.color, encode_png(color).numpy().tobytes())
        atomic.write_bytes(written.overlay, encode_jpeg(overlay, quality=90).numpy().tobytes())
        yield written
