"""Tool: check a folder of your own images and masks, and prepare it like the paper's datasets.

    python -m pipeline.folder FOLDER [--out DIR] [--label-encoding {index,color}] [--label-values 0:0,255:1]
                              [--ignore-color R,G,B ...] [--exif {apply,ignore}] [--batch-size N]
                              [--val-share 0.1] [--split-seed 0] [--workers N] [--params DIR]

FOLDER holds ``images/<stem>.jpg|.jpeg|.png``, ``labels/<stem>.png``, ``classes.txt`` (one class per line,
"name" or "name r g b") and, optionally, ``splits/train.txt`` and ``splits/val.txt`` (deeplab.data.folder).
Every image, mask, value, colour and split entry is checked first; each problem is one line naming the
file (and the value and pixel), and nothing is written. Without ``--out`` that check is all it does (exit
0: the folder can be trained on); with it, the prepared dataset (index PNG labels, split lists, meta.json)
is built there and swapped in whole. The training split must fill one batch (``--batch-size``; by default
VOC's in params/, which a dataset of your own takes unless its entry gives one). Exit codes: 0 fine, 2 a
problem in the folder.

To train on it, declare it in params/datasets.yaml (``layout: folder``, ``source:``; the options above are
its keys ``label_encoding``, ``label_values``, ``ignore_colors``, ``exif``, ``batch_size``, ``val_share``,
``split_seed``) with a cell in params/cells.yaml: the DAG's prepare stage then does the same from those
settings (README, "Train on your own data").
"""
from __future__ import annotations

import tempfile
from pathlib import Path

from deeplab.config import load_params
from deeplab.data.folder import ENCODINGS, EXIF_CHOICES, FolderError, FolderSpec, prepare_folder
from pipeline import stage


def label_values(text: str) -> dict[int, int]:
    """``0:0,255:1`` -> {0: 0, 255: 1}."""
    try:
        pairs = [item.split(":") for item in text.split(",") if item.strip()]
        return {int(raw): int(target) for raw, target in pairs}
    except ValueError:
        raise FolderError(f"--label-values: '{text}' is not a list of value:class pairs, e.g. 0:0,255:1") from None


def colour(text: str) -> tuple[int, int, int]:
    """``224,224,192`` -> (224, 224, 192)."""
    try:
        values = tuple(int(v) for v in text.split(","))
    except ValueError:
        values = ()
    if len(values) != 3 or not all(0 <= v <= 255 for v in values):
        raise FolderError(f"--ignore-color: '{text}' is not a colour r,g,b (each 0..255), e.g. 224,224,192")
    return values  # type: ignore[return-value]


def main(argv: list[str] | None = None) -> int:
    parser = stage.parser("folder", __doc__, preset=False)
    parser.add_argument("folder", type=Path, help="the folder: images/, labels/, classes.txt[, splits/]")
    parser.add_argument("--out", type=Path, default=None, metavar="DIR",
                        help="prepare the dataset into this folder (default: check only, write nothing)")
    parser.add_argument("--label-encoding", choices=ENCODINGS, default="index",
                        help="index: mask values are class indices, 255 = ignore; color: RGB masks in classes.txt's colours")
    parser.add_argument("--label-values", default="", help="mask value -> class, e.g. 0:0,255:1 for binary 0/255 masks")
    parser.add_argument("--ignore-color", action="append", default=[], metavar="R,G,B",
                        help="color masks: a colour read as ignore (a boundary colour); may be repeated")
    parser.add_argument("--exif", choices=EXIF_CHOICES, default=None,
                        help="whether the masks follow the images' EXIF orientation (apply) or their stored pixels "
                             "(ignore); needed only where an image's size cannot tell")
    parser.add_argument("--batch-size", type=int, default=None,
                        help="the training batch the train split must fill (default: VOC's in params/; 0: no check)")
    parser.add_argument("--val-share", type=float, default=0.1, help="val share of a drawn split (no splits/ given)")
    parser.add_argument("--split-seed", type=int, default=0, help="seed of a drawn split")
    parser.add_argument("--workers", type=int, default=None, help="checking processes (default: all CPUs)")
    args = parser.parse_args(argv)

    def work() -> None:
        spec = FolderSpec(args.label_encoding, label_values(args.label_values) or None, args.val_share, args.split_seed,
                          tuple(colour(text) for text in args.ignore_color), args.exif)
        batch = load_params(args.params).datasets["voc"].batch_size if args.batch_size is None else args.batch_size
        if args.out is None:
            with tempfile.TemporaryDirectory() as scratch:  # the whole check, then nothing kept
                meta = prepare_folder(args.folder, Path(scratch) / "check", spec, args.folder.name, args.workers,
                                      batch_size=batch)
            print(f"pipeline.folder: {args.folder}: fine: {meta['counts']['train']} train, {meta['counts']['val']} val, "
                  f"{meta['num_classes']} classes")
            return
        meta = prepare_folder(args.folder, args.out, spec, args.folder.name, args.workers, batch_size=batch)
        print(f"pipeline.folder: wrote {args.out}: {meta['counts']['train']} train, {meta['counts']['val']} val, "
              f"{meta['num_classes']} classes")
    return stage.run("folder", work)


if __name__ == "__main__":
    raise SystemExit(main())
