"""One cell's evaluation job, and the evaluation of the reference's released weights: the library's
evaluation wired to the files and MLflow runs.

Writes the pictures, DVC's views (``scores.json``, ``class_iou.csv``) and, last, ``metrics.json``, then
logs them and the model to the cell's MLflow run (the one training opened). Where the reference's training
log has been fetched, it is drawn beside ours and logged into the run.
"""
from __future__ import annotations

import csv
import json
import time
import warnings
from pathlib import Path
from typing import Any

import pandas as pd
import torch
import yaml

from deeplab import atomic, plots, reference, reference_log, serving
from deeplab.config import EVALUATION, TRAINING, CellConfig
from deeplab.datasets import manifest_hash, read_meta, read_split
from deeplab.environment import describe, git_state
from deeplab.evaluate import (SINGLE_SCALE, InputSpec, Protocol, SplitResult, evaluate_split, multi_scale,
                              sliding_window, summarize)
from deeplab.jobs import LOCK, reference_rows, run_tags, tracker_for
from deeplab.model import build_model, load_trained
from deeplab.paths import CellFiles
from deeplab.precision import configure_backends, precision_name, resolve_precision
from deeplab.predict import read_any_image
from deeplab.tracking import Tracker, log_split, metric_key

GRID_SAMPLES = 4  # images in the predictions picture


def protocols(cfg: CellConfig, multi: bool, sliding: bool) -> list[Protocol]:
    """The table's single-scale protocol first, then the extra ones asked for."""
    return [SINGLE_SCALE] + ([multi_scale(cfg.evaluate)] if multi else []) \
        + ([sliding_window(cfg.data.crop_size)] if sliding else [])


def run_evaluation(cfg: CellConfig, chosen: list[Protocol], device: torch.device,
                   predictions_dir: str | None = None) -> dict[str, Any]:
    """Score the cell's model on ``device`` on its val split; write the pictures and metrics.json; return
    its content."""
    tracker = tracker_for(cfg)
    precision = precision_name(resolve_precision(cfg.evaluate.precision, device))
    tracker.start(cfg.run_name, tags={"eval_precision": precision})  # in the background, while the split is scored
    tracker.monitor_system(cfg.train.system_metrics_every_s)
    log_split(tracker, cfg, cfg.data.val_split, "evaluation")
    try:
        doc, pictures = score(cfg, chosen, device, predictions_dir, tracker)
    except BaseException:
        tracker.end("FAILED")
        raise
    log_to_mlflow(tracker, cfg.cell.dataset, doc, pictures)
    write_dvc_views(cfg.files, doc)
    atomic.write_json(cfg.files.metrics, doc)
    tracker.log_artifact(cfg.files.metrics)
    log_served_model(cfg, tracker, doc)
    tracker.end("FINISHED")
    return doc


def write_dvc_views(files: CellFiles, doc: dict[str, Any]) -> None:
    """What DVC shows of a run: scores.json (headline numbers only, for ``dvc metrics show``) and
    class_iou.csv (the classes present in the split, for ``dvc plots show``'s bar chart)."""
    atomic.write_json(files.scores, {**{k: doc[k] for k in ("mIoU", "aAcc", "mAcc")},
                                     **{f"mIoU_{name}": extra["mIoU"] for name, extra in doc["extra"].items()}})
    rows = [(name, iou) for name, iou in doc["per_class_iou"].items() if iou is not None]
    atomic.write_text(files.class_iou, pd.DataFrame(rows, columns=["class", "IoU"]).to_csv(index=False))


def log_served_model(cfg: CellConfig, tracker: Tracker, doc: dict[str, Any]) -> None:
    """The cell's model as an MLflow PyTorch model named after the run (deeplab.serving), on the CPU, with
    a val image as its input example and the cell and its mIoU (metrics.json ``doc``) as tags; registered
    under the same name where the preset registers models."""
    cpu = torch.device("cpu")
    model = serving.Segmenter(load_trained(cfg, Path(cfg.files.model), cpu), InputSpec.of(cfg, cpu))
    first = read_split(cfg.prepared_dir, cfg.data.val_split)[0][0]
    tracker.log_model(model, serving.input_example(read_any_image(first)), serving.model_name(cfg),
                      serving.model_tags(cfg, doc), serving.registered_name(cfg))


