"""The reference's training log as a training run reads it: the parsed log's CSV, the check that our
learning-rate schedule is its, and the band its loss sets for ours (the yardstick).

Kept apart from deeplab.reference (checkpoints, downloads, the log's parser, the cost table) so that a
training job runs all of its code: DVC's training stages depend on this module, not on those.
"""
from __future__ import annotations

import csv
from pathlib import Path
from typing import Any, Mapping

from deeplab.errors import PipelineError

CSV_FIELDS = ("iteration", "max_iters", "learning_rate", "loss_cls", "loss_aux", "loss_total", "seconds_per_iter",
              "max_gpu_alloc_GB")


def read_log_csv(path: Path) -> list[dict[str, str]]:
    """The rows deeplab.reference.write_log wrote (the parsed log of deeplab.paths' ``reference_log``)."""
    with path.open() as f:
        return list(csv.DictReader(f))


LOSS_BAND = 0.10    # our loss more than 10 % above the reference's ...
LOSS_WINDOWS = 5    # ... at 5 consecutive shared log points: one warning


class ScheduleMismatch(PipelineError):
    """Our learning rate differs from the reference's at an iteration both logged."""


def check_schedule(rows: list[dict[str, str]], max_iters: int, lr_used_at: Any, strict: bool) -> bool:
    """Our learning rate at every iteration the reference logged must be its. ``lr_used_at(k)``: the lr our
    schedule applies in the k-th iteration (1-based, as its ``cur_iter`` counts). A schedule of another length
    is an error when ``strict`` (the recipe's preset), else not compared; returns whether it was compared."""
    theirs = int(rows[0]["max_iters"])
    if theirs != max_iters:
        if strict:
            raise ScheduleMismatch(f"the reference trained this cell for {theirs} iterations, this run for "
                                   f"{max_iters}: the schedule is not the recipe's (datasets.yaml epochs/batch_size)")
        return False
    for row in rows:
        iteration, their_lr = int(row["iteration"]), float(row["learning_rate"])
        ours = lr_used_at(iteration)
        if abs(ours - their_lr) > 1e-9 * max(abs(their_lr), 1e-12):
            raise ScheduleMismatch(f"learning rate at iteration {iteration}: ours {ours!r}, the reference's "
                                   f"{their_lr!r} (its training log): the schedule differs from the recipe's "
                                   "(train.lr, min_lr, poly_power in params/train.yaml)")
    return True


def loss_stays_above(ours: Mapping[int, float], rows: list[dict[str, str]], band: float = LOSS_BAND,
                     windows: int = LOSS_WINDOWS) -> int | None:
    """The iteration from which our logged loss stayed more than ``band`` above the reference's for
    ``windows`` consecutive shared log points (the first such stretch), else None."""
    run: list[int] = []
    for row in rows:
        iteration = int(row["iteration"])
        if iteration not in ours:
            continue
        if ours[iteration] > (1 + band) * float(row["loss_total"]):
            run.append(iteration)
            if len(run) == windows:
                return run[0]
        else:
            run = []
    return None
