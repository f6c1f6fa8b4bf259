"""Evaluation: the protocols on a model whose answer is known, and the stage's files (metrics.json,
pictures, saved predictions), plus refusal of weights trained under another config."""
from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest
import torch
from torch import nn

import pipeline.evaluate
from deeplab.config import load_params
from deeplab.datasets import read_split
from deeplab.metrics import ConfusionMatrix
from deeplab import evaluate as evaluation
from deeplab.evaluate import SINGLE_SCALE, InputSpec, _windows, evaluate_split, multi_scale, predict, sliding_window
from deeplab.model import build_model
from deeplab.train import save_final
from tests.train_fixtures import ROOT, project, shrink_params  # noqa: F401  (fixture)

CELL = "voc-r50-os16"
PARAMS = load_params(ROOT / "params")
TRAIN = PARAMS.train


def spec(eval_scale: tuple[int, int] | None, mean: tuple[float, ...] = TRAIN.mean) -> InputSpec:
    return InputSpec(eval_scale, mean, TRAIN.std, dtype=None, channels_last=False)


class ColourModel(nn.Module):
    """Per-pixel classifier: class 1 where the (normalised) red channel is above the mean red, else 0."""

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        red = x[:, :1]
        return {"out": torch.cat([-red, red], dim=1) * 10}


def test_protocols_predict_at_the_label_size() -> None:
    image = torch.zeros(3, 30, 50, dtype=torch.uint8)
    image[0, :, 20:] = 255                                   # right part red: class 1
    expected = (torch.arange(50) >= 20).long().expand(30, 50)
    for protocol in (SINGLE_SCALE, multi_scale(PARAMS.evaluate), sliding_window((16, 16))):
        prediction = predict(ColourModel(), image, protocol, spec((64, 24)))
        assert prediction.shape == (30, 50)
        assert (prediction != expected).float().mean() < 0.05, protocol.name  # only at the resized edge
    native = predict(ColourModel(), image, SINGLE_SCALE, spec(None))
    assert torch.equal(native, expected)


def test_inputs_are_normalised_with_the_params_mean() -> None:
    """Red 110 is below the recipe's red mean (123.675): class 0; with a mean of 100 it is above: class 1."""
    image = torch.full((3, 8, 8), 110, dtype=torch.uint8)
    assert predict(ColourModel(), image, SINGLE_SCALE, spec(None)).eq(0).all()
    assert predict(ColourModel(), image, SINGLE_SCALE, spec(None, mean=(100.0, 0.0, 0.0))).eq(1).all()


def test_windows_cover_the_image() -> None:
    assert _windows(50, 16, 11) == [0, 11, 22, 33, 34]
    assert _windows(10, 16, 11) == [0]


