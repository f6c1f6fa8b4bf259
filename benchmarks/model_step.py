"""Training-step throughput of DeepLabV3+: forward + backward + SGD step, per variant.

For each variant (R50/R101 x OS8/OS16) and each of fp32 / bf16 autocast x contiguous / channels_last it
prints images/s and achieved GFLOP/s, then the ratios that matter: bf16 over fp32, channels_last over
contiguous, and the achieved rate as a fraction of the machine's dense matmul rate measured in this same
run (fp32 and bf16). Absolute times on a shared machine are noise; the ratios are the result.

    python benchmarks/model_step.py --quick              # ~1-2 minutes on a 2-core CPU
    python benchmarks/model_step.py --size 512 --batch 8  # a GPU, the recipe's crop
"""
from __future__ import annotations

import argparse
import contextlib
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

from deeplab.config import load_params
from deeplab.model import deeplabv3plus
from deeplab.schedule import build_optimizer

TRAIN = load_params(Path(__file__).resolve().parent.parent / "params").train  # the recipe's optimiser

VARIANTS = [("r50", 8), ("r50", 16), ("r101", 8), ("r101", 16)]
MODES = [(precision, layout) for precision in ("fp32", "bf16") for layout in ("contiguous", "channels_last")]


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def matmul_gflops(device: torch.device, dtype: torch.dtype, n: int, seconds: float) -> float:
    """Dense matmul rate, the best of repeated timings over about ``seconds``: the practical peak the
    model step is measured against."""
    a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
    a @ b
    sync(device)
    best, deadline = float("inf"), time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        start = time.perf_counter()
        a @ b
        sync(device)
        best = min(best, time.perf_counter() - start)
    return 2 * n ** 3 / best / 1e9


def step_flops(backbone: str, stride: int, classes: int, batch: int, size: int) -> float:
    """FLOPs of one forward + backward in training mode (aux head included), counted on the meta device."""
    with torch.device("meta"):
        model = deeplabv3plus(backbone=backbone, output_stride=stride, num_classes=classes).train()
        counter = FlopCounterMode(display=False)
        with counter:
            out = model(torch.empty(batch, 3, size, size))
            (out["out"].sum() + out["aux"].sum()).backward()
    return float(counter.get_total_flops())


def time_steps(backbone: str, stride: int, args: argparse.Namespace, device: torch.device,
               precision: str, layout: str) -> float:
    """Seconds per training step: the fastest of ``args.steps`` after ``args.warmup`` (the least disturbed
    by other work on a shared machine)."""
    torch.manual_seed(0)
    fmt = torch.channels_last if layout == "channels_last" else torch.contiguous_format
    model = deeplabv3plus(backbone=backbone, output_stride=stride, num_classes=args.classes)
    model = model.to(device, memory_format=fmt).train()
    optimizer = build_optimizer(model, TRAIN)
    images = torch.randn(args.batch, 3, args.size, args.size, device=device).to(memory_format=fmt)
    labels = torch.randint(0, args.classes, (args.batch, args.size, args.size), device=device)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16) if precision == "bf16" \
        else contextlib.nullcontext()
    times = []
    for step in range(args.warmup + args.steps):
        start = time.perf_counter()
        with autocast:
            out = model(images)
            loss = torch.nn.functional.cross_entropy(out["out"], labels, ignore_index=255) \
                + 0.4 * torch.nn.functional.cross_entropy(out["aux"], labels, ignore_index=255)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        sync(device)
        if step >= args.warmup:
            times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="tiny input, few steps: a 2-core CPU in ~2 min")
    parser.add_argument("--size", type=int, default=None, help="square input side (default 512, quick 32)")
    parser.add_argument("--batch", type=int, default=None, help="images per step (default 8, quick 2)")
    parser.add_argument("--steps", type=int, default=None, help="timed steps (default 10, quick 2)")
    parser.add_argument("--warmup", type=int, default=None, help="untimed steps first (default 3, quick 1)")
    parser.add_argument("--classes", type=int, default=21)
    parser.add_argument("--variants", default=None, help="comma list like r50-os8,r101-os16 (default all)")
    args = parser.parse_args()
    quick = {"size": 32, "batch": 2, "steps": 2, "warmup": 1} if args.quick else \
        {"size": 512, "batch": 8, "steps": 10, "warmup": 3}
    for key, value in quick.items():
        setattr(args, key, value if getattr(args, key) is None else getattr(args, key))
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    variants = VARIANTS if args.variants is None else \
        [(v.split("-")[0], int(v.split("-os")[1])) for v in args.variants.split(",")]
    n = 1024 if device.type == "cpu" else 8192
    matmul = {p: matmul_gflops(device, dtype, n, seconds=2.0)
              for p, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16))}
    # A device without native bf16 matmul (most CPUs) emulates it far below its fp32 rate; the fastest
    # dense rate the device reaches at all is then the honest denominator for bf16 too.
    peak = {"fp32": matmul["fp32"], "bf16": max(matmul.values())}
    print(f"device: {torch.cuda.get_device_name(device) if device.type == 'cuda' else 'cpu'}, "
          f"{torch.get_num_threads()} threads; input {args.batch}x3x{args.size}x{args.size}")
    print(f"dense matmul ({n}x{n}): fp32 {matmul['fp32']:.1f} GFLOP/s, bf16 {matmul['bf16']:.1f} GFLOP/s"
          + (" (no native bf16: bf16 is measured against the fp32 rate)" if matmul["bf16"] < matmul["fp32"] else ""))
    print(f"{'variant':<10} {'precision':<5} {'layout':<14} {'img/s':>8} {'GFLOP/s':>9} {'of peak':>8}")
    results = {}
    for backbone, stride in variants:
        flops = step_flops(backbone, stride, args.classes, args.batch, args.size)
        for precision, layout in MODES:
            seconds = time_steps(backbone, stride, args, device, precision, layout)
            gflops = flops / seconds / 1e9
            results[backbone, stride, precision, layout] = (args.batch / seconds, gflops)
            print(f"{backbone}-os{stride:<4} {precision:<9} {layout:<14} {args.batch / seconds:8.2f} "
                  f"{gflops:9.1f} {gflops / peak[precision]:8.1%}")
    print("\nratios (same run):")
    for backbone, stride in variants:
        r = {k[2:]: v[0] for k, v in results.items() if k[:2] == (backbone, stride)}
        best = max(results[(backbone, stride, p, l)][1] / peak[p] for p, l in MODES)
        print(f"{backbone}-os{stride}: bf16/fp32 {r['bf16', 'contiguous'] / r['fp32', 'contiguous']:.2f}x, "
              f"channels_last/contiguous fp32 {r['fp32', 'channels_last'] / r['fp32', 'contiguous']:.2f}x "
              f"bf16 {r['bf16', 'channels_last'] / r['bf16', 'contiguous']:.2f}x, "
              f"best fraction of matmul peak {best:.1%}")


if __name__ == "__main__":
    main()
