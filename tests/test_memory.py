"""The memory plan: fake-tensor predictions against published measurements, the linear model between
micro-batches, what fits on a GPU, and the plan's --check without predicting again."""
from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from deeplab import plan
from deeplab.config import load_params
from deeplab.memory import GIB, Line, MemoryPlanError, ModelShape, fit_line, largest_fitting, predict_step, usable_bytes
from tests.train_fixtures import ROOT

PARAMS = load_params(ROOT / "params")
TRAIN = PARAMS.train  # the recipe's optimiser and loss weights
# mmsegmentation's DeepLabV3+ README (torch.cuda.max_memory_allocated on V100, fp32, output stride 8):
# (backbone, classes, crop, images per GPU) -> GB
PUBLISHED = {("r50", 19, (512, 1024), 2): 7.5, ("r101", 19, (512, 1024), 2): 11.0,
             ("r50", 150, (512, 512), 4): 10.6, ("r101", 150, (512, 512), 4): 14.1,
             ("r50", 21, (512, 512), 4): 7.6, ("r101", 21, (512, 512), 4): 11.0}


@pytest.mark.slow
@pytest.mark.parametrize("setting", sorted(PUBLISHED), ids=lambda s: f"{s[0]}-{s[1]}cls-{s[2][1]}-x{s[3]}")
def test_predictions_match_published_measurements(setting: tuple) -> None:
    backbone, classes, crop, images = setting
    predicted = predict_step(ModelShape(backbone, 8, classes, crop, "fp32"), images, TRAIN).total / GIB
    assert predicted == pytest.approx(PUBLISHED[setting], rel=0.10)


def test_peak_memory_is_linear_in_the_micro_batch() -> None:
    """Two predictions give the line; a third micro-batch lands on it within 2 %."""
    shape = ModelShape("r50", 16, 21, (256, 256), "bf16")
    line = fit_line(*((n, predict_step(shape, n, TRAIN).total) for n in (2, 4)))
    assert predict_step(shape, 8, TRAIN).total == pytest.approx(line.at(8), rel=0.02)


def test_the_breakdown_adds_up_and_counts_momentum() -> None:
    memory = predict_step(ModelShape("r50", 16, 21, (128, 128), "fp32"), 2, TRAIN)
    assert memory.parameters + memory.gradients + memory.optimizer + memory.activations == memory.total
    assert memory.optimizer >= 0.95 * memory.parameters  # SGD's momentum: a buffer per weight, at least


def test_largest_fitting_micro_batch_keeps_the_margins() -> None:
    line = Line(fixed=1 * GIB, per_image=1 * GIB)  # 1 GiB + 1 GiB per image
    assert usable_bytes(24) == pytest.approx((24 - 1.5) * GIB / 1.10)
    assert largest_fitting(line, 16, 24) == 16          # 17 GiB x 1.1 + 1.5 = 20.2 <= 24
    assert largest_fitting(line, 16, 20) == 8           # 16 images need 20.2 > 20; 8 need 9 x 1.1 + 1.5 = 11.4
    assert largest_fitting(line, 16, 5) == 2 and largest_fitting(line, 16, 4) is None  # 2 images need 4.8
    assert plan.fits({"points": [{"total": 3 * GIB}, {"total": 5 * GIB}]}, 16, 20) == "8 x 2"


def test_a_missing_tracker_names_the_torch_version(monkeypatch: pytest.MonkeyPatch) -> None:
    import torch
    monkeypatch.setitem(sys.modules, "torch.distributed._tools.mem_tracker", None)
    with pytest.raises(MemoryPlanError, match=re.escape(f"torch {torch.__version__} has no fake-tensor memory tracker")):
        predict_step(ModelShape("r50", 16, 21, (64, 64), "fp32"), 2, TRAIN)


def test_the_free_configuration_prints_its_peak_last() -> None:
    """The last line is that configuration's predicted peak in GiB, with the preset's optimiser."""
    result = subprocess.run([sys.executable, "-m", "pipeline.plan", "--preset", "full", "--backbone", "r50",
                             "--output-stride", "16", "--classes", "19", "--crop", "64x128", "--micro-batch", "2",
                             "--precision", "bf16"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    expected = predict_step(ModelShape("r50", 16, 19, (64, 128), "bf16"), 2, TRAIN).total / GIB
    assert result.stdout.strip().splitlines()[-1] == f"{expected:.2f}"


def test_the_stored_plan_and_readme_table_are_current() -> None:
    """README's memory table renders the stored plan, whose predictions match params: no prediction runs."""
    result = subprocess.run([sys.executable, "-m", "pipeline.plan", "--preset", "full", "--check"], cwd=ROOT, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stderr


def test_check_fails_when_params_change_or_the_table_is_edited(tmp_path: Path) -> None:
    for name in ("params", "results"):
        shutil.copytree(ROOT / name, tmp_path / name)
    shutil.copy(ROOT / "README.md", tmp_path / "README.md")
    check = [sys.executable, "-m", "pipeline.plan", "--preset", "full", "--check"]
    env = {"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"}
    readme = tmp_path / "README.md"
    readme.write_text(readme.read_text().replace("| voc-r50-os8 ", "| voc-r50-os8 (edited) ", 1))
    edited = subprocess.run(check, cwd=tmp_path, capture_output=True, text=True, env=env, timeout=120)
    assert edited.returncode == 1 and "the memory table differs" in edited.stderr
    shutil.copy(ROOT / "README.md", readme)
    datasets = tmp_path / "params" / "datasets.yaml"
    datasets.write_text(datasets.read_text().replace("crop_size: [512, 1024]", "crop_size: [768, 768]"))
    changed = subprocess.run(check, cwd=tmp_path, capture_output=True, text=True, env=env, timeout=120)
    assert changed.returncode == 1 and "no current prediction for cityscapes-r50-os8/bf16" in changed.stderr
