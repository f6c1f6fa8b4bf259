"""Fixtures of the training / evaluation tests: tiny prepared datasets with learnable content, and a
params copy whose ``smoke`` preset is shrunk so a CPU trains a cell in seconds."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
PYTHON = sys.executable


BRIGHT = [[0, 0, 0], [255, 255, 255], [255, 40, 40], [40, 255, 40], [40, 40, 255], [255, 255, 40]]


def class_palette(num_classes: int) -> list[list[int]]:
    """Well-separated colours (black background first), then random ones."""
    rng = np.random.default_rng(1234)
    return (BRIGHT + rng.integers(40, 255, (max(num_classes - len(BRIGHT), 0), 3)).tolist())[:num_classes]


def draw_sample(rng: np.random.Generator, num_classes: int, size: tuple[int, int],
                palette: list[list[int]]) -> tuple[np.ndarray, np.ndarray]:
    """An image of class-coloured rectangles on a dark background (class 0), with its label; rectangle
    borders are marked ignore (255), as VOC's object outlines."""
    h, w = size
    label = np.zeros((h, w), np.uint8)
    for _ in range(3):
        k = int(rng.integers(1, num_classes))
        top, left = int(rng.integers(0, h * 2 // 3)), int(rng.integers(0, w * 2 // 3))
        bh, bw = int(rng.integers(h // 4, h // 2)), int(rng.integers(w // 4, w // 2))
        label[top:top + bh, left:left + bw] = k
        label[top, left:left + bw] = 255
    colours = np.array(palette + [[0, 0, 0]] * (256 - len(palette)), np.int16)[label]
    noise = rng.integers(-20, 21, (h, w, 3))
    image = np.clip(colours + noise + 20, 0, 255).astype(np.uint8)
    return image, label


def write_prepared(folder: Path, *, num_classes: int = 5, n_train: int = 8, n_val: int = 3,
                   size: tuple[int, int] = (48, 64), seed: int = 0, grayscale_every: int = 0) -> Path:
    """A prepared dataset per the contract: splits/{train,val}.txt, JPEG/PNG images, label PNGs, meta.json."""
    rng = np.random.default_rng(seed)
    palette = class_palette(num_classes)
    for sub in ("images", "labels", "splits"):
        (folder / sub).mkdir(parents=True, exist_ok=True)
    for split, count in (("train", n_train), ("val", n_val)):
        lines = []
        for i in range(count):
            image, label = draw_sample(rng, num_classes, size, palette)
            name = f"{split}_{i:04d}"
            picture = Image.fromarray(image)
            if grayscale_every and i % grayscale_every == 0:
                picture = picture.convert("L")
            picture.save(folder / "images" / f"{name}.jpg", quality=95)
            Image.fromarray(label).save(folder / "labels" / f"{name}.png")
            lines.append(f"images/{name}.jpg labels/{name}.png")
        (folder / "splits" / f"{split}.txt").write_text("\n".join(lines) + "\n")
    meta = {"classes": [f"class {k}" for k in range(num_classes)], "palette": palette, "ignore_index": 255,
            "counts": {"train": n_train, "val": n_val}, "sources": {}}
    (folder / "meta.json").write_text(json.dumps(meta))
    return folder


def shrink_params(params_dir: Path, *, crop: int = 32, batch: int = 2, epochs: int = 1,
                  train: dict[str, Any] | None = None, dataset: dict[str, Any] | None = None,
                  model: dict[str, Any] | None = None, evaluate: dict[str, Any] | None = None) -> Path:
    """Rewrite the copy's ``smoke`` preset: tiny crops, thin heads, deterministic, no workers."""
    doc = yaml.safe_load((params_dir / "presets.yaml").read_text())
    smoke = doc["presets"]["smoke"]
    small = {"num_classes": 5, "base_scale": [crop * 2, crop], "crop_size": [crop, crop], "batch_size": batch, "epochs": epochs,
             "eval_scale": [crop * 2, crop], **(dataset or {})}
    smoke["overrides"] = {
        "datasets": {name: dict(small) for name in ("voc", "ade20k", "cityscapes")},
        "model": {"pretrained": "none", "backbone_width": 16, "aspp_channels": 16, "decoder_channels": 16, "aux_channels": 16,
                  "low_level_channels": 8, **(model or {})},
        "train": {"checkpoint_every": 2, "log_every": 1, "workers": 0, "deterministic": True, "precision": "fp32",
                  "system_metrics_every_s": smoke["overrides"]["train"]["system_metrics_every_s"], **(train or {})}}
    if evaluate:
        smoke["overrides"]["evaluate"] = dict(evaluate)
    (params_dir / "presets.yaml").write_text(yaml.safe_dump(doc, sort_keys=False))
    return params_dir


def edit_train(params_dir: Path, **values: Any) -> None:
    """Set keys of params/train.yaml's train section, as a user edits the file (a model trained before is
    then stale)."""
    path = params_dir / "train.yaml"
    doc = yaml.safe_load(path.read_text())
    doc["train"].update(values)
    path.write_text(yaml.safe_dump(doc))


def run_stage(module: str, *args: str, cwd: Path, check: bool = True, timeout: float = 240,
              env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """``python -m pipeline.<module> ...`` in ``cwd`` (the project root of the test)."""
    full_env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", **(env or {})}
    result = subprocess.run([PYTHON, "-m", f"pipeline.{module}", *args], cwd=cwd, capture_output=True,
                            text=True, timeout=timeout, env=full_env)
    if check and result.returncode != 0:
        raise AssertionError(f"pipeline.{module} {' '.join(args)} exited {result.returncode}:\n"
                             f"{result.stdout}\n{result.stderr}")
    return result


@pytest.fixture
def project(tmp_path: Path, params_dir: Path) -> Path:
    """A project root with a shrunk params copy and a tiny prepared VOC-like dataset (5 classes)."""
    shrink_params(params_dir)
    write_prepared(tmp_path / "data" / "smoke" / "prepared" / "voc", num_classes=5, grayscale_every=3)
    return tmp_path