def score(cfg: CellConfig, chosen: list[Protocol], device: torch.device, predictions_dir: str | None,
          tracker: Tracker) -> tuple[dict[str, Any], list[Path]]:
    started = time.perf_counter()
    spec = InputSpec.of(cfg, device)
    model = load_trained(cfg, Path(cfg.files.model), device,
                         data_hash=manifest_hash(cfg.prepared_dir, cfg.data.train_split))
    if predictions_dir:
        Path(predictions_dir).mkdir(parents=True, exist_ok=True)
    scored, results, meta = score_split(cfg, model, spec, device, chosen, predictions_dir)
    curve = reference_curve(cfg)
    log_reference_curve(tracker, curve)
    if curve:
        warn_if_loss_above(cfg, curve)
    pictures = draw_pictures(cfg.files, f"{cfg.run_name} ({cfg.preset.name})", results[SINGLE_SCALE.name],
                             scored.samples, meta["palette"], curve)
    doc = metrics_document(cfg, results, scored.images, time.perf_counter() - started, tracker.wait_run_id(),
                           precision_name(spec.dtype))
    doc["training_computed"] = model.computed  # how it trained: precision, BatchNorm's images, from which iteration
    if model.computed:
        doc["training_precision"] = model.computed[-1]["precision"]
    training = Path(cfg.files.environment)
    doc["environment"] = {"evaluation": describe(device, Path.cwd() / LOCK),
                          "training": json.loads(training.read_text()) if training.is_file() else []}
    return doc, pictures


def score_split(cfg: CellConfig, model: torch.nn.Module, spec: InputSpec, device: torch.device,
                chosen: list[Protocol], predictions_dir: str | None = None) -> tuple[SplitResult, dict, dict]:
    """``model`` on the cell's val split under each protocol, with the backends set for ``spec``: the scored
    split, the summary (metrics.json's numbers) per protocol, and the split's meta.json."""
    configure_backends(spec.dtype, benchmark=cfg.data.eval_scale is None)  # native size: one shape, autotune
    meta = read_meta(cfg.prepared_dir)
    scored = evaluate_split(model, cfg.prepared_dir, cfg.data.val_split, num_classes=cfg.data.num_classes,
                            spec=spec, protocols=chosen, device=device,
                            workers=min(cfg.train.workers, cfg.evaluate.max_workers),
                            predictions_dir=predictions_dir, keep_samples=GRID_SAMPLES)
    return scored, {p.name: summarize(scored.matrices[p.name], list(meta["classes"])) for p in chosen}, meta


def metrics_document(cfg: CellConfig, results: dict[str, dict[str, Any]], images: int, seconds: float,
                     run_id: str | None, precision: str) -> dict[str, Any]:
    """metrics.json: the single-scale numbers (the table's), the extra protocols, and provenance."""
    main = results[SINGLE_SCALE.name]
    records = cfg.records()
    fit = (f", keep-ratio resized to fit {list(cfg.data.eval_scale)}" if cfg.data.eval_scale else ", native size")
    return {"cell": cfg.cell.id, "seed": cfg.train.seed, "preset": cfg.preset.name, "split": cfg.data.val_split,
            "protocol": f"single-scale whole image{fit}, {precision}", "precision": precision,
            **{k: main[k] for k in ("mIoU", "aAcc", "mAcc")}, "reference_mIoU": cfg.cell.reference_miou,
            "batchnorm_images": trained_batchnorm_images(Path(cfg.files.train_log)),
            "reference_batchnorm_images": cfg.reference_batchnorm_images,
            "per_class_iou": main["per_class_iou"], "per_class_acc": main["per_class_acc"],
            "images": images, "seconds": round(seconds, 2),
            "extra": {name: values for name, values in results.items() if name != SINGLE_SCALE.name},
            "config": cfg.to_dict(), "records": {key: records[key] for key in (TRAINING, EVALUATION)},
            "provenance": {**git_state(Path.cwd()), "data_manifest": manifest_hash(cfg.prepared_dir, cfg.data.val_split),
                           **{key: records[key] for key in ("training_digest", "evaluation_digest")},
                           "mlflow_run_id": run_id}}


def trained_batchnorm_images(train_log: Path) -> int | None:
    """The fewest images a BatchNorm statistic covered in the run's training (its log's
    ``batchnorm_images``; an out-of-memory retry can lower it mid-run), None without a log that says."""
    if not train_log.is_file():
        return None
    with train_log.open() as f:
        values = [int(row["batchnorm_images"]) for row in csv.DictReader(f) if row.get("batchnorm_images")]
    return min(values) if values else None


def draw_pictures(files: CellFiles, title: str, result: dict[str, Any], samples: list, palette: list,
                  theirs: list[dict[str, str]] | None = None) -> list[Path]:
    """Per-class IoU bars, the prediction grid and, where the run has a training log, its learning curves."""
    pictures = [plots.iou_bars(result["per_class_iou"], files.picture("iou_per_class"), f"{title}: val IoU"),
                plots.prediction_grid(samples, palette, files.picture("predictions"), title)]
    if Path(files.train_log).is_file():
        pictures.append(plots.learning_curves(files.train_log, files.picture("learning_curves"), title,
                                              reference=theirs or None))
    return pictures


def reference_curve(cfg: CellConfig) -> list[dict[str, str]]:
    """The reference's log rows when it trained this run's schedule (same number of iterations), else none."""
    rows, config = reference_rows(cfg), Path(cfg.files.config)
    if not rows or not config.is_file() or not Path(cfg.files.train_log).is_file():
        return []
    return rows if int(rows[0]["max_iters"]) == yaml.safe_load(config.read_text())["max_iters"] else []


