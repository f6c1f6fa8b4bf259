"""One cell's training job: the library's training loop wired to the cell's files and MLflow run.

Writes, in this order: ``config.yaml`` (the resolved recipe, its digest, the schedule's length), the
environment record, the training log and checkpoints as it goes and, last, the model (deeplab.train).
MLflow mirrors them in the cell's run, which the evaluation job reopens. Where the reference's training log
has been fetched, the schedule is checked against it before any GPU time is spent, and the loss against
its band at every log point while training (:class:`Yardstick`).
"""
from __future__ import annotations

import csv
import json
import sys
import warnings
from pathlib import Path
from typing import Any

import torch
import yaml

from deeplab import atomic, distributed, reference_log
from deeplab.config import CellConfig
from deeplab.data.sources import IMAGENET_WEIGHTS
from deeplab.datasets import DatasetError, read_split
from deeplab.environment import describe, freeze
from deeplab.jobs import LOCK, reference_rows, run_tags, tracker_for
from deeplab.schedule import poly_lr
from deeplab.tracking import Tracker, log_split
from deeplab.train import Interrupted, cell_lock, train
from deeplab.validation import validator

ENV_TAGS = ("torch", "cuda", "cudnn", "device", "device_count", "gpu_name", "lock_matches", "lock_sha256")


def record_environment(cfg: CellConfig, device: torch.device) -> dict[str, Any]:
    """Append where this training runs to the run's environment file (a resume elsewhere adds an entry)
    and write the installed packages beside it; return this machine's entry."""
    env = describe(device, Path.cwd() / LOCK)
    path = Path(cfg.files.environment)
    entries = json.loads(path.read_text()) if path.is_file() else []
    if not entries or entries[-1] != env:
        atomic.write_json(path, entries + [env])
    atomic.write_text(cfg.files.pip_freeze, freeze())
    return env


def backbone_weights(cfg: CellConfig) -> Path | None:
    """The ImageNet checkpoint of the cell's backbone, or None when the preset trains from scratch or the cell
    starts from another cell's model."""
    if cfg.model.pretrained != "imagenet" or cfg.start_model:
        return None
    path = Path(cfg.preset.paths.weights_dir()) / IMAGENET_WEIGHTS[cfg.cell.backbone].filename
    if not path.is_file():
        raise DatasetError(f"{path} not found: download the backbone weights first "
                           f"(python -m pipeline.download --weights {cfg.cell.backbone} --preset {cfg.preset.name})")
    return path


class Yardstick:
    """The reference's training log as a yardstick while training: at each log point our loss is compared
    with its band (deeplab.reference_log.loss_stays_above); the first time it stayed above for the stated
    windows, one warning and an MLflow tag and, with ``train.stop_when_diverging``, the reason to stop."""

    def __init__(self, cfg: CellConfig, max_iters: int, tracker: Tracker, enabled: bool = True) -> None:
        rows = reference_rows(cfg) if enabled else []  # DDP: rank 0 judges, the others follow its stop
        if enabled and not rows and cfg.preset.schedule_must_match_reference:  # the preset compares: say it is off
            warnings.warn(f"{cfg.run_name}: the yardstick is off: the reference's training log of {cfg.cell.id} is not "
                          f"in {cfg.preset.paths.reference_run(cfg.cell.id).reference_log} (its download failed, or "
                          "was not run); the run goes on unwatched. Fetch it with `python -m pipeline.download "
                          f"--reference-log {cfg.cell.id} --preset {cfg.preset.name}`: a resumed run is then held to it",
                          RuntimeWarning, stacklevel=2)
        self.rows = rows if rows and int(rows[0]["max_iters"]) == max_iters else []  # the same schedule only
        self.cfg, self.tracker = cfg, tracker
        self.ours: dict[int, float] = {}
        self.reason: str | None = None
        self.warned = False
        log = Path(cfg.files.train_log)
        if self.rows and log.is_file():  # a resumed run: the windows logged before
            with log.open() as f:
                self.ours = {int(r["iteration"]): float(r["loss"]) for r in csv.DictReader(f)}

    def __call__(self, metrics: dict[str, float], iteration: int) -> None:
        if not self.rows or self.warned:
            return
        self.ours[iteration] = metrics["loss"]
        start = reference_log.loss_stays_above(self.ours, self.rows)
        if start is None:
            return
        self.warned = True
        what = (f"from iteration {start} the training loss stayed more than {reference_log.LOSS_BAND:.0%} above the "
                f"reference's for {reference_log.LOSS_WINDOWS} log windows (up to iteration {iteration}; its training log)")
        warnings.warn(f"{self.cfg.run_name}: {what}: check the data and the recipe before the run goes on",
                      RuntimeWarning, stacklevel=2)
        self.tracker.set_tags({"diverging_from_reference": what})
        if self.cfg.train.stop_when_diverging:
            self.reason = what

    def stop_reason(self) -> str | None:
        return self.reason


