"""Run a job on GPUs of its own (lock-file slots, see deeplab.gpus), freed when it exits however it ends.

    python -m pipeline.gpu_slot --cell voc-r50-os8 -m pipeline.train --cell voc-r50-os8 --preset full
    python -m pipeline.gpu_slot --gpus 1 -- COMMAND [ARGS...]

``--cell`` takes the cell's GPU count from params/cells.yaml and, with ``-m MODULE``, starts the module with
this interpreter on one GPU or under torchrun on several. The slots' ids go to CUDA_VISIBLE_DEVICES. Without
GPUs (a CPU host) or inside a SLURM job the command runs as is. Snakefile and dvc.yaml wrap GPU stages in it.
"""
from __future__ import annotations

import sys
from pathlib import Path

from deeplab.config import load_params
from deeplab.gpus import default_lock_dir, exec_with_gpus, module_command
from pipeline import stage


def split_argv(argv: list[str]) -> tuple[list[str], list[str]]:
    """Own options before the first ``-m`` or ``--``; the job after it (``-m`` kept as a marker)."""
    for i, arg in enumerate(argv):
        if arg in ("-m", "--"):
            return argv[:i], argv[i:]
    return argv, []


def main(argv: list[str] | None = None) -> int:
    own, job = split_argv(sys.argv[1:] if argv is None else argv)
    parser = stage.parser("gpu_slot", __doc__, preset=False,
                          usage="%(prog)s (--gpus N | --cell ID) (-m MODULE ... | -- COMMAND ...)")
    count = parser.add_mutually_exclusive_group(required=True)
    count.add_argument("--gpus", type=int, help="GPU slots the job needs")
    count.add_argument("--cell", help="take the GPU count of this cell from params/cells.yaml")
    parser.add_argument("--lock-dir", type=Path, default=None,
                        help=f"folder of the slot lock files (default {default_lock_dir()})")
    parser.add_argument("--poll", type=float, default=2.0, help="seconds between tries while GPUs are busy")
    args = parser.parse_args(own)
    if not job[1:]:
        parser.error("give the job after the options: -m MODULE [ARGS] or -- COMMAND [ARGS]")

    def work() -> None:
        gpus = args.gpus if args.cell is None else load_params(args.params).resolve(args.cell).cell.gpus
        command = module_command(job[1], job[2:], gpus, sys.executable) if job[0] == "-m" else job[1:]
        exec_with_gpus(gpus, command, lock_dir=args.lock_dir, poll_s=args.poll)  # replaces this process
    return stage.run("gpu_slot", work)


if __name__ == "__main__":
    raise SystemExit(main())
