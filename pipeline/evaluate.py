"""Stage: score one trained cell on its validation split, per the recipe's protocol.

    python -m pipeline.evaluate --cell voc-r50-os8 --preset full [--params params]
        [--save-predictions DIR] [--multi-scale] [--sliding-window]

Reads the cell's model and the prepared val split; writes the cell's pictures and, last and atomically,
its metrics.json (deeplab.paths): the single-scale whole-image result (the table's number), any extra
protocols, and provenance. The numbers are mirrored to the cell's MLflow run (the one training opened).
"""
from __future__ import annotations

from deeplab.jobs import protocols, run_evaluation
from pipeline import stage


def main(argv: list[str] | None = None) -> int:
    parser = stage.parser("evaluate", __doc__)
    parser.add_argument("--cell", required=True, help="cell id, e.g. voc-r50-os8 (params/cells.yaml)")
    parser.add_argument("--seed", type=int, default=None,
                        help="one of the cell's seeds (presets.<preset>.seeds; default: train.seed)")
    parser.add_argument("--save-predictions", metavar="DIR", help="write one uint8 PNG of class indices per image")
    parser.add_argument("--multi-scale", action="store_true", help="also score multi-scale + flip (params/evaluate.yaml)")
    parser.add_argument("--sliding-window", action="store_true", help="also score crop-sized sliding windows")
    args = parser.parse_args(argv)

    def work() -> None:
        cfg = stage.params(args).resolve(args.cell, args.preset, args.seed)
        doc = run_evaluation(cfg, protocols(cfg, args.multi_scale, args.sliding_window), args.save_predictions)
        extra = "".join(f", {k} {v['mIoU']:.2f}" for k, v in doc["extra"].items())
        print(f"pipeline.evaluate: {cfg.run_name}: mIoU {doc['mIoU']:.2f} (aAcc {doc['aAcc']:.2f}, mAcc "
              f"{doc['mAcc']:.2f}{extra}) on {doc['images']} images in {doc['seconds']} s")
    return stage.run("evaluate", work)


if __name__ == "__main__":
    raise SystemExit(main())
