"""Joint (image, label) transforms of the training recipe (docs/recipe.md), in the reference's order:
random keep-ratio rescale, random crop with the single-class rule, horizontal flip, photometric
distortion, normalisation, padding to the crop size, centred (image 0, label ignore).

Images stay uint8 ``(3, H, W)`` and labels uint8 ``(H, W)`` until normalisation. Every random draw comes
from an explicit ``torch.Generator``, so a sample's augmentation is a pure function of its seed, whatever
process or worker computes it. Labels are only ever resized with nearest neighbour.

The per-pixel colour work (photometric distortion, normalisation) runs on whole batches on the training
device (:func:`photometric_distortion`, :func:`normalize`): the loader worker only draws its parameters
(:func:`draw_photometric`), so the CPU workers do decode, resize, crop and flip on uint8 and nothing else.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F

from deeplab.config import CellConfig
from deeplab.data.labels import IGNORE_INDEX


@dataclass(frozen=True)
class Augmentation:
    """The numbers of one cell's training augmentation (params: datasets.yaml and train.yaml)."""

    base_scale: tuple[int, int]          # keep-ratio resize target before the random ratio
    ratio_range: tuple[float, float]     # random rescale factor of the base scale
    crop: tuple[int, int]                # (h, w)
    cat_max_ratio: float                 # re-draw the crop while one class covers more than this share
    crop_tries: int
    flip_prob: float
    brightness_delta: float
    contrast_range: tuple[float, float]
    saturation_range: tuple[float, float]
    hue_delta: int                       # OpenCV's 8-bit hue units (0-180)

    @classmethod
    def of(cls, cfg: CellConfig) -> "Augmentation":
        data, train = cfg.data, cfg.train
        return cls(data.base_scale, data.ratio_range, data.crop_size, data.cat_max_ratio, train.crop_tries,
                   train.flip_prob, train.brightness_delta, train.contrast_range, train.saturation_range,
                   train.hue_delta)


def _uniform(gen: torch.Generator, low: float, high: float) -> float:
    return low + (high - low) * torch.rand((), generator=gen).item()


def _randint(gen: torch.Generator, low: int, high: int) -> int:
    """An integer in [low, high)."""
    return int(torch.randint(low, high, (), generator=gen).item())


def keep_ratio_size(height: int, width: int, scale: tuple[int, int]) -> tuple[int, int]:
    """(h, w) of the keep-ratio resize that fits ``scale`` = (long edge max, short edge max), rounded as
    the reference (mmcv ``rescale_size``)."""
    factor = min(max(scale) / max(height, width), min(scale) / min(height, width))
    return int(height * factor + 0.5), int(width * factor + 0.5)


