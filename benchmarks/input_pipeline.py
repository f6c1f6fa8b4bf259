"""Training input pipeline throughput, per loader worker: decode + the full augmentation chain + collate.

Ours: torchvision.io decode (libjpeg-turbo / libpng) into uint8 tensors, uint8 rescale / crop / flip / pad
in the worker (``deeplab.datasets.TrainDataset``) and collate; the photometric distortion and the
normalisation run on the training device on whole batches, so they are not a worker's job. They are timed
here on the CPU too, for a second, all-on-one-CPU figure. Baseline: a straightforward
PIL/numpy implementation of the same chain per sample (PIL decode and resize, numpy crop with the
single-class rule, flip, photometric distortion through PIL's uint8 HSV like the reference's OpenCV,
normalise, pad), then collate. Both run in this one process on the same files, so the ratio holds per
worker; the ratio is printed last.

    python benchmarks/input_pipeline.py --quick     # ~1 minute on a 2-core CPU
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from deeplab.config import load_params  # noqa: E402
from deeplab.datasets import TrainDataset  # noqa: E402
from deeplab.transforms import Augmentation, normalize, photometric_distortion, sample_seed  # noqa: E402

CFG = load_params(Path(__file__).resolve().parent.parent / "params").resolve("voc-r50-os8")  # the VOC recipe
BASE, RATIO, CROP, CAT_MAX = CFG.data.base_scale, CFG.data.ratio_range, CFG.data.crop_size, CFG.data.cat_max_ratio
MEAN, STD = CFG.train.mean, CFG.train.std


def write_images(folder: Path, count: int) -> Path:
    """VOC-sized JPEGs (500x375, some 375x500) with 21-class label PNGs and ignore borders."""
    rng = np.random.default_rng(0)
    (folder / "splits").mkdir(parents=True)
    lines = []
    for i in range(count):
        h, w = (375, 500) if i % 3 else (500, 375)
        label = np.zeros((h, w), np.uint8)
        for _ in range(3):
            top, left = rng.integers(0, h // 2), rng.integers(0, w // 2)
            label[top:top + h // 3, left:left + w // 3] = rng.integers(1, 21)
        label[::37] = 255
        image = (rng.integers(0, 256, (h, w, 3)) // 4 + label[..., None] * 8).astype(np.uint8)
        Image.fromarray(image).save(folder / f"{i}.jpg", quality=90)
        Image.fromarray(label).save(folder / f"{i}.png")
        lines.append(f"{i}.jpg {i}.png")
    (folder / "splits" / "train.txt").write_text("\n".join(lines) + "\n")
    return folder


def ours(folder: Path, batches: int, batch: int) -> tuple[float, float]:
    """(worker images/s: decode + uint8 chain + collate, images/s with the batch colour ops on this CPU)."""
    dataset = TrainDataset(folder, "train", Augmentation.of(CFG))
    worker = device = 0.0
    for b in range(batches):
        started = time.perf_counter()
        samples = [dataset[((b * batch + k) % len(dataset), sample_seed(0, b, k))] for k in range(batch)]
        images = torch.stack([s["image"] for s in samples])
        labels = torch.stack([s["label"] for s in samples])
        photometric = torch.stack([s["photometric"] for s in samples])
        valid = torch.stack([s["valid"] for s in samples])
        middle = time.perf_counter()
        x = normalize(photometric_distortion(images.float(), photometric), MEAN, STD, valid)  # the device's part
        worker, device = worker + middle - started, device + time.perf_counter() - middle
        assert x.shape == (batch, 3, *CROP) and labels.shape == (batch, *CROP)
    return batches * batch / worker, batches * batch / (worker + device)


def baseline_sample(image_path: Path, label_path: Path, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    image, label = Image.open(image_path).convert("RGB"), Image.open(label_path)
    ratio = rng.uniform(*RATIO)
    scale = (int(BASE[0] * ratio), int(BASE[1] * ratio))
    w, h = image.size
    factor = min(max(scale) / max(h, w), min(scale) / min(h, w))
    size = (int(w * factor + 0.5), int(h * factor + 0.5))
    image, label = np.asarray(image.resize(size, Image.BILINEAR)), np.asarray(label.resize(size, Image.NEAREST))
    for _ in range(10):
        top = rng.integers(0, max(label.shape[0] - CROP[0], 0) + 1)
        left = rng.integers(0, max(label.shape[1] - CROP[1], 0) + 1)
        window = label[top:top + CROP[0], left:left + CROP[1]]
        values, counts = np.unique(window, return_counts=True)
        counts = counts[values != 255]
        if len(counts) > 1 and counts.max() / counts.sum() < CAT_MAX:
            break
    image = image[top:top + CROP[0], left:left + CROP[1]]
    if rng.random() < 0.5:
        image, window = image[:, ::-1], window[:, ::-1]
    return photometric_numpy(image, rng), window


def photometric_numpy(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    x = image.astype(np.float32)
    if rng.integers(2):
        x = np.clip(x + rng.uniform(-32, 32), 0, 255)
    mode = rng.integers(2)
    if mode == 1 and rng.integers(2):
        x = np.clip(x * rng.uniform(0.5, 1.5), 0, 255)
    hsv = np.asarray(Image.fromarray(x.astype(np.uint8)).convert("HSV")).astype(np.int16)
    if rng.integers(2):
        hsv[..., 1] = np.clip(hsv[..., 1] * rng.uniform(0.5, 1.5), 0, 255)
    if rng.integers(2):
        hsv[..., 0] = (hsv[..., 0] + rng.integers(-18, 19) * 256 // 180) % 256
    x = np.asarray(Image.fromarray(hsv.astype(np.uint8), "HSV").convert("RGB")).astype(np.float32)
    if mode == 0 and rng.integers(2):
        x = np.clip(x * rng.uniform(0.5, 1.5), 0, 255)
    return x


def baseline(folder: Path, batches: int, batch: int) -> float:
    pairs = [line.split() for line in (folder / "splits" / "train.txt").read_text().splitlines()]
    rng = np.random.default_rng(0)
    mean, std = np.array(MEAN, np.float32), np.array(STD, np.float32)
    started = time.perf_counter()
    for b in range(batches):
        images, labels = [], []
        for k in range(batch):
            name_image, name_label = pairs[(b * batch + k) % len(pairs)]
            image, label = baseline_sample(folder / name_image, folder / name_label, rng)
            image = (image - mean) / std
            padded_image = np.zeros((*CROP, 3), np.float32)
            padded_label = np.full(CROP, 255, np.uint8)
            padded_image[:image.shape[0], :image.shape[1]] = image
            padded_label[:label.shape[0], :label.shape[1]] = label
            images.append(padded_image.transpose(2, 0, 1))
            labels.append(padded_label)
        x, y = torch.from_numpy(np.stack(images)), torch.from_numpy(np.stack(labels))
        assert x.shape == (batch, 3, *CROP) and y.shape == (batch, *CROP)
    return batches * batch / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer batches (about a minute on 2 cores)")
    args = parser.parse_args()
    torch.set_num_threads(1)  # a loader worker runs single-threaded
    batches, batch = (6, 4) if args.quick else (25, 8)
    with tempfile.TemporaryDirectory() as tmp:
        folder = write_images(Path(tmp), 16)
        ours(folder, 1, 2), baseline(folder, 1, 2)  # warm-up: page cache, allocators
        rates: dict[str, list[float]] = {"worker": [], "cpu_all": [], "baseline": []}
        for _ in range(2):  # interleaved, so load changes on a shared machine hit both
            worker, cpu_all = ours(folder, batches, batch)
            rates["worker"].append(worker)
            rates["cpu_all"].append(cpu_all)
            rates["baseline"].append(baseline(folder, batches, batch))
    best = {k: max(v) for k, v in rates.items()}
    print(f"crop {CROP[0]}x{CROP[1]}, VOC-sized JPEGs (500x375), batch {batch}, 1 thread = one loader worker")
    print(f"ours, loader worker (torchvision.io decode, uint8 rescale/crop/flip/pad, collate): {best['worker']:.1f} images/s")
    print(f"ours, worker + photometric/normalise also on this CPU (GPU's job in training):  {best['cpu_all']:.1f} images/s")
    print(f"baseline, PIL/numpy full chain per sample + collate:                          {best['baseline']:.1f} images/s")
    print(f"ratio all on one CPU, ours / baseline: {best['cpu_all'] / best['baseline']:.2f}x (for information)")
    print(f"ratio per loader worker, ours / baseline: {best['worker'] / best['baseline']:.2f}x (target >= 1.5x)")


if __name__ == "__main__":
    main()
