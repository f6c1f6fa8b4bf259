"""Inference throughput of an exported model: onnxruntime (CPU) against PyTorch (CPU, fp32), same images.

Both run the whole single-scale protocol the table is measured with (deeplab.export): an image of the
dataset's typical size in, the keep-ratio resize to its test size, the network, the logits upsampled to
the image's size and the argmax; PyTorch through deeplab.evaluate's pass (what pipeline.predict runs),
onnxruntime through the graph pipeline.export writes. The model is the recipe's (the preset's model.yaml,
random weights: speed does not depend on them). Prints images/s of each, the ratio onnxruntime / PyTorch
measured in this run, and how well the two agree.

    python benchmarks/onnx_runtime.py                         # VOC's test size, R50 OS16, full-width model (minutes)
    python benchmarks/onnx_runtime.py --cell cityscapes-r101-os8 --images 2
    python benchmarks/onnx_runtime.py --quick                 # the smoke preset's thin model and tiny test size
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import time
from pathlib import Path

import numpy as np
import torch

from deeplab.config import load_params
from deeplab.evaluate import SINGLE_SCALE, InputSpec, _pass
from deeplab.export import check_graph, export_graph
from deeplab.model import build_model

ROOT = Path(__file__).resolve().parent.parent
TYPICAL_SIZE = {"voc": (375, 500), "ade20k": (512, 683), "cityscapes": (1024, 2048)}  # (h, w) of their images


def timed(run, images: list[torch.Tensor], repeats: int) -> float:  # noqa: ANN001
    """Images per second of ``run`` over ``images``, the best of ``repeats`` passes (one warm-up first)."""
    run(images[0])
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        for image in images:
            run(image)
        best = min(best, time.perf_counter() - started)
    return len(images) / best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cell", default="voc-r50-os16")
    parser.add_argument("--preset", default="full")
    parser.add_argument("--images", type=int, default=3, help="images per timed pass")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--quick", action="store_true", help="the smoke preset's model and test size, one pass")
    args = parser.parse_args()
    import onnxruntime
    if args.quick:
        args.preset, args.images, args.repeats = "smoke", 2, 1
    torch.manual_seed(0)
    cfg = load_params(ROOT / "params").resolve(args.cell, args.preset)
    cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, pretrained="none"))  # no download:
    # speed does not depend on the weights
    cpu = torch.device("cpu")
    model = build_model(cfg, cpu).eval()
    spec = InputSpec.of(cfg, cpu)
    height, width = TYPICAL_SIZE[cfg.cell.dataset] if not args.quick else (48, 64)
    rng = np.random.default_rng(0)
    images = [torch.from_numpy(rng.integers(0, 256, (3, height, width), dtype=np.uint8)) for _ in range(args.images)]
    threads = torch.get_num_threads()
    print(f"{cfg.cell.id} ({args.preset} preset), images {height}x{width}, test size {cfg.data.eval_scale}, "
          f"{threads} CPU threads (torch), {os.cpu_count()} CPUs")
    started = time.perf_counter()
    graph = export_graph(model, spec, images[0].float()[None])
    print(f"export: {time.perf_counter() - started:.1f} s, {len(graph) / 2**20:.1f} MiB")
    check = check_graph(graph, model, spec, [(f"random {k}", image) for k, image in enumerate(images)])
    print(f"agreement: {check['pixel_agreement']:.4%} of pixels, largest logit difference "
          f"{check['max_logit_difference']:.2g}")
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    session = onnxruntime.InferenceSession(graph, options, providers=["CPUExecutionProvider"])
    fp32 = InputSpec(spec.eval_scale, spec.mean, spec.std, None, False)

    def with_torch(image: torch.Tensor) -> None:
        with torch.inference_mode():
            _pass(model, image.float()[None], 1.0, False, SINGLE_SCALE, fp32, several=False).argmax(1)

    def with_onnxruntime(image: torch.Tensor) -> None:
        session.run(None, {"images": image.float()[None].numpy()})

    pytorch = timed(with_torch, images, args.repeats)
    ort = timed(with_onnxruntime, images, args.repeats)
    print(f"PyTorch {torch.__version__}: {pytorch:.2f} images/s")
    print(f"onnxruntime {onnxruntime.__version__}: {ort:.2f} images/s")
    print(f"ratio onnxruntime / PyTorch: {ort / pytorch:.2f}x")


if __name__ == "__main__":
    main()
