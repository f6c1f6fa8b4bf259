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
from typing import Sequence, Union

import numpy as np
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
        if mixed_enough(window, cat_max_ratio):
            break
    return image[:, top:top + crop[0], left:left + crop[1]], window


def mixed_enough(window: torch.Tensor, cat_max_ratio: float) -> bool:
    """The reference's rule for keeping a crop: no class covers more than ``cat_max_ratio`` of its
    non-ignored pixels and it holds more than one class (always kept when the ratio is 1 or more)."""
    if cat_max_ratio >= 1:
        return True
    counts = torch.bincount(window.reshape(-1), minlength=256)[:IGNORE_INDEX]
    counts = counts[counts > 0]
    return len(counts) > 1 and counts.max().item() < cat_max_ratio * counts.sum().item()


Planes = Union[torch.Tensor, np.ndarray]  # image (3, H, W) / label (H, W) tensors, or (H, W, 3) / (H, W) arrays


def planes_size(source: Planes) -> tuple[int, int]:
    """(H, W) of an image or label, tensor (channels first) or array (channels last, e.g. a memory map)."""
    return tuple(source.shape[:2]) if isinstance(source, np.ndarray) else tuple(source.shape[-2:])


def _region(source: Planes, rows: slice, cols: slice) -> torch.Tensor:
    """The uint8 tensor of ``source[rows, cols]`` (channels first); an array reads only that region."""
    if isinstance(source, np.ndarray):  # a copy (a memory map is read-only), channels first like a decode's
        region = torch.from_numpy(np.array(source[rows, cols]))
        return region.permute(2, 0, 1).contiguous() if region.ndim == 3 else region
    return source[..., rows, cols]


def nearest_sources(length: int, size: int) -> torch.Tensor:
    """Source index of each output position of a nearest resize from ``length`` to ``size``, as torch's
    ``interpolate(mode="nearest")`` computes it (a float32 scale, floor, clamped)."""
    if size == length:
        return torch.arange(size)
    scale = torch.tensor(length / size, dtype=torch.float32)
    return (torch.arange(size, dtype=torch.float32) * scale).floor().long().clamp_(max=length - 1)


