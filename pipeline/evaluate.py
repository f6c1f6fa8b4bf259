"""Stage: score one trained cell on its validation split, per the recipe's protocol.

    python -m pipeline.evaluate --cell voc-r50-os8 --preset full [--params params]
        [--save-predictions DIR] [--multi-scale] [--sliding-window]

Reads ``<results_dir>/<cell>/model.pt`` and the prepared val split; writes, in the cell folder, the
pictures ``iou_per_class.png``, ``learning_curves.png``, ``predictions.png`` and, last and atomically,
``metrics.json``: the single-scale whole-image result (the table's number) plus any extra protocols,
with provenance. The numbers are mirrored to the cell's MLflow run (the one training opened).
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import torch

from deeplab import atomic, plots
from deeplab.config import CellConfig, ParamsError, load_params
from deeplab.datasets import DatasetError, manifest_hash, read_meta
from deeplab.evaluate import MULTI_SCALE_FLIP, SINGLE_SCALE, Protocol, evaluate_split, sliding_window, summarize
from deeplab.tracking import Tracker, default_tracking_uri, git_state, metric_key
from deeplab.train import build_model, resolve_precision

GRID_SAMPLES = 4  # images in predictions.png


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cell", required=True, help="cell id, e.g. voc-r50-os8 (params/cells.yaml)")
    parser.add_argument("--preset", required=True, help="preset of params/presets.yaml, e.g. full or smoke")
    parser.add_argument("--params", default="params", help="folder of the parameter files")
    parser.add_argument("--save-predictions", metavar="DIR", help="write one uint8 PNG of class indices per image")
    parser.add_argument("--multi-scale", action="store_true", help="also score multi-scale (0.5-1.75) + flip")
    parser.add_argument("--sliding-window", action="store_true", help="also score crop-sized sliding windows")
    return parser.parse_args(argv)


def load_model(cfg: CellConfig, path: Path, device: torch.device) -> torch.nn.Module:
    """The trained weights, refused when they were trained under another resolved config."""
    if not path.is_file():
        raise DatasetError(f"{path} not found: train the cell first (python -m pipeline.train --cell "
                           f"{cfg.cell.id} --preset {cfg.preset.name})")
    saved = torch.load(path, map_location="cpu", weights_only=False)
    if saved.get("digest") != cfg.digest():
        raise DatasetError(f"{path} was trained under a different resolved config than params/ gives now; "
                           "retrain the cell (delete the file) or restore the params it was trained with")
    model = build_model(cfg, device)
    model.load_state_dict(saved["state_dict"])
    return model.eval()


def protocols(cfg: CellConfig, args: argparse.Namespace) -> list[Protocol]:
    chosen = [SINGLE_SCALE]
    if args.multi_scale:
        chosen.append(MULTI_SCALE_FLIP)
    if args.sliding_window:
        chosen.append(sliding_window(cfg.data.crop_size))
    return chosen


def draw_pictures(cfg: CellConfig, cell_dir: Path, result: dict[str, Any], samples: list,
                  palette: list) -> list[Path]:
    title = f"{cfg.cell.id} ({cfg.preset.name})"
    pictures = [plots.iou_bars(result["per_class_iou"], cell_dir / "iou_per_class.png", f"{title}: val IoU"),
                plots.prediction_grid(samples, palette, cell_dir / "predictions.png", title)]
    if (cell_dir / "train_log.csv").is_file():
        pictures.append(plots.learning_curves(cell_dir / "train_log.csv", cell_dir / "learning_curves.png", title))
    return pictures


def run(cfg: CellConfig, args: argparse.Namespace) -> dict[str, Any]:
    started = time.perf_counter()
    prepared, cell_dir = cfg.preset.prepared_dir(cfg.cell.dataset), Path(cfg.preset.cell_dir(cfg.cell.id))
    tracker = Tracker(uri=default_tracking_uri(Path.cwd()), experiment=cfg.preset.experiment, cell_dir=cell_dir,
                      project_root=Path.cwd())
    tracker.start(cfg.cell.id)  # in the background, while the split is scored
    try:
        return score(cfg, args, tracker, prepared, cell_dir, started)
    except BaseException:
        tracker.end("FAILED")
        raise


def score(cfg: CellConfig, args: argparse.Namespace, tracker: Tracker, prepared: str, cell_dir: Path,
          started: float) -> dict[str, Any]:
    meta = read_meta(prepared)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.backends.cudnn.benchmark = cfg.data.eval_scale is None  # native size: one shape, worth autotuning
    model = load_model(cfg, cell_dir / "model.pt", device)
    if args.save_predictions:
        Path(args.save_predictions).mkdir(parents=True, exist_ok=True)
    chosen = protocols(cfg, args)
    scored = evaluate_split(model, prepared, cfg.data.val_split, num_classes=cfg.data.num_classes,
                            eval_scale=cfg.data.eval_scale, protocols=chosen, device=device,
                            dtype=resolve_precision(cfg.train.precision, device), channels_last=cfg.train.channels_last,
                            workers=min(cfg.train.workers, 4), predictions_dir=args.save_predictions,
                            keep_samples=GRID_SAMPLES)
    results = {p.name: summarize(scored.matrices[p.name], list(meta["classes"])) for p in chosen}
    main = results[SINGLE_SCALE.name]
    run_id = tracker.wait_run_id()
    pictures = draw_pictures(cfg, cell_dir, main, scored.samples, meta["palette"])
    doc = {"cell": cfg.cell.id, "preset": cfg.preset.name, "split": cfg.data.val_split,
           "protocol": "single-scale whole image" + (f", keep-ratio resized to fit {list(cfg.data.eval_scale)}"
                                                     if cfg.data.eval_scale else ", native size"),
           **{k: main[k] for k in ("mIoU", "aAcc", "mAcc")}, "reference_mIoU": cfg.cell.reference_miou,
           "per_class_iou": main["per_class_iou"], "per_class_acc": main["per_class_acc"],
           "images": scored.images, "seconds": round(time.perf_counter() - started, 2),
           "extra": {name: values for name, values in results.items() if name != SINGLE_SCALE.name},
           "provenance": {**git_state(Path.cwd()), "data_manifest": manifest_hash(prepared, cfg.data.val_split),
                          "config_digest": cfg.digest(), "mlflow_run_id": run_id}}
    mirror(tracker, doc, pictures)
    atomic.write_json(cell_dir / "metrics.json", doc)
    tracker.log_artifact(cell_dir / "metrics.json")
    tracker.end("FINISHED")
    return doc


def mirror(tracker: Tracker, doc: dict[str, Any], pictures: list[Path]) -> None:
    metrics = {k: doc[k] for k in ("mIoU", "aAcc", "mAcc")}
    metrics.update({f"iou/{metric_key(name)}": v for name, v in doc["per_class_iou"].items() if v is not None})
    for name, extra in doc["extra"].items():
        metrics[f"mIoU_{metric_key(name)}"] = extra["mIoU"]
    tracker.log_metrics(metrics)
    for picture in pictures:
        tracker.log_artifact(picture, "pictures")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        cfg = load_params(args.params).resolve(args.cell, args.preset)
        doc = run(cfg, args)
    except (ParamsError, KeyError, DatasetError) as exc:
        print(f"pipeline.evaluate: {exc}", file=sys.stderr)
        return 2
    extra = "".join(f", {k} {v['mIoU']:.2f}" for k, v in doc["extra"].items())
    print(f"pipeline.evaluate: {cfg.cell.id}: mIoU {doc['mIoU']:.2f} (aAcc {doc['aAcc']:.2f}, mAcc "
          f"{doc['mAcc']:.2f}{extra}) on {doc['images']} images in {doc['seconds']} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
