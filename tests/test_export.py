"""A trained cell's model leaves as ONNX: dynamic batch and size, the single-scale protocol inside the graph,
checked against PyTorch on the dataset's own images before it is written, logged to the run; a stale model
and an export below the agreement bar are refused with nothing written."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

import pipeline.export
import pipeline.train
from deeplab.config import load_params
from deeplab.evaluate import SINGLE_SCALE, InputSpec, predict
from deeplab.export import GraphSegmenter, scaled_size
from deeplab.model import build_model, load_trained
from deeplab.transforms import eval_size
from tests.train_fixtures import edit_train, project  # noqa: F401  (fixture)

CELL = "voc-r50-os16"


@pytest.mark.parametrize("eval_scale", [(64, 32), (2048, 512), (512, 512)])
def test_the_graphs_test_size_is_the_evaluations(eval_scale: tuple[int, int]) -> None:
    for height in range(1, 700, 7):
        for width in (1, 5, 33, 64, 333, 500, 1024, 2048):
            assert scaled_size(height, width, eval_scale) == eval_size(height, width, eval_scale)


def test_native_size_datasets_compute_the_same_logits(params_dir: Path) -> None:
    """A dataset without a test size (Cityscapes): the graph's pipeline is the evaluation's pass, eagerly."""
    cfg = load_params(params_dir).resolve("cityscapes-r50-os16", "smoke")
    assert cfg.data.eval_scale is None
    model = build_model(cfg, torch.device("cpu")).eval()
    spec = InputSpec.of(cfg, torch.device("cpu"))
    image = torch.randint(0, 256, (3, 37, 70), dtype=torch.uint8)
    with torch.inference_mode():
        ours = GraphSegmenter(model, spec)(image.float()[None])[0]
    assert torch.equal(ours, predict(model, image, SINGLE_SCALE, spec))


@pytest.mark.integration
def test_an_export_agrees_with_pytorch_and_is_logged(project: Path, monkeypatch: pytest.MonkeyPatch,
                                                     capsys: pytest.CaptureFixture) -> None:
    import onnxruntime
    monkeypatch.chdir(project)
    assert pipeline.train.main(["--cell", CELL, "--preset", "smoke"]) == 0
    cfg = load_params("params").resolve(CELL, "smoke")
    assert pipeline.export.main(["--cell", CELL, "--preset", "smoke", "--images", "3"]) == 0
    out = capsys.readouterr().out
    assert f"pipeline.export: wrote {cfg.files.onnx}" in out and "pixels agree with PyTorch on 3 val images" in out
    check = json.loads(Path(cfg.files.onnx_check).read_text())
    assert check["pixel_agreement"] >= 0.999 and check["max_logit_difference"] < 1e-3 and check["opset"] == 18
    assert [i["image"] for i in check["images"]] == ["val_0000.jpg", "val_0001.jpg", "val_0002.jpg"]
    assert check["training_digest"] == cfg.training_digest()

    # Any batch and size: two images of a size the export never saw, against pipeline.predict's classes
    session = onnxruntime.InferenceSession(cfg.files.onnx, providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["images"] and [o.name for o in session.get_outputs()] == ["classes"]
    images = torch.randint(0, 256, (2, 3, 37, 91), dtype=torch.uint8)
    classes = session.run(None, {"images": images.float().numpy()})[0]
    assert classes.shape == (2, 37, 91) and classes.dtype == np.int64
    model = load_trained(cfg, Path(cfg.files.model), torch.device("cpu"))
    spec = InputSpec.of(cfg, torch.device("cpu"))
    expected = torch.stack([predict(model, image, SINGLE_SCALE, spec) for image in images]).numpy()
    assert (classes == expected).mean() >= 0.999

    import mlflow
    from deeplab.tracking import default_tracking_uri
    client = mlflow.MlflowClient(tracking_uri=default_tracking_uri(project))
    run_id = Path(cfg.files.run_id).read_text().strip()
    assert {Path(a.path).name for a in client.list_artifacts(run_id, "onnx")} == {"model.onnx", "model.onnx.json"}


@pytest.mark.integration
def test_a_stale_model_and_a_failed_check_write_nothing(project: Path, monkeypatch: pytest.MonkeyPatch,
                                                        capsys: pytest.CaptureFixture) -> None:
    monkeypatch.chdir(project)
    args = ["--cell", CELL, "--preset", "smoke", "--images", "1"]
    assert pipeline.export.main(args) == 2
    assert "model.pt not found: train the cell first" in capsys.readouterr().err
    assert pipeline.train.main(["--cell", CELL, "--preset", "smoke"]) == 0
    cfg = load_params("params").resolve(CELL, "smoke")
    monkeypatch.setattr("deeplab.export.AGREEMENT_BAR", 1.01)  # no export can reach it
    capsys.readouterr()
    assert pipeline.export.main(args) == 1
    err = capsys.readouterr().err
    assert f"pipeline.export: error: {CELL}: onnxruntime and PyTorch agree on 100.0000% of 3072 pixels, below the " \
           "bar of 101.0% (largest logit difference" in err and err.rstrip().endswith("; nothing written")
    assert not Path(cfg.files.onnx).exists() and not Path(cfg.files.onnx_check).exists()
    edit_train(project / "params", lr=0.02)
    assert pipeline.export.main(args) == 2
    assert "trained under another training record" in capsys.readouterr().err
    assert not Path(cfg.files.onnx).exists() and not list(Path(cfg.files.dir).glob(".model.onnx*"))


@pytest.mark.integration
def test_a_registered_model_served_over_http_answers_as_predict_does(project: Path, monkeypatch: pytest.MonkeyPatch,
                                                                     tmp_path_factory: pytest.TempPathFactory) -> None:
    """README's serving lines: `mlflow models serve` on the registered model's best version, one request with
    two images; the classes equal pipeline.predict's for the same images."""
    import subprocess
    import time
    import urllib.request

    from PIL import Image

    import pipeline.evaluate
    import pipeline.predict
    from deeplab.tracking import default_tracking_uri
    from tests.dag_fixtures import BIN, free_port, tool_env
    monkeypatch.chdir(project)
    assert pipeline.train.main(["--cell", CELL, "--preset", "smoke"]) == 0
    assert pipeline.evaluate.main(["--cell", CELL, "--preset", "smoke"]) == 0
    images = np.random.default_rng(1).integers(0, 256, (2, 40, 56, 3), dtype=np.uint8)
    inputs = project / "two"
    inputs.mkdir()
    for k, image in enumerate(images):
        Image.fromarray(image).save(inputs / f"{k}.png")
    assert pipeline.predict.main(["--cell", CELL, "--preset", "smoke", "--out", str(project / "predicted"),
                                  str(inputs)]) == 0
    port = free_port()
    model = f"models:/deeplabv3plus-smoke-{CELL}@best"
    server = subprocess.Popen([str(BIN / "mlflow"), "models", "serve", "-m", model, "--env-manager", "local",
                               "--host", "127.0.0.1", "--port", str(port)], cwd=project, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True,
                              env=tool_env(MLFLOW_TRACKING_URI=default_tracking_uri(project)))
    try:
        deadline = time.monotonic() + 180
        while True:  # ready when /ping answers; a server that exits is reported with its output
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/ping", timeout=5):
                    break
            except OSError:
                assert server.poll() is None, server.stdout.read()
                assert time.monotonic() < deadline, "mlflow models serve did not answer /ping within 180 s"
                time.sleep(0.5)
        body = json.dumps({"inputs": images.transpose(0, 3, 1, 2).astype(np.float32).tolist()}).encode()
        request = urllib.request.Request(f"http://127.0.0.1:{port}/invocations", data=body,
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=120) as answer:
            served = np.array(json.loads(answer.read())["predictions"])
    finally:
        server.terminate()
        server.wait(timeout=30)
    assert served.shape == (2, 40, 56)
    for k in range(2):
        assert np.array_equal(served[k], np.array(Image.open(project / "predicted" / f"{k}.png")))
