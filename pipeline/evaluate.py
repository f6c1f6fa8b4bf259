"""Stage: score one trained cell on its validation split, per the recipe's protocol.

    python -m pipeline.evaluate --cell voc-r50-os8 --preset full [--params params]
        [--out DIR] [--multi-scale] [--sliding-window]

Reads the cell's model and the prepared val split; writes the cell's pictures and, last and atomically,
its metrics.json (deeplab.paths): the single-scale whole-image result (the table's number), any extra
protocols, and provenance. The numbers are mirrored to the cell's MLflow run (the one training opened).
"""
from __future__ import annotations

from deeplab.device import resolve
from pipeline import stage


def main(argv: list[str] | None = None) -> int:
    parser = stage.parser("evaluate", __doc__)
    stage.add_run(parser)
    parser.add_argument("--out", metavar="DIR", help="also write each val image's prediction there (uint8 PNG of "
                                                      "class indices)")
    parser.add_argument("--multi-scale", action="store_true", help="also score multi-scale + flip (params/evaluate.yaml)")
    parser.add_argument("--sliding-window", action="store_true", help="also score crop-sized sliding windows")
    args = parser.parse_args(argv)

    def work() -> None:
        cfg = stage.params(args).resolve(args.cell, args.preset, args.seed)
        device = resolve(cfg.train.device)  # first: no GPU, no data read and no MLflow run opened
        from deeplab.eval_job import protocols, run_evaluation  # after the check: seconds of imports
        doc = run_evaluation(cfg, protocols(cfg, args.multi_scale, args.sliding_window), device, args.out)
        extra = "".join(f", {k} {v['mIoU']:.2f}" for k, v in doc["extra"].items())
        print(f"pipeline.evaluate: {cfg.run_name}: mIoU {doc['mIoU']:.2f} (aAcc {doc['aAcc']:.2f}, mAcc "
              f"{doc['mAcc']:.2f}{extra}) on {doc['images']} images in {doc['seconds']} s")
    return stage.run("evaluate", work)


if __name__ == "__main__":
    raise SystemExit(main())
