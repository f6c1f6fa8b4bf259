"""Stage: train one table cell, resuming by itself from its last checkpoint.

    python -m pipeline.train --cell voc-r50-os8 --preset full [--params params]
    torchrun --nproc-per-node 4 -m pipeline.train --cell ... --preset full     # DDP, same global batch

Reads the preset's prepared dataset; writes the cell's files (deeplab.paths): the resolved config, the
training log, checkpoints and, last, the model. Exit codes: 0 done, 1 NaN/inf loss, 2 bad input (params,
data, a checkpoint of another config, a second copy running), 128 + signal when stopped by SIGTERM/SIGINT
after writing a checkpoint.
"""
from __future__ import annotations

from deeplab import distributed
from pipeline import stage


def main(argv: list[str] | None = None) -> int:
    parser = stage.parser("train", __doc__)
    stage.add_run(parser)
    args = parser.parse_args(argv)

    def work() -> None:
        cfg = stage.params(args).resolve(args.cell, args.preset, args.seed)
        ctx = distributed.setup(cfg.train.device)  # first: no GPU, no data read
        from deeplab.train_job import run_training  # after the check: seconds of imports
        try:
            final, max_iters = run_training(cfg, ctx)
        finally:
            distributed.teardown()
        if ctx.is_main:
            print(f"pipeline.train: {cfg.run_name} done ({max_iters} iterations) -> {final}")
    return stage.run("train", work)


if __name__ == "__main__":
    raise SystemExit(main())
