"""MLflow mirror: the store initialisation stage, one run per cell shared by train and evaluate (name,
params, metrics by step, tags, artifacts), reattachment, and an unreachable server that only warns."""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
import warnings
from pathlib import Path

import pytest

import pipeline.evaluate
import pipeline.init_tracking
import pipeline.predict
import pipeline.train
from deeplab.tracking import Tracker, flatten
from tests.train_fixtures import ROOT, project  # noqa: F401  (fixture)

CELL = "voc-r50-os16"


def test_train_and_evaluate_log_into_one_run(project: Path, monkeypatch: pytest.MonkeyPatch,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.chdir(project)
    shutil.copy(ROOT / "requirements.lock", project / "requirements.lock")  # the project's lock, recorded by digest
    assert pipeline.init_tracking.main(["--preset", "smoke"]) == 0
    marker = json.loads((project / "results" / "smoke" / "mlflow.json").read_text())
    assert marker["uri"] == os.environ["MLFLOW_TRACKING_URI"] and marker["experiment"] == "deeplabv3plus-smoke"
    assert pipeline.train.main(["--cell", CELL, "--preset", "smoke"]) == 0
    assert pipeline.evaluate.main(["--cell", CELL, "--preset", "smoke"]) == 0

    from mlflow import MlflowClient
    client = MlflowClient(marker["uri"])
    experiment_tags = client.get_experiment(marker["experiment_id"]).tags
    assert experiment_tags["mlflow.experimentKind"] == "custom_model_development"
    # README's link: the model-training view and the saved runs view, whose columns are the headline metrics
    assert pipeline.init_tracking.main(["--preset", "smoke", "--ui"]) == 0
    link = capsys.readouterr().out.strip().rsplit(" ", 1)[-1]
    assert link == (f"http://127.0.0.1:5000/#/experiments/{marker['experiment_id']}/runs"
                    "?workflowType=machine_learning&viewStateShareKey=results")
    view = json.loads(experiment_tags["mlflow.sharedViewState.results"])
    assert view["selectedColumns"] == ["metrics.`mIoU`"] and view["orderByKey"] == "metrics.`mIoU`"
    runs = client.search_runs([marker["experiment_id"]])
    assert [r.info.run_name for r in runs] == [CELL]
    run = runs[0]
    metrics = json.loads((project / "results" / "smoke" / CELL / "metrics.json").read_text())
    assert metrics["provenance"]["mlflow_run_id"] == run.info.run_id and run.info.status == "FINISHED"
    assert run.data.params["train.lr"] == "0.01" and run.data.params["cell.id"] == CELL
    assert [m.step for m in client.get_metric_history(run.info.run_id, "loss")] == [1, 2, 3, 4]
    assert run.data.metrics["mIoU"] == pytest.approx(metrics["mIoU"])
    assert {"iou/voc/class 0", "aAcc", "mAcc", "lr", "images_per_s"} <= set(run.data.metrics)
    assert not [key for key in run.data.metrics if key.startswith("iou/") and not key.startswith("iou/voc/")]
    # the smoke preset samples every 0.2 s (train.system_metrics_every_s), so even this short job has a curve
    assert len(client.get_metric_history(run.info.run_id, "system/cpu_utilization_percentage")) >= 3
    assert "system/system_memory_usage_megabytes" in run.data.metrics
    contexts = {d.dataset.name: {t.key: t.value for t in d.tags}["mlflow.data.context"] for d in run.inputs.dataset_inputs}
    assert contexts == {"voc/train": "training", "voc/val": "evaluation"}
    inputs = {d.dataset.name: d.dataset for d in run.inputs.dataset_inputs}
    from deeplab.datasets import manifest_hash
    prepared = project / "data" / "smoke" / "prepared" / "voc"
    assert inputs["voc/train"].digest == run.data.tags["data_hash"][:36] == manifest_hash(prepared, "train")[:36]
    assert inputs["voc/val"].digest == manifest_hash(prepared, "val")[:36]
    assert json.loads(inputs["voc/val"].profile)["images"] == len((prepared / "splits" / "val.txt").read_text().splitlines())
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
    assert trained["device_count"] == 0 and "gpu_driver" in trained
    assert trained["lock_sha256"] == hashlib.sha256((ROOT / "requirements.lock").read_bytes()).hexdigest()
    assert tags["env.lock_sha256"] == trained["lock_sha256"]


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


def test_the_logged_model_predicts_as_pipeline_predict_does(project: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Evaluation logs the cell's model as an MLflow PyTorch model linked to the run, with a signature of
    any image size and an input example; loading it back from the store (as a PyTorch model and as a pyfunc)
    gives pipeline.predict's class map for an image of odd size. The model is named after the preset's
    experiment and the run, tagged with its cell and score, and registered under that name."""
    import numpy as np
    from PIL import Image
    monkeypatch.chdir(project)
    assert pipeline.train.main(["--cell", CELL, "--preset", "smoke"]) == 0
    assert pipeline.evaluate.main(["--cell", CELL, "--preset", "smoke"]) == 0
    picture = np.random.default_rng(3).integers(0, 256, (37, 53, 3)).astype(np.uint8)
    Image.fromarray(picture).save(project / "odd.png")
    assert pipeline.predict.main(["--cell", CELL, "--preset", "smoke", "--out", "out", "odd.png"]) == 0
    expected = np.asarray(Image.open(project / "out" / "odd.png")).astype(np.int64)

    import mlflow
    import mlflow.pytorch
    from mlflow import MlflowClient
    metrics = json.loads((project / "results" / "smoke" / CELL / "metrics.json").read_text())
    run_id = metrics["provenance"]["mlflow_run_id"]
    client = MlflowClient(os.environ["MLFLOW_TRACKING_URI"])
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    (output,) = run.outputs.model_outputs  # MLflow 3: the logged model is linked to the run
    logged = client.get_logged_model(output.model_id)
    name = f"deeplabv3plus-smoke-{CELL}"
    assert logged.name == name and logged.source_run_id == run_id
    assert (logged.tags["cell"], logged.tags["backbone"], logged.tags["seed"]) == (CELL, "r50", "0")
    assert float(logged.tags["mIoU"]) == pytest.approx(metrics["mIoU"], abs=1e-4)
    mlflow.set_tracking_uri(os.environ["MLFLOW_TRACKING_URI"])
    info = mlflow.models.get_model_info(f"runs:/{run_id}/{name}")
    assert tuple(info.signature.inputs.to_dict()[0]["tensor-spec"]["shape"]) == (-1, 3, -1, -1)
    assert info.saved_input_example_info is not None
    batch = picture.transpose(2, 0, 1)[None].astype(np.float32)
    model = mlflow.pytorch.load_model(f"runs:/{run_id}/{name}")
    import torch
    assert np.array_equal(model(torch.from_numpy(batch))[0].numpy(), expected)
    assert np.array_equal(mlflow.pyfunc.load_model(f"runs:/{run_id}/{name}").predict(batch)[0], expected)
    (version,) = client.search_model_versions(f"name = '{name}'")
    assert version.run_id == run_id and version.tags["cell"] == CELL
    assert np.array_equal(mlflow.pyfunc.load_model(f"models:/{name}/1").predict(batch)[0], expected)


def test_the_full_preset_registers_each_cell_model(tmp_path: Path) -> None:
    """The full preset's logged models become versions of ``deeplabv3plus-<cell>`` in the model registry,
    apart from the demo's ``deeplabv3plus-smoke-<cell>``; a further seed's model has a name of its own."""
    import numpy as np
    import torch
    from mlflow import MlflowClient
    from deeplab import serving
    from deeplab.config import load_params
    from deeplab.evaluate import InputSpec
    from deeplab.model import deeplabv3plus
    from tests.train_fixtures import ROOT
    cfg = load_params(ROOT / "params").resolve(CELL, "full")
    name = serving.registered_name(cfg)
    assert name == f"deeplabv3plus-{CELL}"
    assert serving.registered_name(load_params(ROOT / "params").resolve(CELL, "smoke")) == f"deeplabv3plus-smoke-{CELL}"
    assert serving.model_name(load_params(ROOT / "params").resolve(CELL, "smoke", seed=1)) == f"deeplabv3plus-smoke-{CELL}-seed1"
    net = deeplabv3plus(backbone="r50", output_stride=16, num_classes=21, backbone_width=8,
                        aspp_channels=8, decoder_channels=8, aux_channels=8)
    model = serving.Segmenter(net, InputSpec.of(cfg, torch.device("cpu")))
    tracker = Tracker(uri=os.environ["MLFLOW_TRACKING_URI"], experiment="registry", cell_dir=tmp_path / CELL,
                      project_root=tmp_path)
    (tmp_path / CELL).mkdir()
    tracker.start(CELL)
    tracker.log_model(model, serving.input_example(torch.zeros(3, 30, 100, dtype=torch.uint8)), name,
                      {"cell": CELL}, name)
    tracker.end()
    (version,) = MlflowClient(os.environ["MLFLOW_TRACKING_URI"]).search_model_versions(f"name = '{name}'")
    assert version.run_id == tracker.run_id and int(version.version) == 1 and version.tags == {"cell": CELL}
    assert serving.input_example(torch.zeros(3, 30, 100, dtype=torch.uint8)).shape == (1, 3, 19, 64)
    assert np.isfinite(serving.input_example(torch.zeros(3, 2, 2, dtype=torch.uint8))).all()


def test_every_dataset_names_where_its_archives_come_from(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A run's dataset source, before anything is downloaded: the catalogue's URL of each archive, also for
    Cityscapes, whose archives come through its login API rather than a plain URL."""
    monkeypatch.chdir(tmp_path)  # no download manifests here
    from deeplab.config import load_params
    from deeplab.tracking import archives_source
    params = load_params(ROOT / "params")
    for cell in ("voc-r50-os8", "ade20k-r50-os8", "cityscapes-r50-os8"):
        archives = archives_source(params.resolve(cell, "full"))["archives"]
        assert archives and all(a["url"].startswith(("http://", "https://")) for a in archives), (cell, archives)
    urls = [a["url"] for a in archives_source(params.resolve("cityscapes-r50-os8", "full"))["archives"]]
    assert all("cityscapes-dataset.com/file-handling/?packageID=" in url for url in urls), urls
