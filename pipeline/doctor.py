"""Tool: is this machine ready for a preset's DAG? One line per check, before anything is rented or run.

    python -m pipeline.doctor --preset full [--params DIR] [--gpus-elsewhere] [--cells ID,ID] [--datasets NAME,NAME]

Checks (deeplab.doctor): the GPUs against train.device and the driver this torch build needs; per cell,
whether its memory plan fits this GPU (micro-batch x accumulation, images per BatchNorm statistic, the
evaluation's peak); free disk; each dataset's state; Cityscapes' credentials or placed archives; the
MLflow store; the results folder; the installed packages against requirements.lock; whether the preset's DVC
pipeline lists what params/ gives (pipeline.dvc_presets: a cell or seed added without regenerating it). Each
line is OK, WARN
(the run goes, the line says what it costs) or FAIL (the fix). Nothing is downloaded or computed: seconds.
Exit codes: 0 nothing blocks, 1 a check failed. Snakemake runs it when a DAG starts (``onstart``), with
``--gpus-elsewhere`` under a cluster executor, whose jobs check their own GPUs, and with the cells (and
datasets) of the jobs it is about to run: a DAG for one cell is not stopped by another cell's needs. Without
``--cells``/``--datasets`` it checks the whole preset; an empty list checks none (``--cells ''``).
"""
from __future__ import annotations

from pathlib import Path

from deeplab.config import Params, UnknownName
from deeplab.doctor import Check, run_checks
from deeplab.errors import PipelineError
from deeplab.tracking import default_tracking_uri
from pipeline import dvc_presets, stage


def dvc_check(params: Params, preset: str) -> Check:
    """Whether the preset's DVC pipeline is current (a WARN: Snakemake does not read it; `dvc repro` would stop
    at its records stage)."""
    path = dvc_presets.pipeline_of(preset)
    if not dvc_presets.PIPELINE.is_file() or not path.is_file():
        return Check("OK", "dvc pipeline", f"no {path} here: nothing to check")
    try:
        problems = dvc_presets.stale(params, only=[path])
    except PipelineError as error:  # a hand edit that generating cannot fix
        problems = [str(error)]
    if problems:
        return Check("WARN", "dvc pipeline", f"{path} does not list what params/ gives (a cell, seed or dataset "
                                             "added?): run `python -m pipeline.dvc_presets` before `dvc repro`")
    return Check("OK", "dvc pipeline", f"{path} lists every run and dataset of params/")


def names(text: str) -> list[str]:
    """A comma-separated list of names ('' = none)."""
    return [name.strip() for name in text.split(",") if name.strip()]


def main(argv: list[str] | None = None) -> int:
    parser = stage.parser("doctor", __doc__)
    parser.add_argument("--gpus-elsewhere", action="store_true",
                        help="the jobs run on other nodes (a cluster executor): skip this host's GPU and plan checks")
    parser.add_argument("--cells", type=names, default=None, metavar="ID,ID",
                        help="check for these cells' runs only (comma-separated; '' = none); default: every cell")
    parser.add_argument("--datasets", type=names, default=None, metavar="NAME,NAME",
                        help="also check these datasets, which none of --cells needs (comma-separated)")
    args = parser.parse_args(argv)

    def work() -> int:
        params = stage.params(args)
        unknown = sorted(set(args.datasets or []) - set(params.datasets))
        if unknown:
            raise UnknownName(f"--datasets: unknown dataset '{unknown[0]}'; known: {', '.join(params.datasets)}")
        scope = "" if args.cells is None and args.datasets is None else \
            f" (cells: {', '.join(args.cells or []) or 'none'}; further data: {', '.join(args.datasets or []) or 'none'})"
        print(f"pipeline.doctor: preset {args.preset}{scope}")
        checks = run_checks(params, args.preset, default_tracking_uri(Path.cwd()), args.gpus_elsewhere,
                            progress=lambda check: print(check.line(), flush=True), cells=args.cells,
                            datasets=args.datasets)
        checks.append(dvc_check(params, args.preset))
        print(checks[-1].line(), flush=True)
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
