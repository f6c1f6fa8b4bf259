"""Training input pipeline per loader worker, per dataset at its real image sizes: the chain as it was
(decode, resize the whole image, then crop) against the chain as it is (crop first: only the crop is
resampled; Cityscapes' training pairs read as uint8 arrays by memory map instead of decoding PNGs), in
the same run on the same files, and the loader workers each cell needs per GPU.

Files: VOC-sized JPEGs (500x375 and 375x500), ADE20k-sized JPEGs (683x512 and 512x683, its usual short
side), Cityscapes-sized PNGs (2048x1024, smooth content with noise: 2-3 MB like the real ones) with label
PNGs of class blocks. One thread = one loader worker. A worker's job is decode + rescale + crop + flip +
pad + the label check + collate; the photometric distortion and normalisation run on the GPU.

Every chain runs with a warm page cache (the files were just read); the new chain runs cold too: each file a
sample reads is dropped from the page cache (``posix_fadvise(..., POSIX_FADV_DONTNEED)``) right before, as a
real epoch over 24 GB of Cityscapes arrays reads them from disk. A check at the start says whether dropping
works on this filesystem (on tmpfs it cannot). Workers a cell needs per GPU = 2 x (crops per second the GPU
consumes) / (cold samples per second per worker), the GPU's rate from the cost model (deeplab.budget: 12 %
of the H100's dense bf16 peak) or ``--gpu-rate`` (a measured images/s of one step, e.g. from gpu_check).
Target: Cityscapes 4x faster per worker than the previous chain; no cell above 4 workers per GPU.

    python benchmarks/input_pipeline.py --quick     # about 40 s on a 2-core CPU
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from deeplab.budget import images_per_second  # noqa: E402
from deeplab.config import DATASETS, load_params  # noqa: E402
from deeplab.data.arrays import store  # noqa: E402
from deeplab.datasets import SegmentationDataset, TrainDataset, array_path, check_label  # noqa: E402
from deeplab.transforms import Augmentation, pad, random_crop, random_flip, random_rescale, sample_seed  # noqa: E402

PARAMS = load_params(Path(__file__).resolve().parent.parent / "params")
SIZES = {"voc": ((375, 500), (500, 375)), "ade20k": ((512, 683), (683, 512)), "cityscapes": ((1024, 2048),)}
FORMAT = {"voc": "jpg", "ade20k": "jpg", "cityscapes": "png"}


def write_dataset(folder: Path, dataset: str, count: int) -> Path:
    """``count`` image/label pairs at the dataset's sizes in the prepared layout (and its arrays where
    params say so)."""
    rng = np.random.default_rng(0)
    classes = PARAMS.datasets[dataset].num_classes
    (folder / "splits").mkdir(parents=True)
    lines = []
    for i in range(count):
        h, w = SIZES[dataset][i % len(SIZES[dataset])]
        label = np.zeros((h, w), np.uint8)
        for _ in range(6):
            top, left = rng.integers(0, h * 3 // 4), rng.integers(0, w * 3 // 4)
            label[top:top + h // 3, left:left + w // 4] = rng.integers(0, classes)
        label[::41] = 255
        rows, cols = np.mgrid[0:h, 0:w]
        smooth = np.stack([(rows * 255 // h), (cols * 255 // w), ((rows + cols) * 127 // (h + w))], -1)
        image = np.clip(smooth + label[..., None] * 3 + rng.normal(0, 6, (h, w, 3)), 0, 255).astype(np.uint8)
        name = f"{i}.{FORMAT[dataset]}"
        Image.fromarray(image).save(folder / name, quality=90) if FORMAT[dataset] == "jpg" \
            else Image.fromarray(image).save(folder / name, compress_level=6)
        Image.fromarray(label).save(folder / f"{i}_label.png")
        lines.append(f"{name} {i}_label.png")
    (folder / "splits" / "train.txt").write_text("\n".join(lines) + "\n")
    meta = {"classes": [str(k) for k in range(classes)], "palette": [[k, k, k] for k in range(classes)]}
    (folder / "meta.json").write_text(json.dumps(meta))
    store(folder, arrays_of(folder), "train", PARAMS.datasets[dataset].train_arrays, workers=1)
    return folder


def arrays_of(folder: Path) -> Path:
    """The arrays folder beside a prepared ``folder``, as the store_arrays stage writes it."""
    return folder.parent / f"{folder.name}-arrays"


def previous_sample(images: SegmentationDataset, index: int, aug: Augmentation, seed: int,
                    classes: int) -> dict[str, torch.Tensor]:
    """The chain as it was: decode, check the whole label, resize the whole image and label, crop, flip, pad."""
    image, label, _ = images[index]
    check_label(label, classes, images.pairs[index][1])
    gen = torch.Generator().manual_seed(seed)
    image, label = random_rescale(image, label, aug.base_scale, aug.ratio_range, gen)
    image, label = random_crop(image, label, aug.crop, aug.cat_max_ratio, gen, aug.crop_tries)
    image, label = random_flip(image, label, gen, aug.flip_prob)
    image, label = pad(image, label, aug.crop)
    return {"image": image.contiguous(), "label": label.contiguous()}


def rate(sample: Callable[[int, int], dict[str, torch.Tensor]], count: int, samples: int, batch: int,
         offset: int = 0) -> float:
    """Samples per second of ``sample(index, seed)`` including the collate of ``batch``-sized batches
    (``offset``: where in the files and seeds to start, so parallel workers read different samples)."""
    started = time.perf_counter()
    for b in range(samples // batch):
        items = [sample((offset + b * batch + k) % count, sample_seed(offset, b, k)) for k in range(batch)]
        torch.stack([item["image"] for item in items]), torch.stack([item["label"] for item in items])
    return samples // batch * batch / (time.perf_counter() - started)


def drop_from_cache(paths: list[Path]) -> None:
    """Evict ``paths`` from the page cache (their next read comes from the disk, where the filesystem has one)."""
    for path in paths:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def sample_files(data: TrainDataset) -> list[list[Path]]:
    """Per training pair, every file its sample reads: the image and label, and their arrays where used."""
    files = []
    for image, label in data.images.pairs:
        paths = [image, label]
        if data.arrays:
            paths += [array_path(data.arrays_dir, p.relative_to(data.root)) for p in (image, label)]
        files.append(paths)
    return files


def chain_rate(dataset: str, folder: Path, samples: int, batch: int, cold: bool, offset: int = 0) -> tuple[int, float]:
    """(samples, samples/s) of the chain as training runs it on ``folder``, with a warm page cache or ``cold``
    (each sample's files dropped from it just before the sample is read)."""
    cfg = PARAMS.resolve(next(c for c, cell in PARAMS.cells.items() if cell.dataset == dataset))
    data = TrainDataset(folder, "train", Augmentation.of(cfg), cfg.data.num_classes, arrays_of(folder))
    files = sample_files(data)

    def sample(index: int, seed: int) -> dict[str, torch.Tensor]:
        if cold:
            drop_from_cache(files[index])
        return data[(index, seed)]
    return samples // batch * batch, rate(sample, len(data), samples, batch, offset)


def chain_rate_job(job: tuple[str, str, int, int, bool, int]) -> tuple[int, float]:
    """:func:`chain_rate` in a pool's worker process (one thread, as a loader worker)."""
    dataset, folder, samples, batch, cold, offset = job
    torch.set_num_threads(1)
    return chain_rate(dataset, Path(folder), samples, batch, cold=cold, offset=offset)


def cache_drop_line(megabytes: int = 64) -> str:
    """Whether dropping a file from the page cache makes its next read slower on this filesystem."""
    with tempfile.TemporaryDirectory(dir=Path.cwd()) as tmp:
        path = Path(tmp) / "probe.bin"
        path.write_bytes(os.urandom(megabytes * 2**20))
        os.sync()

        def read() -> float:
            started = time.perf_counter()
            with path.open("rb") as f:
                while f.read(2**22):
                    pass
            return time.perf_counter() - started
        read()
        warm = read()
        drop_from_cache([path])
        cold = read()
    verdict = ("the cold figures read from the disk" if cold > 1.5 * warm else
               "no slower: this filesystem keeps the pages (tmpfs?) or its disk is as fast as memory; the cold "
               "figures may be warm ones")
    return (f"Page-cache drop check: {megabytes} MiB read warm in {warm * 1e3:.0f} ms, after posix_fadvise(DONTNEED) "
            f"in {cold * 1e3:.0f} ms ({cold / warm:.1f}x): {verdict}.")


def label_check_ms(folder: Path, classes: int, repeats: int = 20) -> float:
    """Milliseconds of the whole-label check of one decoded label (what the previous chain did per sample)."""
    label = SegmentationDataset(folder, "train")[0][1]
    started = time.perf_counter()
    for _ in range(repeats):
        check_label(label, classes, "bench")
    return (time.perf_counter() - started) / repeats * 1000


def measure(dataset: str, folder: Path, samples: int, batch: int, rounds: int) -> dict[str, float]:
    cfg = PARAMS.resolve(next(c for c, cell in PARAMS.cells.items() if cell.dataset == dataset))
    aug, classes = Augmentation.of(cfg), cfg.data.num_classes
    count = len(SegmentationDataset(folder, "train"))
    images = SegmentationDataset(folder, "train")
    new = TrainDataset(folder, "train", aug, classes, arrays_of(folder))
    decoding = TrainDataset(folder, "train", aug, classes)  # the crop-first chain on the decoded files: the decode's share apart
    files = sample_files(new)

    def cold(index: int, seed: int) -> dict[str, torch.Tensor]:
        drop_from_cache(files[index])
        return new[(index, seed)]
    chains = {"previous": lambda i, s: previous_sample(images, i, aug, s, classes),
              "new": lambda i, s: new[(i, s)], "new, cold": cold, "new, decoded files": lambda i, s: decoding[(i, s)]}
    for chain in chains.values():  # warm-up: page cache, allocators
        rate(chain, count, batch, batch)
    rates: dict[str, list[float]] = {name: [] for name in chains}
    for _ in range(rounds):  # interleaved, so load changes on a shared machine hit every chain
        for name, chain in chains.items():
            rates[name].append(rate(chain, count, samples, batch))
    best = {name: max(values) for name, values in rates.items()}
    best["label check ms"] = label_check_ms(folder, classes)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer files and samples (about 40 s on 2 cores)")
    parser.add_argument("--gpu-rate", type=float, default=None,
                        help="images/s one GPU trains (a measured step); default: the cost model's per cell")
    args = parser.parse_args()
    torch.set_num_threads(1)  # a loader worker runs single-threaded
    count, samples, batch, rounds = (4, 8, 4, 1) if args.quick else (16, 48, 8, 2)
    results = {}
    print(cache_drop_line())
    with tempfile.TemporaryDirectory(dir=Path.cwd()) as tmp:  # a disk, not tmpfs
        for dataset in DATASETS:
            folder = write_dataset(Path(tmp) / dataset, dataset, count)
            results[dataset] = measure(dataset, folder, samples, batch, rounds)
    print("samples/s per loader worker (1 thread; decode, rescale + crop + flip + pad, label check, collate)")
    print(f"{'dataset':<12}{'previous':>10}{'new':>10}{'new, cold':>11}{'new, decoded files':>20}{'new / previous':>16}"
          f"{'whole-label check':>19}")
    for dataset, r in results.items():
        print(f"{dataset:<12}{r['previous']:>10.1f}{r['new']:>10.1f}{r['new, cold']:>11.1f}{r['new, decoded files']:>20.1f}"
              f"{r['new'] / r['previous']:>15.2f}x{r['label check ms']:>16.2f} ms")
    source = f"{args.gpu_rate:.0f} images/s measured" if args.gpu_rate else "the cost model's H100 rate"
    print(f"\nloader workers per GPU = 2 x images/s ({source}) / cold samples/s per worker, new chain (warm; previous)")
    worst = 0.0
    for cell_id, cell in PARAMS.paper().cells.items():
        gpu = args.gpu_rate or images_per_second(PARAMS.resolve(cell_id), "H100")
        cold, warm, old = (2 * gpu / results[cell.dataset][k] for k in ("new, cold", "new", "previous"))
        worst = max(worst, cold)
        print(f"  {cell_id:<22} {gpu:>6.0f} images/s: {cold:5.1f} workers ({warm:5.1f}; {old:5.1f})")
    print(f"ratio Cityscapes new / previous per worker: {results['cityscapes']['new'] / results['cityscapes']['previous']:.2f}x "
          f"(target >= 4x); most workers any cell needs: {worst:.1f} (target <= 4)")


if __name__ == "__main__":
    main()
