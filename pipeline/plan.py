"""Stage: predict every cell's GPU memory on any machine (fake tensors, seconds per configuration).

    python -m pipeline.plan --preset full [--cell CELL ...] [--gpu-memory 24,40,80] [--check]
    python -m pipeline.plan --preset full --backbone r50 --output-stride 8 --classes 21 --crop 512x512 --micro-batch 4 --precision bf16

Prints, per cell and precision (bf16, fp32), the predicted peak of one training step at its whole per-GPU
share split into parameters, gradients, optimiser state and activations, and for each GPU size the largest
micro-batch that fits with the gradient accumulation it implies (margins: deeplab.memory), and stores the
plan (results/memory_plan.json) and, for the preset whose results README.md shows, its memory table;
``--check`` verifies both without predicting. The free configuration (with the preset's optimiser) prints
that configuration's peak in GiB as its last line and writes nothing.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from deeplab import plan, reference
from deeplab.config import BACKBONES, Params
from deeplab.memory import GIB, ModelShape, predict_step
from deeplab.table import replace_block
from pipeline import stage

README = Path("README.md")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = stage.parser("plan", __doc__)
    parser.add_argument("--cell", action="append", help="only this cell (repeatable; default: every cell)")
    parser.add_argument("--gpu-memory", default="24,40,80", help="GPU sizes in GiB, comma-separated")
    stage.add_check(parser)
    free = parser.add_argument_group("one free configuration (all six needed)")
    free.add_argument("--backbone", choices=BACKBONES)
    free.add_argument("--output-stride", type=int, choices=(8, 16))
    free.add_argument("--classes", type=int)
    free.add_argument("--crop", help="HxW, e.g. 512x1024")
    free.add_argument("--micro-batch", type=int)
    free.add_argument("--precision", choices=("fp32", "bf16"))
    return parser.parse_args(argv)


def free_configuration(args: argparse.Namespace) -> None:
    params = stage.params(args)
    train = params.resolve(next(iter(params.cells)), args.preset).train  # the preset's optimiser and loss
    height, width = (int(v) for v in args.crop.lower().split("x"))
    shape = ModelShape(args.backbone, args.output_stride, args.classes, (height, width), args.precision)
    memory = predict_step(shape, args.micro_batch, train)
    print(", ".join(f"{k} {v:.2f} GiB" for k, v in memory.gib().items()))
    print(f"{memory.total / GIB:.2f}")


def cell_plan(args: argparse.Namespace) -> int:
    params = stage.params(args)
    path = Path(params.preset(args.preset).paths.memory_plan())
    stored = plan.read(path)
    if args.check:
        return check(params, args.preset, stored, path)
    cells = args.cell or list(params.cells)
    built = plan.build(params, args.preset, cells, stored, progress=lambda line: print(line, file=sys.stderr))
    sizes = [int(v) for v in args.gpu_memory.split(",")]
    shown = plan.frame(built, params, args.preset, sizes, cells)
    print(shown.to_markdown(index=False, tablefmt="pipe", disable_numparse=True))
    for cell in cells:
        images = params.resolve(cell, args.preset).share()
        for precision in plan.PRECISIONS:
            split = plan.at_share(built["entries"][f"{cell}/{precision}"], images).gib()
            print(f"{cell} {precision} at {images} images/GPU: " + ", ".join(f"{k} {v} GiB" for k, v in split.items()))
    files = {path: json.dumps(built, indent=2, sort_keys=True) + "\n"}
    if params.preset(args.preset).readme:
        files[README] = readme_with(built, params, args.preset)
    stage.write_or_check("plan", files, False, "")
    return 0


def readme_with(built: dict[str, Any], params: Params, preset: str) -> str:
    """README.md with its memory table rendered from the plan ``built`` of ``preset`` (the README's)."""
    paper = params.paper()  # README's table is the paper's cells'
    block = plan.render(built, paper, preset, reference.spent_by_cell(paper, preset))
    return replace_block(README.read_text(), block, README, plan.BEGIN, plan.END)


def check(params: Params, preset: str, stored: dict[str, Any] | None, path: Path) -> int:
    missing = plan.stale(stored or {}, params, preset)
    if missing:
        raise StalePlan(f"{path}: no current prediction for {', '.join(missing[:4])}"
                        f"{' ...' if len(missing) > 4 else ''}; run `python -m pipeline.plan --preset {preset}`")
    if params.preset(preset).readme:
        if readme_with(stored, params, preset) != README.read_text():
            raise StalePlan(f"{README}: the memory table differs from {path}; run `python -m pipeline.plan "
                            f"--preset {preset}`")
    print(f"pipeline.plan: {path} up to date")
    return 0


class StalePlan(stage.StaleOutput):
    pass


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    free = [args.backbone, args.output_stride, args.classes, args.crop, args.micro_batch, args.precision]
    if any(v is not None for v in free):
        if any(v is None for v in free):
            print("pipeline.plan: error: a free configuration needs --backbone, --output-stride, --classes, "
                  "--crop, --micro-batch and --precision", file=sys.stderr)
            return 2
        return stage.run("plan", lambda: free_configuration(args))
    return stage.run("plan", lambda: cell_plan(args))


if __name__ == "__main__":
    raise SystemExit(main())
