"""What a cell's training job and evaluation job share: the cell's MLflow run and its tags, and the
reference's training log where it has been fetched. The jobs themselves are deeplab/train_job.py and
deeplab/eval_job.py, apart so that each DVC stage depends on the code it runs and no more.
"""
from __future__ import annotations

from pathlib import Path

from deeplab import reference_log
from deeplab.config import CellConfig
from deeplab.datasets import manifest_hash
from deeplab.environment import git_state
from deeplab.paths import CellFiles
from deeplab.tracking import Tracker, default_tracking_uri

LOCK = "requirements.lock"  # the project's lock file, relative to the project root (the stages' cwd)


def tracker_for(cfg: CellConfig, enabled: bool = True, files: CellFiles | None = None) -> Tracker:
    """The MLflow run of the cell's files (or of ``files``) in the preset's experiment (the store of
    MLFLOW_TRACKING_URI)."""
    root = Path.cwd()
    return Tracker(uri=default_tracking_uri(root), experiment=cfg.preset.experiment,
                   cell_dir=(files or cfg.files).dir, project_root=root, enabled=enabled)


def run_tags(cfg: CellConfig) -> dict[str, str]:
    git = git_state(Path.cwd())
    return {"cell": cfg.cell.id, "seed": str(cfg.train.seed), "dataset": cfg.cell.dataset,
            "backbone": cfg.cell.backbone, "output_stride": str(cfg.cell.output_stride), "preset": cfg.preset.name,
            "git_commit": git["git_commit"], "git_dirty": str(git["git_dirty"]),
            "data_hash": manifest_hash(cfg.prepared_dir, cfg.data.train_split), "training_digest": cfg.training_digest(),
            "evaluation_digest": cfg.evaluation_digest(), "init": cfg.cell.init}


def reference_rows(cfg: CellConfig) -> list[dict[str, str]]:
    """The reference's parsed training log of the cell (the download step or pipeline.reference_eval wrote
    it), or none (not fetched, or it could not be)."""
    path = Path(cfg.preset.paths.reference_run(cfg.cell.id).reference_log)
    return reference_log.read_log_csv(path) if path.is_file() else []
