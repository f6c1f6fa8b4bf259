"""Stage: train one table cell, resuming by itself from its last checkpoint.

    python -m pipeline.train --cell voc-r50-os8 --preset full [--params params]
    torchrun --nproc-per-node 4 -m pipeline.train --cell ... --preset full     # DDP, same global batch

Paths derive from the preset, relative to the current directory (the project root): data from
``<data_dir>/prepared/<dataset>``, outputs in ``<results_dir>/<cell>``: ``config.yaml`` (the resolved
config), ``train_log.csv``, ``checkpoints/`` and, written last, ``model.pt``.
Exit codes: 0 done, 1 NaN/inf loss, 2 bad input (params, data, checkpoint of another config, a second
copy running), 128 + signal when stopped by SIGTERM/SIGINT after writing a checkpoint.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import yaml

from deeplab import atomic, distributed
from deeplab.checkpoint import CheckpointError
from deeplab.config import CellConfig, ParamsError, load_params
from deeplab.datasets import DatasetError, manifest_hash, read_split
from deeplab.evaluate import SINGLE_SCALE, evaluate_split
from deeplab.metrics import ConfusionMatrix
from deeplab.tracking import Tracker, default_tracking_uri, git_state
from deeplab.train import Interrupted, NonFiniteLoss, resolve_precision, train


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cell", required=True, help="cell id, e.g. voc-r50-os8 (params/cells.yaml)")
    parser.add_argument("--preset", required=True, help="preset of params/presets.yaml, e.g. full or smoke")
    parser.add_argument("--params", default="params", help="folder of the parameter files")
    return parser.parse_args(argv)


def backbone_weights(cfg: CellConfig) -> Path | None:
    """The ImageNet checkpoint of the cell's backbone, or None when the preset trains from scratch."""
    if cfg.model.pretrained != "imagenet":
        return None
    from deeplab.data.sources import IMAGENET_WEIGHTS
    path = Path(cfg.preset.weights_dir()) / IMAGENET_WEIGHTS[cfg.cell.backbone].filename
    if not path.is_file():
        raise DatasetError(f"{path} not found: download the backbone weights first "
                           f"(python -m pipeline.download ... --preset {cfg.preset.name})")
    return path


def write_config(cfg: CellConfig, cell_dir: Path, max_iters: int, world: int) -> Path:
    path = cell_dir / "config.yaml"
    doc = {**cfg.to_dict(), "digest": cfg.digest(), "max_iters": max_iters, "world_size": world}
    return atomic.write_text(path, yaml.safe_dump(doc, sort_keys=False))


def start_tracking(cfg: CellConfig, cell_dir: Path, prepared: str, enabled: bool) -> Tracker:
    root = Path.cwd()
    tracker = Tracker(uri=default_tracking_uri(root), experiment=cfg.preset.experiment, cell_dir=cell_dir,
                      project_root=root, enabled=enabled)
    git = git_state(root)
    tags = {"cell": cfg.cell.id, "dataset": cfg.cell.dataset, "backbone": cfg.cell.backbone,
            "output_stride": str(cfg.cell.output_stride), "preset": cfg.preset.name,
            "git_commit": git["git_commit"], "git_dirty": str(git["git_dirty"]),
            "data_hash": manifest_hash(prepared, cfg.data.train_split), "config_digest": cfg.digest()}
    tracker.start(cfg.cell.id, params=cfg.to_dict(), tags=tags)
    return tracker


def validator(cfg: CellConfig, prepared: str, ctx: distributed.Context, tracker: Tracker):  # noqa: ANN201
    """Periodic val mIoU (train.val_every): each rank scores its share, the matrices are summed."""
    def validate(model, iteration: int) -> None:  # noqa: ANN001
        result = evaluate_split(model, prepared, cfg.data.val_split, num_classes=cfg.data.num_classes,
                                eval_scale=cfg.data.eval_scale, protocols=[SINGLE_SCALE], device=ctx.device,
                                dtype=resolve_precision(cfg.train.precision, ctx.device),
                                channels_last=cfg.train.channels_last, rank=ctx.rank, world=ctx.world)
        matrix = ConfusionMatrix(cfg.data.num_classes, ctx.device)
        matrix.merge(distributed.sum_tensor(ctx, result.matrices[SINGLE_SCALE.name].matrix))
        tracker.log_metrics({"val_mIoU": matrix.compute()["mIoU"]}, iteration)
    return validate


def run(cfg: CellConfig, ctx: distributed.Context) -> int:
    prepared, cell_dir = cfg.preset.prepared_dir(cfg.cell.dataset), Path(cfg.preset.cell_dir(cfg.cell.id))
    max_iters = cfg.max_iters(len(read_split(prepared, cfg.data.train_split)))
    weights = backbone_weights(cfg)
    if ctx.is_main:
        write_config(cfg, cell_dir, max_iters, ctx.world)
    tracker = start_tracking(cfg, cell_dir, prepared, enabled=ctx.is_main)
    try:
        final = train(cfg, prepared_dir=prepared, cell_dir=cell_dir, ctx=ctx, max_iters=max_iters, weights=weights,
                      on_metrics=tracker.log_metrics, on_validate=validator(cfg, prepared, ctx, tracker))
    except Interrupted as exc:
        tracker.end("KILLED")
        print(f"pipeline.train: {exc}", file=sys.stderr)
        return 128 + exc.signum
    except BaseException:
        tracker.end("FAILED")
        raise
    for name in ("config.yaml", "train_log.csv"):
        tracker.log_artifact(cell_dir / name)
    tracker.end("FINISHED")
    if ctx.is_main:
        print(f"pipeline.train: {cfg.cell.id} done ({max_iters} iterations) -> {final}")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        cfg = load_params(args.params).resolve(args.cell, args.preset)
    except (ParamsError, KeyError) as exc:
        print(f"pipeline.train: {exc}", file=sys.stderr)
        return 2
    ctx = distributed.setup()
    try:
        return run(cfg, ctx)
    except (CheckpointError, DatasetError, ValueError) as exc:
        print(f"pipeline.train: {cfg.cell.id}: {exc}", file=sys.stderr)
        return 2
    except NonFiniteLoss as exc:
        print(f"pipeline.train: {cfg.cell.id}: {exc}", file=sys.stderr)
        return 1
    finally:
        distributed.teardown()


if __name__ == "__main__":
    raise SystemExit(main())
