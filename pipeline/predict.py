"""Stage: a trained cell's predictions on your own images.

    python -m pipeline.predict --cell voc-r50-os16 [--preset smoke] [--seed K] [--scales 0.75,1,1.25] [--flip]
        --out DIR IMAGE_OR_FOLDER ...

Writes per image ``<stem>.png`` (uint8 class indices at the image's size), ``<stem>_color.png`` (the
dataset's palette) and ``<stem>_overlay.jpg`` (deeplab.predict). Single scale at the dataset's test size by
default, as the table's number is measured; ``--scales``/``--flip`` average other sizes and mirrored inputs
(the evaluation's multi-scale protocol). Refuses a cell without a trained model, a model trained under
other params, and names each image it cannot decode (exit 1 after the others are done).
"""
from __future__ import annotations

import argparse
from pathlib import Path

import torch

from deeplab.datasets import DatasetError, read_meta
from deeplab.evaluate import SINGLE_SCALE, InputSpec, Protocol
from deeplab.model import load_trained
from deeplab.predict import images_in, predict_images
from deeplab.precision import configure_backends
from pipeline import stage


class UnreadableImages(DatasetError):
    exit_code = 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipeline.predict", description=__doc__.splitlines()[0])
    parser.add_argument("inputs", nargs="+", metavar="IMAGE_OR_FOLDER", help="images, or folders searched for images")
    parser.add_argument("--cell", required=True, help="cell id, e.g. voc-r50-os8 (params/cells.yaml)")
    parser.add_argument("--preset", default="full", help="preset of params/presets.yaml (default: full)")
    parser.add_argument("--params", default="params", help="folder of the parameter files (default: params)")
    parser.add_argument("--seed", type=int, default=None, help="one of the cell's seeds (default: train.seed)")
    parser.add_argument("--out", required=True, type=Path, help="folder for the predictions")
    parser.add_argument("--scales", default="1", help="comma-separated ratios of the test size (default: 1)")
    parser.add_argument("--flip", action="store_true", help="also average horizontally flipped inputs")
    args = parser.parse_args(argv)

    def work() -> None:
        cfg = stage.params(args).resolve(args.cell, args.preset, args.seed)
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        spec = InputSpec.of(cfg, device)
        configure_backends(spec.dtype)
        model = load_trained(cfg, Path(cfg.files.model), device)
        ratios = tuple(float(r) for r in args.scales.split(","))
        protocol = SINGLE_SCALE if ratios == (1.0,) and not args.flip else Protocol("custom", ratios, args.flip)
        images = images_in(args.inputs)
        failed = []
        for k, result in enumerate(predict_images(model, images, args.out, protocol, spec,
                                                  read_meta(cfg.prepared_dir)["palette"], device), start=1):
            if isinstance(result, DatasetError):
                failed.append(str(result))
                print(f"[{k}/{len(images)}] skipped: {result}", flush=True)
            else:
                print(f"[{k}/{len(images)}] {result.source} -> {result.classes}", flush=True)
        if failed:
            raise UnreadableImages(f"{len(failed)} of {len(images)} images could not be read: {'; '.join(failed)}")
    return stage.run("predict", work)


if __name__ == "__main__":
    raise SystemExit(main())
