"""Periodic validation while a cell trains (``train.val_every``): the val mIoU as an MLflow curve, scored
at the evaluation's numerics (``evaluate.precision``; fp32 = TF32 off) whatever the training's.

It scores the model being trained and changes nothing it trains: val_every is in neither of a run's records
(deeplab.config.RECORDS), and this module (with the evaluation code only it brings into a training job) is
not a code dependency of DVC's training stages (pipeline/dvc_presets.py, ``NOT_OUTPUT_CODE``), so editing
the evaluation protocols re-scores the runs and retrains none.
"""
from __future__ import annotations

from typing import Callable

import torch

from deeplab import distributed
from deeplab.config import CellConfig
from deeplab.evaluate import SINGLE_SCALE, InputSpec, evaluate_split
from deeplab.metrics import ConfusionMatrix
from deeplab.precision import tf32_as
from deeplab.tracking import Tracker


def validator(cfg: CellConfig, ctx: distributed.Context, tracker: Tracker) -> Callable[[torch.nn.Module, int], None]:
    """Periodic val mIoU (train.val_every): each rank scores its share, the matrices are summed."""
    def validate(model: torch.nn.Module, iteration: int) -> None:
        spec = InputSpec.of(cfg, ctx.device)
        with tf32_as(spec.dtype):  # the evaluation's numerics (fp32: TF32 off), not the training's
            result = evaluate_split(model, cfg.prepared_dir, cfg.data.val_split, num_classes=cfg.data.num_classes,
                                    spec=spec, protocols=[SINGLE_SCALE], device=ctx.device, rank=ctx.rank,
                                    world=ctx.world)
        matrix = ConfusionMatrix(cfg.data.num_classes, ctx.device)
        matrix.merge(distributed.sum_tensor(ctx, result.matrices[SINGLE_SCALE.name].matrix))
        tracker.log_metrics({"val_mIoU": matrix.compute()["mIoU"]}, iteration)
    return validate
