"""MLflow mirror: the store initialisation stage, one run per cell shared by train and evaluate (name,
params, metrics by step, tags, artifacts), reattachment, and an unreachable server that only warns."""
from __future__ import annotations

import json
import os
import time
import warnings
from pathlib import Path

import pytest

import pipeline.evaluate
import pipeline.init_tracking
import pipeline.train
from deeplab.tracking import Tracker, flatten
from tests.train_fixtures import project  # noqa: F401  (fixture)

CELL = "voc-r50-os16"


def test_train_and_evaluate_log_into_one_run(project: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(project)
    assert pipeline.init_tracking.main(["--preset", "smoke"]) == 0
    marker = json.loads((project / "results" / "smoke" / "mlflow.json").read_text())
    assert marker["uri"] == os.environ["MLFLOW_TRACKING_URI"] and marker["experiment"] == "deeplabv3plus-smoke"
    assert pipeline.train.main(["--cell", CELL, "--preset", "smoke"]) == 0
    assert pipeline.evaluate.main(["--cell", CELL, "--preset", "smoke"]) == 0

    from mlflow import MlflowClient
    client = MlflowClient(marker["uri"])
    assert client.get_experiment(marker["experiment_id"]).tags["mlflow.experimentKind"] == "custom_model_development"
    runs = client.search_runs([marker["experiment_id"]])
    assert [r.info.run_name for r in runs] == [CELL]
    run = runs[0]
    metrics = json.loads((project / "results" / "smoke" / CELL / "metrics.json").read_text())
    assert metrics["provenance"]["mlflow_run_id"] == run.info.run_id and run.info.status == "FINISHED"
    assert run.data.params["train.lr"] == "0.01" and run.data.params["cell.id"] == CELL
    assert [m.step for m in client.get_metric_history(run.info.run_id, "loss")] == [1, 2, 3, 4]
    assert run.data.metrics["mIoU"] == pytest.approx(metrics["mIoU"])
    assert {"iou/class 0", "aAcc", "mAcc", "lr", "images_per_s"} <= set(run.data.metrics)
    tags = run.data.tags
    assert (tags["cell"], tags["dataset"], tags["backbone"], tags["output_stride"], tags["preset"]) == \
        (CELL, "voc", "r50", "16", "smoke")
    assert tags["git_commit"] and len(tags["data_hash"]) == 64
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    artifacts |= {a.path for a in client.list_artifacts(run.info.run_id, "pictures")}
    assert {"config.yaml", "train_log.csv", "metrics.json", "pictures/iou_per_class.png",
            "pictures/learning_curves.png", "pictures/predictions.png", "environment.json",
            "pip_freeze.txt"} <= artifacts
    import torch
    assert tags["env.torch"] == torch.__version__ and tags["env.device"] == "cpu" and tags["env.gpu_name"] == "None"
    environment = metrics["environment"]
    assert environment["evaluation"]["torch"] == torch.__version__ and environment["evaluation"]["gpu_name"] is None
    (trained,) = environment["training"]  # one machine trained it
    assert trained["device_count"] == 0 and "gpu_driver" in trained and len(trained["lock_sha256"] or "x" * 64) == 64


def test_a_resumed_job_reattaches_to_its_run(tmp_path: Path) -> None:
    ids = []
    for _ in range(2):
        tracker = Tracker(uri=os.environ["MLFLOW_TRACKING_URI"], experiment="exp", cell_dir=tmp_path / "cell",
                          project_root=tmp_path)
        tracker.start("cell-a", params={"train": {"lr": 0.01}}, tags={"cell": "cell-a"})
        ids.append(tracker.wait_run_id())
        tracker.log_metrics({"loss": 1.0}, step=len(ids))
        tracker.end("KILLED")
    assert ids[0] is not None and ids[0] == ids[1]
    assert (tmp_path / "cell" / "mlflow_run_id").read_text() == ids[0]


def test_unreachable_server_warns_once_and_goes_on(tmp_path: Path) -> None:
    started = time.perf_counter()
    tracker = Tracker(uri="http://127.0.0.1:9", experiment="exp", cell_dir=tmp_path, project_root=tmp_path)
    with pytest.warns(RuntimeWarning, match="continuing without MLflow") as caught:
        tracker.start("cell-a", params={"a": 1})
        assert tracker.wait_run_id() is None
        tracker.log_metrics({"loss": 1.0}, step=1)
        tracker.end()
    assert len(caught) == 1 and time.perf_counter() - started < 30


def test_a_store_failing_mid_run_warns_once_then_stays_quiet(tmp_path: Path) -> None:
    """The first failed call warns and switches tracking off; the calls after it never reach the store."""
    tracker = Tracker(uri=os.environ["MLFLOW_TRACKING_URI"], experiment="exp", cell_dir=tmp_path / "cell",
                      project_root=tmp_path)
    tracker.start("cell-a")
    assert tracker.wait_run_id() is not None
    calls = []

    def broken(*args: object, **kwargs: object) -> None:
        calls.append(args)
        raise OSError("disk full")
    tracker.client.log_batch = tracker.client.log_artifact = broken
    with warnings.catch_warnings(record=True) as caught:  # records the tracking thread's warnings too
        warnings.simplefilter("always")
        for step in (1, 2, 3):
            tracker.log_metrics({"loss": 1.0}, step=step)
        tracker.log_artifact(tmp_path)
        tracker.end()
    failures = [w for w in caught if "continuing without MLflow" in str(w.message)]
    assert len(failures) == 1 and "disk full" in str(failures[0].message) and len(calls) == 1


def test_flatten_gives_string_params() -> None:
    assert flatten({"train": {"lr": 0.01, "crop": [512, 512]}, "x": None}) == \
        {"train.lr": "0.01", "train.crop": "[512, 512]", "x": "None"}