def test_stage_writes_metrics_pictures_and_predictions(project: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(project)
    cfg = load_params("params").resolve(CELL, "smoke")
    cell_dir = project / "results" / "smoke" / CELL
    torch.manual_seed(0)
    save_final(build_model(cfg, torch.device("cpu")), cfg, cell_dir / "model.pt", 4)
    (cell_dir / "train_log.csv").write_text("iteration,loss,main_loss,aux_loss,lr,images,images_per_s,peak_memory_mb\n"
                                            "1,2.0,1.5,1.2,0.01,2,3.0,0\n2,1.5,1.1,1.0,0.005,2,3.0,0\n")
    assert pipeline.evaluate.main(["--cell", CELL, "--preset", "smoke", "--out", "preds",
                                   "--multi-scale", "--sliding-window"]) == 0
    metrics = json.loads((cell_dir / "metrics.json").read_text())
    assert set(metrics["per_class_iou"]) == {f"class {k}" for k in range(5)}
    assert metrics["images"] == 3 and metrics["seconds"] > 0
    assert set(metrics["extra"]) == {multi_scale(cfg.evaluate).name, "sliding-window"} and cfg.evaluate.ms_flip
    assert set(metrics["provenance"]) >= {"git_commit", "git_dirty", "data_manifest", "training_digest",
                                            "evaluation_digest", "mlflow_run_id"}
    assert metrics["provenance"]["training_digest"] == cfg.training_digest()
    assert metrics["provenance"]["evaluation_digest"] == cfg.evaluation_digest()
    assert metrics["records"] == {"training": cfg.record("training"), "evaluation": cfg.record("evaluation")}
    from torchvision.io import read_image
    for picture in ("iou_per_class.png", "learning_curves.png", "predictions.png"):
        drawn = read_image(str(cell_dir / picture))  # a real picture, not an empty canvas
        assert drawn.shape[0] in (3, 4) and min(drawn.shape[1:]) > 100 and drawn.float().std() > 5, picture
    written = sorted(p.name for p in (project / "preds").iterdir())
    assert written == ["val_0000.png", "val_0001.png", "val_0002.png"]  # named like the label files
    prediction = read_image(str(project / "preds" / written[0]))
    assert prediction.shape == (1, 48, 64) and prediction.dtype == torch.uint8 and prediction.max() < 5
    matrix = ConfusionMatrix(cfg.data.num_classes)  # the saved predictions against the labels give the mIoU
    for (_, label), name in zip(read_split(cfg.prepared_dir, cfg.data.val_split), written):
        matrix.update(read_image(str(project / "preds" / name))[0].long(), read_image(str(label))[0].long())
    assert matrix.compute()["mIoU"] == pytest.approx(metrics["mIoU"], abs=1e-4)


def test_weights_of_another_config_are_refused(project: Path, monkeypatch: pytest.MonkeyPatch,
                                               capsys: pytest.CaptureFixture) -> None:
    monkeypatch.chdir(project)
    cfg = load_params("params").resolve("voc-r50-os8", "smoke")
    save_final(build_model(cfg, torch.device("cpu")), cfg, project / "results" / "smoke" / CELL / "model.pt", 4)
    assert pipeline.evaluate.main(["--cell", CELL, "--preset", "smoke"]) == 2
    assert "trained under another training record" in capsys.readouterr().err
    assert not (project / "results" / "smoke" / CELL / "metrics.json").exists()


def test_an_evaluation_setting_scores_the_trained_model(project: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """evaluate.* is the evaluation record's alone: after an edit the model trained before is scored, not
    refused, and metrics.json carries the new evaluation record with the same training record."""
    monkeypatch.chdir(project)
    cfg = load_params("params").resolve(CELL, "smoke")
    save_final(build_model(cfg, torch.device("cpu")), cfg, project / cfg.files.model, 4)
    evaluate = project / "params" / "evaluate.yaml"
    evaluate.write_text(evaluate.read_text().replace("ms_ratios: [0.5,", "ms_ratios: [0.25, 0.5,", 1))
    now = load_params("params").resolve(CELL, "smoke")
    assert pipeline.evaluate.main(["--cell", CELL, "--preset", "smoke"]) == 0
    provenance = json.loads((project / cfg.files.metrics).read_text())["provenance"]
    assert provenance["training_digest"] == cfg.training_digest() == now.training_digest()
    assert provenance["evaluation_digest"] == now.evaluation_digest() != cfg.evaluation_digest()


@pytest.mark.parametrize("precision, expected", [("fp32", "fp32 (TF32 off)"), ("bf16", "bf16 autocast")])
def test_fp32_means_fp32_in_evaluation_and_metrics_say_which(precision: str, expected: str, project: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """Evaluation computes at evaluate.precision, whatever the training's (here the other one), sets the
    backends itself (TF32 off for fp32: cuDNN allows it by default) and records the precision that scored it."""
    shrink_params(project / "params", train={"precision": "fp32" if precision == "bf16" else "bf16"},
                  evaluate={"precision": precision})
    monkeypatch.chdir(project)
    cfg = load_params("params").resolve(CELL, "smoke")
    save_final(build_model(cfg, torch.device("cpu")), cfg, Path(cfg.files.model), 4)
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = True  # as another job left them
    autocast_seen = []
    real = torch.autocast

    def spy(*args: object, **kwargs: object) -> object:
        if threading.current_thread() is threading.main_thread():  # (the logged fp32 model is checked by MLflow
            autocast_seen.append(kwargs.get("enabled", True))    # on the tracking thread)
        return real(*args, **kwargs)
    monkeypatch.setattr(torch, "autocast", spy)
    assert pipeline.evaluate.main(["--cell", CELL, "--preset", "smoke"]) == 0
    metrics = json.loads(Path(cfg.files.metrics).read_text())
    assert metrics["precision"] == expected and metrics["protocol"].endswith(expected)
    tf32 = torch.backends.cudnn.allow_tf32 or torch.backends.cuda.matmul.allow_tf32
    assert (not tf32 and not any(autocast_seen)) if precision == "fp32" else (tf32 and all(autocast_seen))
    from mlflow import MlflowClient
    run = MlflowClient().get_run(metrics["provenance"]["mlflow_run_id"])
    assert run.data.tags["eval_precision"] == expected


@pytest.mark.parametrize("failures, how", [(1, "its logits resized and summed on the CPU"),
                                           (2, "the forward pass on the CPU")])
def test_a_pass_out_of_memory_is_done_again_with_the_same_numbers(failures: int, how: str, project: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """Each image's largest multi-scale passes (ratio 1.75, both flips) run out of memory ``failures`` times
    on the model itself: they are done again off the GPU (logits summed on the CPU; then the forward on a
    CPU copy of the model), one warning per image and scale, and every protocol's confusion matrix equals
    the run without the failures."""
    shrink_params(project / "params")
    monkeypatch.chdir(project)
    cfg = load_params("params").resolve(CELL, "smoke")
    cpu = torch.device("cpu")
    torch.manual_seed(0)
    model = build_model(cfg, cpu).eval()
    chosen = [SINGLE_SCALE, multi_scale(cfg.evaluate)]

    def score() -> dict[str, torch.Tensor]:
        result = evaluate_split(model, cfg.prepared_dir, cfg.data.val_split, num_classes=cfg.data.num_classes,
                                spec=InputSpec.of(cfg, cpu), protocols=chosen, device=cpu)
        return {name: matrix.matrix.clone() for name, matrix in result.matrices.items()}
    clean = score()
    real, failed = evaluation._pass, {}
    largest = max(cfg.evaluate.ms_ratios)

    def out_of_memory(net, source, ratio, flip, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003, ANN202
        key = (float(source.sum()), flip)  # one image's pass
        if net is model and ratio == largest and failed.get(key, 0) < failures:
            failed[key] = failed.get(key, 0) + 1
            raise torch.OutOfMemoryError("CUDA out of memory (pretend)")
        return real(net, source, ratio, flip, *args, **kwargs)
    monkeypatch.setattr(evaluation, "_pass", out_of_memory)
    with pytest.warns(RuntimeWarning, match=f"at scale {largest} did not fit the GPU's memory; done again with {how}") as seen:
        retried = score()
    images = len(read_split(cfg.prepared_dir, cfg.data.val_split))
    assert len(failed) == 2 * images and set(failed.values()) == {failures}  # both flips of every image
    assert len([w for w in seen if "did not fit" in str(w.message)]) == images  # one per image and scale
    assert all(torch.equal(clean[name], retried[name]) for name in clean)


def test_the_cpu_copy_of_the_fallback_clones_nothing_on_the_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    """The fallback runs because the GPU is full: its CPU copy of the model must not first clone the model's
    tensors where they are (copy.deepcopy(model).cpu() does). Every tensor of the model is watched: none is
    deep-copied; the copy lives on the CPU, is a separate module and gives the model's outputs."""
    cfg = load_params(ROOT / "params").resolve(CELL, "smoke")
    torch.manual_seed(0)
    model = build_model(cfg, torch.device("cpu")).eval()
    watched = {id(t) for t in [*model.parameters(), *model.buffers()]}
    cloned: list[tuple[int, ...]] = []

    def watch(cls: type) -> None:
        real = cls.__deepcopy__

        def deepcopy(self, memo):  # noqa: ANN001, ANN202
            if id(self) in watched:
                cloned.append(tuple(self.shape))  # on a GPU this clone would be a device allocation
            return real(self, memo)
        monkeypatch.setattr(cls, "__deepcopy__", deepcopy)
    watch(torch.Tensor)  # buffers
    watch(torch.nn.Parameter)  # parameters: their own __deepcopy__ clones the data where it is
    copy = evaluation.OutOfMemoryFallback(model).cpu_model()
    assert cloned == []
    assert all(p.device.type == "cpu" for p in copy.parameters()) and not copy.training
    assert all(a is not b for a, b in zip(copy.parameters(), model.parameters()))
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(copy(x)["out"], model(x)["out"])
    import copy as copying
    copying.deepcopy(model)  # the control: the old way clones every tensor of the model
    assert len(cloned) == len(watched)


def test_periodic_validation_scores_at_the_evaluations_numerics(monkeypatch: pytest.MonkeyPatch) -> None:
    """Training in bf16 runs with TF32 on; the periodic val mIoU is scored as evaluate.precision says (fp32:
    TF32 off), and the training's switches are back afterwards."""
    from deeplab import distributed, validation
    cfg = load_params(ROOT / "params").resolve(CELL, "smoke")
    seen = []

    def fake_split(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        seen.append((torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32, kwargs["spec"].dtype))
        matrix = ConfusionMatrix(cfg.data.num_classes)
        return type("Scored", (), {"matrices": {SINGLE_SCALE.name: matrix}})()
    monkeypatch.setattr(validation, "evaluate_split", fake_split)
    logged = []
    tracker = type("Tracker", (), {"log_metrics": lambda self, metrics, step: logged.append(step)})()
    ctx = distributed.Context(rank=0, world=1, local_rank=0, device=torch.device("cpu"))
    before = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    try:
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True  # as bf16 training sets them
        validation.validator(cfg, ctx, tracker)(torch.nn.Identity(), 100)
        assert seen == [(False, False, None)] and logged == [100]
        assert torch.backends.cuda.matmul.allow_tf32 and torch.backends.cudnn.allow_tf32
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = before
