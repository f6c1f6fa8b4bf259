"""Stage: a trained cell's predictions on your own images.

    python -m pipeline.predict --cell voc-r50-os16 --preset smoke [--seed K] [--multi-scale]
        --out DIR IMAGE_OR_FOLDER ...

Writes per image ``<stem>.png`` (uint8 class indices at the image's size), ``<stem>_color.png`` (the
dataset's palette) and ``<stem>_overlay.jpg`` (deeplab.predict). Single scale at the dataset's test size by
default, as the table's number is measured; ``--multi-scale`` averages the scales and mirrored inputs of
the evaluation's multi-scale protocol (params/evaluate.yaml). Refuses a cell without a trained model, a model trained under
other params, and names each image it cannot decode (exit 1 after the others are done).
"""
from __future__ import annotations

from pathlib import Path

from deeplab.datasets import DatasetError, read_meta
from deeplab.device import resolve
from deeplab.evaluate import SINGLE_SCALE, InputSpec, multi_scale
from deeplab.model import load_trained
from deeplab.predict import images_in, predict_images
from deeplab.precision import configure_backends
from pipeline import stage


class UnreadableImages(DatasetError):
    exit_code = 1


def main(argv: list[str] | None = None) -> int:
    parser = stage.parser("predict", __doc__)
    parser.add_argument("inputs", nargs="+", metavar="IMAGE_OR_FOLDER", help="images, or folders searched for images")
    stage.add_run(parser)
    parser.add_argument("--out", required=True, type=Path, metavar="DIR", help="folder for the predictions")
    parser.add_argument("--multi-scale", action="store_true", help="the multi-scale + flip protocol (params/evaluate.yaml)")
    args = parser.parse_args(argv)

    def work() -> None:
        cfg = stage.params(args).resolve(args.cell, args.preset, args.seed)
        device = resolve("auto")  # a few images: the GPU when usable, else the CPU, whatever train.device says
        spec = InputSpec.of(cfg, device)
        configure_backends(spec.dtype)
        model = load_trained(cfg, Path(cfg.files.model), device)
        protocol = multi_scale(cfg.evaluate) if args.multi_scale else SINGLE_SCALE
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