def warn_if_loss_above(cfg: CellConfig, rows: list[dict[str, str]]) -> None:
    """One warning when our training loss stayed above the reference's band (``rows``) for its windows."""
    with Path(cfg.files.train_log).open() as f:
        ours = {int(r["iteration"]): float(r["loss"]) for r in csv.DictReader(f)}
    start = reference_log.loss_stays_above(ours, rows)
    if start is not None:
        warnings.warn(f"{cfg.run_name}: from iteration {start} the training loss stayed more than "
                      f"{reference_log.LOSS_BAND:.0%} above the reference's for {reference_log.LOSS_WINDOWS} log windows "
                      f"({cfg.files.train_log} against its log): check the data and the recipe before trusting "
                      "this run's numbers", RuntimeWarning, stacklevel=2)


def log_reference_curve(tracker: Tracker, rows: list[dict[str, str]]) -> None:
    """The reference's training curve (its parsed log ``rows``) in the run, at its iterations."""
    for row in rows:
        tracker.log_metrics(reference.row_metrics(row), int(row["iteration"]))


def log_to_mlflow(tracker: Tracker, dataset: str, doc: dict[str, Any], pictures: list[Path]) -> None:
    """The headline numbers under their own names, each class's IoU as ``iou/<dataset>/<class>`` (one chart
    never holds two label spaces' classes: VOC's car is not Cityscapes'), and the pictures."""
    metrics = {k: doc[k] for k in ("mIoU", "aAcc", "mAcc")}
    metrics.update({f"iou/{dataset}/{metric_key(name)}": v for name, v in doc["per_class_iou"].items()
                    if v is not None})
    for name, extra in doc["extra"].items():
        metrics[f"mIoU_{metric_key(name)}"] = extra["mIoU"]
    tracker.log_metrics(metrics)
    for picture in pictures:
        tracker.log_artifact(picture, "pictures")


def run_reference_evaluation(cfg: CellConfig, device: torch.device, source: str | None = None) -> dict[str, Any]:
    """Download the reference's checkpoint of the cell (and its training log, unless the download step
    has), evaluate the weights with our evaluation (single scale and multi-scale + flip), write the
    reference run's metrics.json and pictures, and mirror them and the log to an MLflow run tagged as a
    reference evaluation."""
    paths = cfg.preset.paths
    files = paths.reference_run(cfg.cell.id)
    Path(files.dir).mkdir(parents=True, exist_ok=True)
    checkpoint = reference.fetch_asset(cfg.cell, "pth", Path(paths.reference_dir()), source)
    log_rows = reference_rows(cfg)  # the DAG's download step fetched it; by hand, fetch it now
    if not log_rows:
        log_rows = reference.fetch_log(cfg.cell, Path(paths.reference_dir()), Path(files.reference_log), source)
    state = reference.load_checkpoint(checkpoint)
    started = time.perf_counter()
    model = build_model(cfg, device)
    try:
        model.load_state_dict(state)
    except RuntimeError as error:
        raise reference.ReferenceAssetError(f"{checkpoint}: its weights do not fit cell {cfg.cell.id} (e.g. another "
                                            f"number of classes): {str(error).splitlines()[0]}") from None
    spec = InputSpec.of(cfg, device)
    tracker = tracker_for(cfg, files=files)
    tracker.start(f"reference {cfg.cell.id}", params={"checkpoint": checkpoint.name},
                  tags={**run_tags(cfg), "kind": "reference_evaluation"})
    tracker.monitor_system(cfg.train.system_metrics_every_s)
    log_split(tracker, cfg, cfg.data.val_split, "evaluation")
    try:
        scored, results, meta = score_split(cfg, model, spec, device, [SINGLE_SCALE, multi_scale(cfg.evaluate)])
        pictures = draw_pictures(files, f"reference weights, {cfg.cell.id} ({cfg.preset.name})",
                                 results[SINGLE_SCALE.name], scored.samples, meta["palette"])
    except BaseException:
        tracker.end("FAILED")
        raise
    doc = metrics_document(cfg, results, scored.images, time.perf_counter() - started, tracker.wait_run_id(),
                           precision_name(spec.dtype))
    doc["checkpoint"] = {"file": checkpoint.name, **reference.pin(Path(paths.reference_dir()), checkpoint.name)}
    doc["diff"] = round(doc["mIoU"] - cfg.cell.reference_miou, 4)
    doc["batchnorm_images"] = cfg.reference_batchnorm_images  # the reference's own training, not a run of ours
    log_to_mlflow(tracker, cfg.cell.dataset, doc, pictures)
    log_reference_curve(tracker, log_rows)
    atomic.write_json(files.metrics, doc)
    tracker.log_artifact(files.metrics)
    tracker.log_artifact(files.reference_log)
    tracker.end("FINISHED")
    return doc
