"""Evaluation throughput: the confusion-matrix update in pixels/s against torchmetrics' multiclass
Jaccard index on the same data (VOC's 21 and ADE20k's 150 classes, VOC-sized 512x683 maps with ignore
pixels), and whole-image inference images/s of the single-scale protocol (``deeplab.evaluate.predict``).
Ratios (ours / torchmetrics) are printed last.

    python benchmarks/evaluate.py --quick     # ~1 minute on a 2-core CPU
    python benchmarks/evaluate.py --size 512  # on a GPU: the recipe's short side
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from deeplab.config import load_params  # noqa: E402
from deeplab.evaluate import SINGLE_SCALE, InputSpec, predict  # noqa: E402
from deeplab.metrics import ConfusionMatrix  # noqa: E402
from deeplab.model import build_model  # noqa: E402

CFG = load_params(Path(__file__).resolve().parent.parent / "params").resolve("voc-r50-os16")


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def maps(classes: int, count: int, device: torch.device) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(prediction int64 as argmax gives it, target uint8 as labels are read) pairs, 10% ignored."""
    gen = torch.Generator().manual_seed(classes)
    pairs = []
    for _ in range(count):
        target = torch.randint(0, classes, (512, 683), generator=gen, dtype=torch.uint8)
        target[torch.rand(target.shape, generator=gen) < 0.1] = 255
        prediction = torch.randint(0, classes, target.shape, generator=gen)
        pairs.append((prediction.to(device), target.to(device)))
    return pairs


def rate(update, pairs, device: torch.device, repeats: int) -> float:  # noqa: ANN001
    """Pixels/s of ``update(prediction, target)`` over the pairs, best of ``repeats``."""
    best = 0.0
    for _ in range(repeats):
        sync(device)
        started = time.perf_counter()
        for prediction, target in pairs:
            update(prediction, target)
        sync(device)
        best = max(best, sum(t.numel() for _, t in pairs) / (time.perf_counter() - started))
    return best


def confusion_rates(classes: int, device: torch.device, count: int, repeats: int) -> tuple[float, float]:
    from torchmetrics.classification import MulticlassJaccardIndex
    pairs = maps(classes, count, device)
    ours = ConfusionMatrix(classes, device)
    reference = MulticlassJaccardIndex(classes, ignore_index=255, average="macro").to(device)
    ours_rate = rate(ours.update, pairs, device, repeats)
    # torchmetrics needs integer targets it can compare with ignore_index: give it int64 like a user would
    long_pairs = [(p, t.long()) for p, t in pairs]
    reference_rate = rate(reference.update, long_pairs, device, repeats)
    matrix = reference.confmat.to(torch.int64)
    assert torch.equal(ours.matrix // repeats, matrix // repeats), "confusion matrices differ"
    return ours_rate, reference_rate


def inference_rate(device: torch.device, size: int, images: int) -> float:
    model = build_model(CFG, device).eval()  # channels-last as the recipe's train.channels_last
    image = torch.randint(0, 256, (3, size * 3 // 4, size), dtype=torch.uint8, device=device)  # 4:3 like VOC
    spec = InputSpec((size * 4, size), CFG.train.mean, CFG.train.std,
                     torch.bfloat16 if device.type == "cuda" else None, CFG.train.channels_last)
    predict(model, image, SINGLE_SCALE, spec)  # warm-up
    sync(device)
    started = time.perf_counter()
    for _ in range(images):
        predict(model, image, SINGLE_SCALE, spec)
    sync(device)
    return images / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer maps and a small inference size")
    parser.add_argument("--size", type=int, default=None, help="inference short side (default 128 quick, 512)")
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    count, repeats = (8, 2) if args.quick else (32, 3)
    size = args.size or (128 if args.quick else 512)
    ratios = {}
    for classes in (21, 150):
        ours, reference = confusion_rates(classes, device, count, repeats)
        ratios[classes] = ours / reference
        print(f"confusion matrix, {classes} classes: ours {ours / 1e6:.1f} Mpixel/s, "
              f"torchmetrics MulticlassJaccardIndex {reference / 1e6:.1f} Mpixel/s")
    images = inference_rate(device, size, 3 if args.quick else 20)
    print(f"whole-image single-scale inference, R50-OS16, short side {size} (4:3), {device.type}: "
          f"{images:.2f} images/s")
    for classes, ratio in ratios.items():
        print(f"ratio confusion-matrix update, ours / torchmetrics, {classes} classes: {ratio:.2f}x (target >= 1x)")


if __name__ == "__main__":
    main()