def resize_image(image: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear resize of a uint8 (3, H, W) image; no antialiasing, like OpenCV's INTER_LINEAR."""
    if tuple(image.shape[-2:]) == tuple(size):
        return image
    return F.interpolate(image[None], size=size, mode="bilinear", align_corners=False)[0]


def resize_label(label: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Nearest-neighbour resize of a uint8 (H, W) label: never blends class indices."""
    if tuple(label.shape[-2:]) == tuple(size):
        return label
    return F.interpolate(label[None, None], size=size, mode="nearest")[0, 0]


def random_rescale(image: torch.Tensor, label: torch.Tensor, base_scale: tuple[int, int],
                   ratio_range: tuple[float, float], gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    ratio = _uniform(gen, *ratio_range)
    scale = (int(base_scale[0] * ratio), int(base_scale[1] * ratio))
    size = keep_ratio_size(image.shape[-2], image.shape[-1], scale)
    return resize_image(image, size), resize_label(label, size)


def random_crop(image: torch.Tensor, label: torch.Tensor, crop: tuple[int, int], cat_max_ratio: float,
                gen: torch.Generator, tries: int = 10) -> tuple[torch.Tensor, torch.Tensor]:
    """Random crop of at most ``crop`` (h, w); re-drawn up to ``tries`` times while one class covers more
    than ``cat_max_ratio`` of the crop's non-ignored pixels (or it holds a single class), as the reference."""
    height, width = label.shape
    for _ in range(tries):
        top = _randint(gen, 0, max(height - crop[0], 0) + 1)
        left = _randint(gen, 0, max(width - crop[1], 0) + 1)
        window = label[top:top + crop[0], left:left + crop[1]]
        if cat_max_ratio >= 1:
            break
        counts = torch.bincount(window.reshape(-1), minlength=256)[:IGNORE_INDEX]
        counts = counts[counts > 0]
        if len(counts) > 1 and counts.max().item() < cat_max_ratio * counts.sum().item():
            break
    return image[:, top:top + crop[0], left:left + crop[1]], window


def random_flip(image: torch.Tensor, label: torch.Tensor, gen: torch.Generator,
                prob: float = 0.5) -> tuple[torch.Tensor, torch.Tensor]:
    if torch.rand((), generator=gen).item() < prob:
        return image.flip(-1), label.flip(-1)
    return image, label


def pad(image: torch.Tensor, label: torch.Tensor, crop: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Pad to ``crop``, centred as the reference does: top = (H - h) // 2, left = (W - w) // 2, the rest at
    the bottom and right; image with 0, label with the ignore index."""
    top, left, bottom, right = pad_box(image.shape[-2:], crop)
    if top == left == bottom == right == 0:
        return image, label
    return (F.pad(image, (left, right, top, bottom), value=0),
            F.pad(label, (left, right, top, bottom), value=IGNORE_INDEX))


def pad_box(size: tuple[int, int] | torch.Size, crop: tuple[int, int]) -> tuple[int, int, int, int]:
    """(top, left, bottom, right) padding that centres an image of ``size`` (h, w) in ``crop``."""
    dh, dw = max(crop[0] - size[0], 0), max(crop[1] - size[1], 0)
    return dh // 2, dw // 2, dh - dh // 2, dw - dw // 2


@dataclass(frozen=True)
class Photometric:
    """The random parameters of one sample's photometric distortion (identity values = not applied)."""

    brightness: float = 0.0        # added to every channel
    contrast: float = 1.0          # multiplies every channel
    contrast_first: bool = True    # contrast before (True) or after the saturation/hue step
    saturation: float = 1.0        # multiplies HSV saturation
    hue: float = 0.0               # added to HSV hue, in OpenCV units (0-180)

    def as_tensor(self) -> torch.Tensor:
        return torch.tensor([self.brightness, self.contrast, float(self.contrast_first),
                             self.saturation, self.hue], dtype=torch.float32)


def draw_photometric(gen: torch.Generator, aug: Augmentation) -> Photometric:
    """Draw the reference's PhotoMetricDistortion: each of brightness, contrast, saturation and hue is
    applied with probability 1/2; contrast comes first or last with probability 1/2."""
    brightness = _uniform(gen, -aug.brightness_delta, aug.brightness_delta) if _randint(gen, 0, 2) else 0.0
    contrast_first = bool(_randint(gen, 0, 2))
    contrast = _uniform(gen, *aug.contrast_range) if _randint(gen, 0, 2) else 1.0
    saturation = _uniform(gen, *aug.saturation_range) if _randint(gen, 0, 2) else 1.0
    hue = float(_randint(gen, -aug.hue_delta, aug.hue_delta + 1)) if _randint(gen, 0, 2) else 0.0
    return Photometric(brightness, contrast, contrast_first, saturation, hue)


def rgb_to_hsv(rgb: torch.Tensor) -> torch.Tensor:
    """(N, 3, H, W) RGB in [0, 255] -> HSV with H in [0, 6), S in [0, 1], V in [0, 255]."""
    value, _ = rgb.max(dim=1)
    chroma = value - rgb.min(dim=1)[0]
    safe = torch.where(chroma > 0, chroma, torch.ones_like(chroma))
    r, g, b = rgb.unbind(1)
    hue = torch.where(value == r, ((g - b) / safe) % 6,
                      torch.where(value == g, (b - r) / safe + 2, (r - g) / safe + 4))
    hue = torch.where(chroma > 0, hue, torch.zeros_like(hue))
    saturation = torch.where(value > 0, chroma / torch.where(value > 0, value, torch.ones_like(value)),
                             torch.zeros_like(value))
    return torch.stack([hue, saturation, value], dim=1)


def hsv_to_rgb(hsv: torch.Tensor) -> torch.Tensor:
    hue, saturation, value = hsv.unbind(1)
    k = (torch.tensor([5.0, 3.0, 1.0], device=hsv.device, dtype=hsv.dtype).view(1, 3, 1, 1)
         + hue[:, None]) % 6                                                   # (N, 3, H, W)
    weight = torch.clamp(torch.minimum(k, 4 - k), 0, 1)
    return value[:, None] - value[:, None] * saturation[:, None] * weight


def photometric_distortion(images: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
    """Apply each sample's :class:`Photometric` to a float (N, 3, H, W) batch in [0, 255].

    ``params`` is (N, 5) as :meth:`Photometric.as_tensor`. Values are clipped to [0, 255] after each
    step, as the reference does; unlike it, intermediate results are not rounded to uint8.
    """
    p = params.to(images.device, images.dtype)[:, :, None, None]               # (N, 5, 1, 1)
    brightness, contrast, first, saturation, hue = p.unbind(1)
    first, contrast = first[:, None], contrast[:, None]
    x = (images + brightness[:, None]).clamp_(0, 255)
    x = torch.where(first > 0, (x * contrast).clamp_(0, 255), x)
    if bool((params[:, 3] != 1).any() or (params[:, 4] != 0).any()):
        hsv = rgb_to_hsv(x)
        h = (hsv[:, 0] + hue * (6 / 180)) % 6                                  # OpenCV hue 180 = 6 sectors
        s = (hsv[:, 1] * saturation).clamp(0, 1)
        x = hsv_to_rgb(torch.stack([h, s, hsv[:, 2]], dim=1)).clamp_(0, 255)
    return torch.where(first > 0, x, (x * contrast).clamp_(0, 255))


def normalize(images: torch.Tensor, mean: Sequence[float], std: Sequence[float],
              valid: torch.Tensor | None = None) -> torch.Tensor:
    """(N, 3, H, W) float in [0, 255] -> normalised with the per-channel ``mean``/``std`` (train.yaml). With
    ``valid`` (N, 4: top, left, height, width of each sample's image inside its padding), the padding is set
    to 0 after normalisation, which equals padding the normalised image with 0 as the reference does."""
    mean = torch.tensor(mean, device=images.device, dtype=images.dtype).view(1, 3, 1, 1)
    std = torch.tensor(std, device=images.device, dtype=images.dtype).view(1, 3, 1, 1)
    x = (images - mean) / std
    if valid is not None:
        rows = torch.arange(x.shape[-2], device=x.device).view(1, -1, 1)
        cols = torch.arange(x.shape[-1], device=x.device).view(1, 1, -1)
        top, left, height, width = (v.view(-1, 1, 1) for v in valid.to(x.device).unbind(1))
        inside = (rows >= top) & (rows < top + height) & (cols >= left) & (cols < left + width)  # (N, H, W)
        x = x * inside[:, None].to(x.dtype)
    return x


def train_sample(image: torch.Tensor, label: torch.Tensor, aug: Augmentation, seed: int) -> dict[str, torch.Tensor]:
    """The worker side of the training chain for one sample: rescale, crop, flip, pad, and the drawn
    photometric parameters. Returns uint8 ``image`` (3, h, w), ``label`` (h, w), ``valid`` (4,: top, left,
    height, width of the image inside its padding) and ``photometric`` (5,); the batch side is
    :func:`photometric_distortion` then :func:`normalize`."""
    gen = torch.Generator().manual_seed(seed)
    image, label = random_rescale(image, label, aug.base_scale, aug.ratio_range, gen)
    image, label = random_crop(image, label, aug.crop, aug.cat_max_ratio, gen, aug.crop_tries)
    image, label = random_flip(image, label, gen, aug.flip_prob)
    photometric = draw_photometric(gen, aug)
    top, left, _, _ = pad_box(image.shape[-2:], aug.crop)
    valid = torch.tensor([top, left, *image.shape[-2:]], dtype=torch.int32)
    image, label = pad(image, label, aug.crop)
    return {"image": image.contiguous(), "label": label.contiguous(), "valid": valid,
            "photometric": photometric.as_tensor()}


def sample_seed(seed: int, iteration: int, slot: int) -> int:
    """Seed of the augmentation of the ``slot``-th sample of global batch ``iteration``: a pure
    function of the three numbers (splitmix64-style mixing), so a resumed run draws the same crops."""
    x = (seed * 0x9E3779B97F4A7C15 + iteration * 0xBF58476D1CE4E5B9 + slot * 0x94D049BB133111EB) % 2**64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) % 2**64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) % 2**64
    return (x ^ (x >> 31)) % 2**63


def eval_size(height: int, width: int, eval_scale: tuple[int, int] | None, ratio: float = 1.0) -> tuple[int, int]:
    """Input size at evaluation: keep-ratio fit to ``eval_scale`` x ratio, or the native size x ratio."""
    if eval_scale is None:
        return int(math.floor(height * ratio + 0.5)), int(math.floor(width * ratio + 0.5))
    return keep_ratio_size(height, width, (int(eval_scale[0] * ratio), int(eval_scale[1] * ratio)))
