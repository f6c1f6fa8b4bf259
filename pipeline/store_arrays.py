"""Stage: a prepared dataset's training pairs as uint8 arrays, or none, in the dataset's arrays folder.

    python -m pipeline.store_arrays --dataset NAME --preset PRESET [--params DIR] [--workers N]

Where ``datasets.<name>.train_arrays`` is true, every training pair of the prepared folder is stored as
``.npy`` arrays read by memory map (deeplab.data.arrays); where it is false, the folder holds no arrays and
the loader decodes the prepared files. Either way the folder's ``source.json`` names the prepared split it
was made from, and only that file is what training depends on: turning arrays on or off rewrites this
folder and retrains nothing.
"""
from __future__ import annotations

from pathlib import Path

from deeplab.data.arrays import store
from pipeline import stage


def main(argv: list[str] | None = None) -> int:
    parser = stage.parser("store_arrays", __doc__)
    parser.add_argument("--dataset", required=True, help="a dataset of params/datasets.yaml, e.g. voc")
    parser.add_argument("--workers", type=int, default=None, help="processes writing arrays (default: all CPUs)")
    args = parser.parse_args(argv)

    def work() -> None:
        params = stage.params(args)
        paths = params.preset(args.preset).paths
        recipe = params.dataset(args.dataset, args.preset)
        out = Path(paths.arrays_dir(args.dataset))
        stored = store(Path(paths.prepared_dir(args.dataset)), out, recipe.train_split, recipe.train_arrays,
                       args.workers)
        print(f"pipeline.store_arrays: {out}: " + (f"{stored['pairs']} training pairs as arrays" if stored["stored"]
                                                    else "no arrays (train_arrays is off): the loader decodes the files"))
    return stage.run("store_arrays", work)


if __name__ == "__main__":
    raise SystemExit(main())
