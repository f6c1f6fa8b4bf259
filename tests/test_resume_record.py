"""A resumed run is the run its record names: the precision it trained in, the images per BatchNorm statistic
and the prepared data are held to the checkpoint's, or the resume is refused naming the setting and the fix."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import pipeline.evaluate
import pipeline.train
from deeplab.checkpoint import CheckpointError, load_saved
from deeplab.config import CellConfig, load_params
from deeplab.datasets import manifest_hash
from deeplab.distributed import Context
from deeplab.model import build_model
from deeplab.schedule import build_optimizer, build_scheduler
from deeplab.train import State, held_micro_batch, save_checkpoint
from tests.train_fixtures import project, shrink_params  # noqa: F401

CELL = "voc-r50-os16"


def _checkpoint(cfg: CellConfig, *, precision: str = "fp32", micro: int = 2, processes: int = 1,
                data_hash: str | None = None) -> Path:
    """A checkpoint of ``cfg``'s run at iteration 2, as a job that trained in ``precision`` with ``micro``
    images per forward pass on ``processes`` processes would have written it."""
    model = build_model(cfg, torch.device("cpu"))
    optimizer = build_optimizer(model, cfg.train)
    state = State(model, optimizer, build_scheduler(optimizer, 4, cfg.train),
                  torch.amp.GradScaler("cpu", enabled=False), 2, micro,
                  data_hash=manifest_hash(cfg.prepared_dir, cfg.data.train_split) if data_hash is None else data_hash,
                  computed=[{"iteration": 0, "precision": precision, "micro_batch": micro,
                             "batchnorm_images": micro, "processes": processes}])
    save_checkpoint(state, cfg, Path(cfg.files.checkpoint))
    return Path(cfg.files.checkpoint)


def test_a_bf16_checkpoint_where_bf16_is_missing_is_refused_naming_the_setting(
        project: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    """train.precision: auto resolves by device; a retry on a GPU without bf16 would have gone on in fp16
    (and crashed loading the empty grad-scaler state). Simulated on the CPU: the resume stops, naming why."""
    monkeypatch.chdir(shrink_params(project / "params", train={"precision": "auto"}).parent)
    cfg = load_params("params").resolve(CELL, "smoke")
    checkpoint = _checkpoint(cfg, precision="bf16")
    monkeypatch.setattr("deeplab.train.bf16_available", lambda device: False)
    assert pipeline.train.main(["--cell", CELL, "--preset", "smoke"]) == 2
    err = capsys.readouterr().err
    assert "trained in bf16 up to iteration 2 (train.precision: auto)" in err and "has no bf16" in err
    assert "Traceback" not in err and checkpoint.is_file() and not Path(cfg.files.model).exists()


def test_a_bf16_checkpoint_resumes_in_bf16_where_the_device_has_it(project: Path, monkeypatch: pytest.MonkeyPatch,
                                                                   capsys: pytest.CaptureFixture) -> None:
    """Where the device runs the checkpoint's precision, the run goes on in it (not in what auto picks here),
    says so, and model.pt records it with the iteration it started from."""
    monkeypatch.chdir(shrink_params(project / "params", train={"precision": "auto"}).parent)
    cfg = load_params("params").resolve(CELL, "smoke")
    _checkpoint(cfg, precision="bf16")
    assert pipeline.train.main(["--cell", CELL, "--preset", "smoke"]) == 0
    assert "resuming in bf16, as the checkpoint was trained (train.precision: auto would choose fp32" \
        in capsys.readouterr().out
    computed = load_saved(cfg.files.model)["computed"]
    assert [entry["precision"] for entry in computed] == ["bf16"] and computed[0]["iteration"] == 0


def test_a_resume_holds_the_images_per_batchnorm_statistic(project: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The checkpoint trained with 2 images per BatchNorm statistic; max_micro_batch (now the whole share of
    4) is not in the record, so the resume keeps 2 rather than changing the statistics mid-run."""
    monkeypatch.chdir(shrink_params(project / "params", batch=4, train={"max_micro_batch": 0}).parent)
    cfg = load_params("params").resolve(CELL, "smoke")
    assert cfg.share() == 4
    _checkpoint(cfg, micro=2)
    assert pipeline.train.main(["--cell", CELL, "--preset", "smoke"]) == 0
    assert [(e["micro_batch"], e["batchnorm_images"]) for e in load_saved(cfg.files.model)["computed"]] == [(2, 2)]
    assert pipeline.evaluate.main(["--cell", CELL, "--preset", "smoke"]) == 0
    metrics = json.loads(Path(cfg.files.metrics).read_text())
    assert metrics["training_precision"] == "fp32" and metrics["training_computed"][0]["batchnorm_images"] == 2


def test_more_gpus_keep_the_statistics_or_are_refused_naming_gpus() -> None:
    """Two GPUs under SyncBatchNorm give a 4-image statistic with 2 images each: the checkpoint's 4 are kept
    with half the micro-batch. Where the share cannot give them, the error names cells.<id>.gpus."""
    cfg = load_params(Path(__file__).resolve().parent.parent / "params").resolve(CELL, "full")  # batch 16
    two = Context(rank=0, world=2, local_rank=0, device=torch.device("cuda"))
    saved = {"computed": [{"iteration": 0, "precision": "bf16", "micro_batch": 4, "batchnorm_images": 4,
                           "processes": 1}]}
    assert held_micro_batch(cfg, two, saved) == 2
    saved["computed"][0].update(micro_batch=16, batchnorm_images=16)
    assert held_micro_batch(cfg, two, saved) == 8
    saved["computed"][0].update(micro_batch=3, batchnorm_images=3)
    with pytest.raises(CheckpointError, match=f"Set params/cells.yaml {CELL}.gpus back to 1"):
        held_micro_batch(cfg, two, saved)


def test_resume_and_evaluation_refuse_weights_of_other_data(project: Path, monkeypatch: pytest.MonkeyPatch,
                                                             capsys: pytest.CaptureFixture) -> None:
    """The dataset re-prepared with one label changed (its meta.json's file hashes change) under an unchanged
    record: the interrupted run does not resume from weights of the old labels, and a finished model is not
    scored as if trained on the new ones. Both say which dataset and what to do."""
    monkeypatch.chdir(project)
    cfg = load_params("params").resolve(CELL, "smoke")
    checkpoint = _checkpoint(cfg)
    meta = Path(cfg.prepared_dir) / "meta.json"
    doc = json.loads(meta.read_text())
    meta.write_text(json.dumps({**doc, "sources": {"files_sha256": "one label changed"}}))
    assert pipeline.train.main(["--cell", CELL, "--preset", "smoke"]) == 2
    err = capsys.readouterr().err
    assert "trained on other data than the prepared voc holds now" in err and f"Delete {checkpoint.parent}" in err
    checkpoint.unlink()
    meta.write_text(json.dumps(doc))
    assert pipeline.train.main(["--cell", CELL, "--preset", "smoke"]) == 0
    meta.write_text(json.dumps({**doc, "sources": {"files_sha256": "one label changed"}}))
    assert pipeline.evaluate.main(["--cell", CELL, "--preset", "smoke"]) == 2
    assert "trained on other data than the prepared voc holds now" in capsys.readouterr().err
