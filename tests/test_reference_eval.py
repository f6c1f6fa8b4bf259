"""The reference's released weights and training log through our pipeline, end to end on smoke data: a
checkpoint saved in the reference's format by its own model (sssegmentation from the registry) and a log in
its format, both served from 127.0.0.1."""
from __future__ import annotations

import io
import json
import os
import shutil
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import pipeline.reference_eval
from deeplab import reference
from deeplab.reference_log import read_log_csv
from deeplab.config import load_params
from deeplab.datasets import read_split
from deeplab.evaluate import InputSpec
from deeplab.metrics import ConfusionMatrix
from deeplab.predict import read_any_image
from deeplab.transforms import eval_size, normalize
from tests.data_fixtures import Script, file_server  # noqa: F401  (fixture)
from tests.train_fixtures import ROOT, write_prepared

ssseg = pytest.importorskip("ssseg", reason="the reference implementation (pip install sssegmentation==1.7.0)")
from ssseg.modules import BuildSegmentor  # noqa: E402
from ssseg.modules.utils import SSSegInputStructure  # noqa: E402
from tests.test_reference import segmentor_cfg  # noqa: E402

CELL = "voc-r50-os16"
LOG_ROW = "{} INFO  {{'cur_epoch': 1, 'max_epochs': 60, 'cur_iter': {}, 'max_iters': 39660, 'cur_iter_in_cur_epoch': {}, " \
          "'max_iters_per_epoch': 661, 'segmentor': 'Deeplabv3Plus', 'backbone': 'ResNet', 'dataset': 'VOCDataset', " \
          "'learning_rate': {}, 'ema': False, 'fp16': False, 'loss_cls': {}, 'loss_aux': {}, 'loss_total': {}, " \
          "'max_gpu_alloc_GB': 9.81}}"


def reference_log(iterations: list[int], lr: float = 0.01) -> str:
    from deeplab.schedule import poly_lr
    lines = ["2023-01-01 00:00:00 INFO  Config file path: ssseg/configs/deeplabv3plus/deeplabv3plus_resnet50os16_voc.py"]
    for k, it in enumerate(iterations):
        rate = poly_lr(it, 39660, lr=lr, min_lr=1e-4, power=0.9)
        loss = 2.0 / (1 + it / 100)
        lines.append(LOG_ROW.format(f"2023-01-01 00:{k // 60:02d}:{k % 60:02d}", it, it, rate, loss, 0.4 * loss, 1.4 * loss))
    return "\n".join(lines) + "\n"


