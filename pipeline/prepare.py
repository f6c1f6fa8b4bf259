"""Stage: a dataset's official archives (the preset's raw folder) -> its prepared folder.

    python -m pipeline.prepare --dataset NAME --preset PRESET [--params DIR] [--workers N]

Safe extraction, labels converted to single-channel PNGs of class indices (255 = ignore), split lists and,
written last, meta.json (see deeplab.data.prepare). The training pairs as arrays (``train_arrays``) are
the store_arrays stage's (pipeline/store_arrays.py). A preset with ``expect_official_counts: true`` (the
full preset) fails unless the splits have the official sizes of params/datasets.yaml. A dataset of your own
(``layout: folder``) is prepared from its ``source`` folder instead, every image and mask checked first
(deeplab.data.folder).
"""
from __future__ import annotations

from pathlib import Path

from deeplab.data.folder import prepare_folder, spec_of
from deeplab.data.prepare import prepare
from pipeline import stage


def main(argv: list[str] | None = None) -> int:
    parser = stage.parser("prepare", __doc__)
    parser.add_argument("--dataset", required=True, help="a dataset of params/datasets.yaml, e.g. voc")
    parser.add_argument("--workers", type=int, default=None, help="conversion processes (default: all CPUs)")
    args = parser.parse_args(argv)

    def work() -> None:
        params = stage.params(args)
        preset = params.preset(args.preset)
        recipe = params.dataset(args.dataset, args.preset)  # an unknown name is listed with the known ones
        out = Path(preset.paths.prepared_dir(args.dataset))
        if recipe.folder:
            meta = prepare_folder(Path(recipe.source), out, spec_of(recipe), args.dataset, args.workers,
                                  num_classes=recipe.num_classes, batch_size=recipe.batch_size)
        else:
            expected = recipe.expected_counts if preset.expect_official_counts else None
            meta = prepare(args.dataset, Path(preset.paths.raw_dir(args.dataset)), out, expected_counts=expected,
                           workers=args.workers)
        print(f"pipeline.prepare: {out}: {meta['counts']['train']} train, {meta['counts']['val']} val, "
              f"{meta['num_classes']} classes")
    return stage.run("prepare", work)


if __name__ == "__main__":
    raise SystemExit(main())
