"""Tool: is this machine ready for a preset's DAG? One line per check, before anything is rented or run.

    python -m pipeline.doctor --preset full [--params DIR] [--gpus-elsewhere]

Checks (deeplab.doctor): the GPUs against train.device and the driver this torch build needs; per cell,
whether its memory plan fits this GPU (micro-batch x accumulation, images per BatchNorm statistic, the
evaluation's peak); free disk; each dataset's state; Cityscapes' credentials or placed archives; the
MLflow store; the results folder; the installed packages against requirements.lock. Each line is OK, WARN
(the run goes, the line says what it costs) or FAIL (the fix). Nothing is downloaded or computed: seconds.
Exit codes: 0 nothing blocks, 1 a check failed. Snakemake runs it when a DAG starts (``onstart``), with
``--gpus-elsewhere`` under a cluster executor, whose jobs check their own GPUs.
"""
from __future__ import annotations

from pathlib import Path

from deeplab.doctor import run_checks
from deeplab.tracking import default_tracking_uri
from pipeline import stage


def main(argv: list[str] | None = None) -> int:
    parser = stage.parser("doctor", __doc__)
    parser.add_argument("--gpus-elsewhere", action="store_true",
                        help="the jobs run on other nodes (a cluster executor): skip this host's GPU and plan checks")
    args = parser.parse_args(argv)

    def work() -> int:
        params = stage.params(args)
        print(f"pipeline.doctor: preset {args.preset}")
        checks = run_checks(params, args.preset, default_tracking_uri(Path.cwd()), args.gpus_elsewhere,
                            progress=lambda check: print(check.line(), flush=True))
        failed = [check for check in checks if check.status == "FAIL"]
        warned = sum(check.status == "WARN" for check in checks)
        if failed:
            print(f"pipeline.doctor: {len(failed)} problem(s) block preset {args.preset} "
                  f"({', '.join(check.name for check in failed)}); {warned} warning(s)")
            return 1
        print(f"pipeline.doctor: nothing blocks preset {args.preset}; {warned} warning(s)")
        return 0
    return stage.run("doctor", work)


if __name__ == "__main__":
    raise SystemExit(main())