@pytest.fixture
def smoke_project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    shutil.copytree(ROOT / "params", tmp_path / "params")
    write_prepared(tmp_path / "data" / "smoke" / "prepared" / "voc", num_classes=21, n_train=2, n_val=4, size=(45, 61))
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_the_reference_weights_score_as_the_reference_model_predicts(smoke_project: Path, file_server) -> None:
    url, script = file_server
    torch.manual_seed(0)
    ref = BuildSegmentor(segmentor_cfg("r50", 16, 21), mode="TEST").eval()
    with torch.no_grad():
        for name, buffer in ref.named_buffers():
            if name.endswith("running_mean"):
                buffer.normal_(0, 0.1)
    saved = io.BytesIO()
    torch.save({"model": ref.state_dict(), "cur_epoch": 60}, saved)  # the reference's checkpoint layout
    script.files["/deeplabv3plus_resnet50os16_voc.pth"] = saved.getvalue()
    script.files["/deeplabv3plus_resnet50os16_voc.log"] = reference_log([50, 100, 150]).encode()
    assert pipeline.reference_eval.main(["--cell", CELL, "--preset", "smoke", "--source", url]) == 0

    params = load_params("params")
    cfg = params.resolve(CELL, "smoke")
    paths = cfg.preset.paths
    doc = json.loads(Path(paths.reference_run(CELL).metrics).read_text())
    # the reference model's own predictions on the same inputs, scored by the same confusion matrix
    matrix = ConfusionMatrix(21)
    spec = InputSpec.of(cfg, torch.device("cpu"))
    for image_path, label_path in read_split(cfg.prepared_dir, "val"):
        image, label = read_any_image(image_path), read_any_image(label_path)[0]
        size = eval_size(*image.shape[-2:], cfg.data.eval_scale)
        x = F.interpolate(image.float()[None], size=size, mode="bilinear", align_corners=False).round()
        with torch.no_grad():
            logits = ref.inference(normalize(x, spec.mean, spec.std))
        logits = F.interpolate(logits, size=label.shape, mode="bilinear", align_corners=False)
        matrix.update(logits.argmax(1)[0], label)
    theirs = matrix.compute()
    assert doc["mIoU"] == pytest.approx(theirs["mIoU"], abs=1e-4) and doc["images"] == 4
    assert doc["checkpoint"]["sha256"] and doc["precision"] == "fp32 (TF32 off)"
    assert "multi-scale+flip" in doc["extra"]
    pins = json.loads((Path(paths.reference_dir()) / reference.PINS).read_text())
    assert pins["deeplabv3plus_resnet50os16_voc.pth"]["size"] == len(saved.getvalue())
    log_rows = read_log_csv(Path(paths.reference_run(CELL).reference_log))
    assert [r["iteration"] for r in log_rows] == ["50", "100", "150"] and log_rows[1]["seconds_per_iter"] == "0.02"

    from mlflow import MlflowClient
    client = MlflowClient(os.environ["MLFLOW_TRACKING_URI"])
    run = client.get_run(doc["provenance"]["mlflow_run_id"])
    assert run.data.tags["kind"] == "reference_evaluation" and run.info.status == "FINISHED"
    assert [m.step for m in client.get_metric_history(run.info.run_id, "reference/loss_total")] == [50, 100, 150]

    assert pipeline.reference_eval.main(["--table", "--preset", "smoke"]) == 0
    table = Path(paths.reference_table()).read_text()
    assert f"| {CELL}" in table and f"{doc['mIoU']:.2f}" in table and "76.92" in table

    # the store serves another file under the same name: refused, the pinned copy kept
    script.files["/deeplabv3plus_resnet50os16_voc.pth"] = saved.getvalue()[:-10] + b"0123456789"
    Path(paths.reference_dir(), "deeplabv3plus_resnet50os16_voc.pth").unlink()
    assert pipeline.reference_eval.main(["--cell", CELL, "--preset", "smoke", "--source", url]) == 1


def test_a_checkpoint_that_needs_more_than_weights_only_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "deeplabv3plus_resnet50os16_voc.pth"
    torch.save({"model": {"backbone_net.stem.0.weight": torch.zeros(1)}, "cfg": Script()}, path)
    with pytest.raises(reference.ReferenceAssetError, match="weights_only=True"):
        reference.load_checkpoint(path)
    torch.save({"state_dict": {}}, path)
    with pytest.raises(reference.ReferenceAssetError, match="'model' state dict"):
        reference.load_checkpoint(path)


def test_a_broken_or_truncated_log_is_refused_naming_its_line(tmp_path: Path) -> None:
    good = reference_log([50, 100, 150])
    path = tmp_path / "run.log"
    path.write_text(good)
    assert [row.iteration for row in reference.parse_log(path)] == [50, 100, 150]
    path.write_text(good[: good.rindex("'loss_total'") + 5])  # cut mid-row
    with pytest.raises(reference.ReferenceAssetError, match=r"run\.log:4: not a training row"):
        reference.parse_log(path)
    lines = good.splitlines()
    path.write_text("\n".join([lines[0], lines[2], lines[1]]) + "\n")
    with pytest.raises(reference.ReferenceAssetError, match=r"run\.log:3: iteration 50 after 100"):
        reference.parse_log(path)
