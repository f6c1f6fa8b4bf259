"""Run a command on GPUs of its own: ``python -m pipeline.gpu_slot --gpus N -- COMMAND ...``.

Takes N free GPU slots of this host (lock files, see deeplab.gpus), exports CUDA_VISIBLE_DEVICES and
replaces itself by COMMAND; the slots are freed when COMMAND exits, however it ends. Without GPUs (CPU host)
or inside a SLURM job the command runs as is. The Snakefile wraps every training job in it.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from deeplab.gpus import GpuSlotError, default_lock_dir, exec_with_gpus


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gpus", type=int, required=True, help="GPU slots the command needs")
    parser.add_argument("--lock-dir", type=Path, default=None,
                        help=f"folder of the slot lock files (default {default_lock_dir()})")
    parser.add_argument("--poll", type=float, default=2.0, help="seconds between tries while GPUs are busy")
    parser.add_argument("command", nargs=argparse.REMAINDER, help="-- then the command to run")
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    try:
        exec_with_gpus(args.gpus, command, lock_dir=args.lock_dir, poll_s=args.poll)
    except GpuSlotError as error:
        sys.exit(f"pipeline.gpu_slot: {error}")


if __name__ == "__main__":
    main()