def run_training(cfg: CellConfig, ctx: distributed.Context) -> tuple[Path, int]:
    """Train the cell (resuming by itself) under its lock; return the model's path and the iterations."""
    with cell_lock(cfg.files, enabled=ctx.is_main) as leftovers:
        for path in leftovers:
            print(f"removed {path}, left by a training process killed while writing it", file=sys.stderr)
        return _train_locked(cfg, ctx)


def _train_locked(cfg: CellConfig, ctx: distributed.Context) -> tuple[Path, int]:
    files = cfg.files
    max_iters = cfg.max_iters(len(read_split(cfg.prepared_dir, cfg.data.train_split)))
    reference_schedule(cfg, max_iters)  # before any GPU time is spent
    weights = backbone_weights(cfg)
    env: dict[str, Any] = {}
    if ctx.is_main:
        doc = {**cfg.to_dict(), "training_digest": cfg.training_digest(),
               "evaluation_digest": cfg.evaluation_digest(), "max_iters": max_iters, "world_size": ctx.world}
        atomic.write_text(files.config, yaml.safe_dump(doc, sort_keys=False))
        env = record_environment(cfg, ctx.device)
    tracker = tracker_for(cfg, enabled=ctx.is_main)
    tracker.start(cfg.run_name, params=cfg.to_dict(),
                  tags={**run_tags(cfg), **{f"env.{k}": str(env.get(k)) for k in ENV_TAGS}})
    tracker.monitor_system(cfg.train.system_metrics_every_s)
    log_split(tracker, cfg, cfg.data.train_split, "training")
    yardstick = Yardstick(cfg, max_iters, tracker, enabled=ctx.is_main and cfg.cell.in_paper)  # yours: no reference

    def on_metrics(metrics: dict[str, float], iteration: int) -> None:
        tracker.log_metrics(metrics, iteration)
        yardstick(metrics, iteration)
    try:
        final = train(cfg, ctx, max_iters=max_iters, weights=weights, start=cfg.start_model, on_metrics=on_metrics,
                      on_validate=validator(cfg, ctx, tracker), stop_reason=yardstick.stop_reason,
                      on_computing=lambda computed: tracker.set_tags(computing_tags(computed)))
    except Interrupted:
        tracker.end("KILLED")
        raise
    except BaseException:
        tracker.end("FAILED")
        raise
    for path in (files.config, files.train_log, files.environment, files.pip_freeze):
        tracker.log_artifact(path)
    tracker.end("FINISHED")
    return final, max_iters


def computing_tags(computed: list[dict[str, Any]]) -> dict[str, str]:
    """How a run trains, as MLflow tags: its precision and the fewest images per BatchNorm statistic (an
    out-of-memory retry can lower them mid-run), and every change with its iteration."""
    return {"train_precision": ",".join(dict.fromkeys(entry["precision"] for entry in computed)),
            "batchnorm_images": str(min(entry["batchnorm_images"] for entry in computed)),
            "computed": json.dumps(computed)}


def reference_schedule(cfg: CellConfig, max_iters: int) -> bool:
    """Our learning rate equals the reference's at every iteration its log has (an error otherwise); a
    schedule of another length is an error in the full preset and not compared elsewhere."""
    rows = reference_rows(cfg)
    train = cfg.train
    return bool(rows) and reference_log.check_schedule(
        rows, max_iters, lambda k: poly_lr(k - 1, max_iters, lr=train.lr, min_lr=train.min_lr, power=train.poly_power),
        strict=cfg.preset.schedule_must_match_reference)
