"""Stage: a dataset's official archives (the preset's raw folder) -> its prepared folder.

    python -m pipeline.prepare --dataset {voc,ade20k,cityscapes} --preset PRESET [--params DIR] [--workers N]

Safe extraction, labels converted to single-channel PNGs of class indices (255 = ignore), split lists and,
written last, meta.json (see deeplab.data.prepare). The training pairs as arrays (``train_arrays``) are
the store_arrays stage's (pipeline/store_arrays.py). A preset with ``expect_official_counts: true`` (the
full preset) fails unless the splits have the official sizes of params/datasets.yaml.
"""
from __future__ import annotations

from pathlib import Path

from deeplab.config import DATASETS
from deeplab.data.prepare import prepare
from pipeline import stage


def main(argv: list[str] | None = None) -> int:
    parser = stage.parser("prepare", __doc__)
    parser.add_argument("--dataset", required=True, choices=DATASETS)
    parser.add_argument("--workers", type=int, default=None, help="conversion processes (default: all CPUs)")
    args = parser.parse_args(argv)

    def work() -> None:
        params = stage.params(args)
        preset = params.preset(args.preset)
        expected = params.datasets[args.dataset].expected_counts if preset.expect_official_counts else None
        out = Path(preset.paths.prepared_dir(args.dataset))
        meta = prepare(args.dataset, Path(preset.paths.raw_dir(args.dataset)), out, expected_counts=expected,
                       workers=args.workers)
        print(f"pipeline.prepare: {out}: {meta['counts']['train']} train, {meta['counts']['val']} val, "
              f"{meta['num_classes']} classes")
    return stage.run("prepare", work)


if __name__ == "__main__":
    raise SystemExit(main())
