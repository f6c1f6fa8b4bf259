"""Tool: a trained cell's model as ONNX, checked against PyTorch, beside model.pt and in its MLflow run.

    python -m pipeline.export --cell voc-r50-os16 --preset smoke [--seed K] [--images 4]

Writes ``model.onnx`` (float32 RGB 0..255 (N, 3, H, W) in, int64 class indices (N, H, W) out, the
single-scale protocol inside the graph; batch, height and width dynamic; deeplab.export) and
``model.onnx.json`` (the check: onnxruntime against the PyTorch model in fp32 on the first validation images
of the cell's dataset, the share of pixels whose class agrees and the largest logit difference) into the
run's folder, then logs both to the run's MLflow run under ``onnx/``. Asked for by name, never by the table's
DAG (``snakemake ... export``; ``dvc repro export/dvc.yaml``). Refuses a cell without a trained model and a
model trained under other params than the preset gives now, as ``pipeline.predict`` does. Exit codes: 0
written, 1 the check failed (nothing written), 2 bad input.
"""
from __future__ import annotations

import sys
import warnings
from pathlib import Path

from pipeline import stage


def main(argv: list[str] | None = None) -> int:
    parser = stage.parser("export", __doc__)
    stage.add_run(parser)
    parser.add_argument("--images", type=int, default=None, metavar="N",
                        help="validation images the check runs (default: deeplab.export.CHECK_IMAGES)")
    args = parser.parse_args(argv)

    def work() -> None:
        import torch

        from deeplab import atomic
        from deeplab.datasets import read_image, read_split
        from deeplab.evaluate import InputSpec
        from deeplab.export import CHECK_IMAGES, ExportError, below_bar, check_graph, export_graph
        from deeplab.model import load_trained

        cfg = stage.params(args).resolve(args.cell, args.preset, args.seed)
        cpu = torch.device("cpu")  # fp32 on the CPU: the graph's numerics, and what onnxruntime is checked on
        model = load_trained(cfg, Path(cfg.files.model), cpu)  # a stale model is refused here, naming what changed
        spec = InputSpec.of(cfg, cpu)
        pairs = read_split(cfg.prepared_dir, cfg.data.val_split)[:args.images or CHECK_IMAGES]
        if not pairs:
            raise ExportError(f"{cfg.prepared_dir}: the {cfg.data.val_split} split lists no image to check the export on")
        images = [(image.name, read_image(image)) for image, _ in pairs]
        graph = export_graph(model, spec, images[0][1].float()[None])
        check = check_graph(graph, model, spec, images)
        check.update(cell=cfg.cell.id, run=cfg.run_key, preset=cfg.preset.name, training_digest=cfg.training_digest())
        failed = below_bar(check)
        if failed:
            raise ExportError(f"{cfg.run_key}: {failed}; nothing written")
        atomic.write_bytes(cfg.files.onnx, graph)
        atomic.write_json(cfg.files.onnx_check, check)
        logged = log_to_run(cfg)
        print(f"pipeline.export: wrote {cfg.files.onnx} ({len(graph) / 2**20:.1f} MiB, opset {check['opset']}): "
              f"{check['pixel_agreement']:.4%} of {check['pixels']} pixels agree with PyTorch on {len(images)} "
              f"{cfg.data.val_split} images, largest logit difference {check['max_logit_difference']:.2g}"
              + (f"; logged to MLflow run {logged}" if logged else ""))
    return stage.run("export", work)


def log_to_run(cfg) -> str | None:  # noqa: ANN001 (CellConfig: imported lazily)
    """Log model.onnx and its check to the run's MLflow run (its id in the run's folder); the run id, or None
    where the run has none or the store cannot be reached (warned: the files are the record)."""
    run_file = Path(cfg.files.run_id)
    if not run_file.is_file():
        warnings.warn(f"{run_file} not found: the export is not logged to MLflow (the run was not tracked)",
                      RuntimeWarning, stacklevel=2)
        return None
    from deeplab.tracking import default_tracking_uri
    run_id = run_file.read_text().strip()
    try:
        import mlflow
        client = mlflow.MlflowClient(tracking_uri=default_tracking_uri(Path.cwd()))
        for path in (cfg.files.onnx, cfg.files.onnx_check):
            client.log_artifact(run_id, path, "onnx")
    except Exception as error:  # the files beside model.pt are the record; MLflow mirrors them
        print(f"pipeline.export: warning: not logged to MLflow run {run_id} ({type(error).__name__}: {error})",
              file=sys.stderr)
        return None
    return run_id


if __name__ == "__main__":
    raise SystemExit(main())