def bilinear_sources(length: int, size: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(first source index, second, weight of the second) per output position of a bilinear resize from
    ``length`` to ``size`` with half-pixel centres (align_corners=False), as torch's ``interpolate``."""
    scale = torch.tensor(length / size, dtype=torch.float32)
    source = ((torch.arange(size, dtype=torch.float32) + 0.5) * scale - 0.5).clamp_(min=0)
    first = source.long().clamp_(max=length - 1)
    return first, (first + 1).clamp_(max=length - 1), source - first


# The whole image's uint8 resize costs about this fraction of the window's two float passes per pixel written
# (measured, benchmarks/input_pipeline.py): the whole resize is taken while it writes fewer pixels than the
# window's passes over this share, i.e. for small images (VOC, ADE20k, Cityscapes below ratio ~1), the window
# otherwise (Cityscapes resized up: 4096x2048 at ratio 2 for a 1024x512 crop). Both give the crop of the
# whole resize: labels bit-equal, images within one grey level.
WHOLE_RESIZE_SHARE = 0.35


def whole_resize_is_cheaper(source: tuple[int, int], size: tuple[int, int], window: tuple[int, int]) -> bool:
    """Whether resizing the whole ``source`` (h, w) to ``size`` costs less than resampling a ``window``
    (h, w) of the result from the source rows it needs."""
    rows = window[0] * source[0] / size[0] + 2
    return size[0] * size[1] * WHOLE_RESIZE_SHARE < window[1] * (rows + window[0])


def resized_window(image: Planes, size: tuple[int, int], top: int, left: int, height: int, width: int) -> torch.Tensor:
    """``resize_image(image, size)[:, top:top + height, left:left + width]`` from the source region that
    window needs: float weights at the whole resize's sampling positions (within one grey level of it)."""
    source = planes_size(image)
    if tuple(size) == source:
        return _region(image, slice(top, top + height), slice(left, left + width))
    (r0, r1, wr), (c0, c1, wc) = (tuple(t[start:start + n] for t in bilinear_sources(length, out))
                                  for length, out, start, n in ((source[0], size[0], top, height),
                                                                (source[1], size[1], left, width)))
    low, high, first, last = int(r0[0]), int(r1[-1]) + 1, int(c0[0]), int(c1[-1]) + 1  # positions grow
    r0, r1, c0, c1 = r0 - low, r1 - low, c0 - first, c1 - first
    if isinstance(image, np.ndarray):  # channels last: gather whole pixels, then channels first
        region = torch.from_numpy(np.array(image[low:high, first:last]))                 # (rows, cols, 3)
        columns = torch.lerp(region.index_select(1, c0).float(), region.index_select(1, c1).float(),
                             wc[None, :, None])
        rows = torch.lerp(columns.index_select(0, r0), columns.index_select(0, r1), wr[:, None, None])
        return rows.round_().to(torch.uint8).permute(2, 0, 1).contiguous()              # (3, h, w)
    region = image[:, low:high, first:last]                                              # (3, rows, cols)
    columns = torch.lerp(region.index_select(2, c0).float(), region.index_select(2, c1).float(), wc)
    rows = torch.lerp(columns.index_select(1, r0), columns.index_select(1, r1), wr[:, None])
    return rows.round_().to(torch.uint8)


def rescaled_crop(image: Planes, label: Planes, aug: Augmentation,
                  gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """The random rescale then the random crop (:func:`random_rescale`, :func:`random_crop`: the same
    draws, the same windows), computing only the crop where that is cheaper: the crop window is drawn in
    the rescaled image's coordinates, the label's window gathered at the nearest resize's source positions
    (bit-equal) and the image's resampled at the bilinear resize's (within one grey level). A 2048x1024
    Cityscapes image at ratio 2 is 4096x2048 resized whole; its 1024x512 crop is an eighth of that."""
    height, width = planes_size(label)
    ratio = _uniform(gen, *aug.ratio_range)
    size = keep_ratio_size(height, width, (int(aug.base_scale[0] * ratio), int(aug.base_scale[1] * ratio)))
    crop = aug.crop
    if size != (height, width) and whole_resize_is_cheaper((height, width), size,
                                                             (min(crop[0], size[0]), min(crop[1], size[1]))):
        whole = (_region(planes, slice(None), slice(None)) for planes in (image, label))
        image, label = resize_image(next(whole), size), resize_label(next(whole), size)
        return random_crop(image, label, crop, aug.cat_max_ratio, gen, aug.crop_tries)
    rows, cols = nearest_sources(height, size[0]), nearest_sources(width, size[1])
    for _ in range(aug.crop_tries):
        top = _randint(gen, 0, max(size[0] - crop[0], 0) + 1)
        left = _randint(gen, 0, max(size[1] - crop[1], 0) + 1)
        r, c = rows[top:top + crop[0]], cols[left:left + crop[1]]
        first_row, first_col = int(r[0]), int(c[0])  # source positions grow with the output's
        band = _region(label, slice(first_row, int(r[-1]) + 1), slice(first_col, int(c[-1]) + 1))
        window = band[r - first_row][:, c - first_col]
        if mixed_enough(window, aug.cat_max_ratio):
            break
    return resized_window(image, size, top, left, *window.shape), window


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


def train_sample(image: Planes, label: Planes, aug: Augmentation, seed: int) -> dict[str, torch.Tensor]:
    """The worker side of the training chain for one sample: rescale and crop (only the crop is
    computed: :func:`rescaled_crop`), flip, pad, and the drawn
    photometric parameters. Returns uint8 ``image`` (3, h, w), ``label`` (h, w), ``valid`` (4,: top, left,
    height, width of the image inside its padding) and ``photometric`` (5,); the batch side is
    :func:`photometric_distortion` then :func:`normalize`."""
    gen = torch.Generator().manual_seed(seed)
    image, label = rescaled_crop(image, label, aug, gen)
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
