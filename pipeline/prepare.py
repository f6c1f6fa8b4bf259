"""Prepare stage: official archives in RAW -> a prepared dataset folder OUT (see deeplab.data.prepare).

    python -m pipeline.prepare --dataset {voc,ade20k,cityscapes} --raw RAW --out OUT [--expect-official-counts]
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from deeplab.config import DATASETS, ParamsError, load_params
from deeplab.data.extract import UnsafeArchiveError
from deeplab.data.layouts import LayoutError
from deeplab.data.prepare import PrepareError, prepare


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m pipeline.prepare", description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", required=True, choices=DATASETS)
    parser.add_argument("--raw", required=True, type=Path, help="folder holding the official archives")
    parser.add_argument("--out", required=True, type=Path, help="prepared folder to (re)build")
    parser.add_argument("--expect-official-counts", action="store_true",
                        help="fail unless the split sizes are the official ones (params/datasets.yaml)")
    parser.add_argument("--params", type=Path, default=Path("params"),
                        help="parameter folder holding datasets.yaml (default: params)")
    parser.add_argument("--workers", type=int, default=None, help="conversion processes (default: all CPUs)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        expected = load_params(args.params).datasets[args.dataset].expected_counts \
            if args.expect_official_counts else None
    except ParamsError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    try:
        meta = prepare(args.dataset, args.raw, args.out, expected_counts=expected, workers=args.workers)
    except (PrepareError, LayoutError, UnsafeArchiveError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(f"{args.out}: {meta['counts']['train']} train, {meta['counts']['val']} val, "
          f"{meta['num_classes']} classes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
