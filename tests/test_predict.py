"""Predictions on a user's own images with a trained smoke model: odd sizes, a folder, a broken file, and
the refusals (no model, a model of other params)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.io import read_image

import pipeline.predict
import pipeline.train
from deeplab.config import load_params
from deeplab.evaluate import SINGLE_SCALE, InputSpec, predict
from deeplab.model import load_trained
from tests.train_fixtures import edit_train, project  # noqa: F401  (fixture)

CELL = "voc-r50-os16"


def test_a_folder_of_odd_sizes_and_a_broken_file(project: Path, monkeypatch: pytest.MonkeyPatch,
                                                   capsys: pytest.CaptureFixture) -> None:
    monkeypatch.chdir(project)
    assert pipeline.train.main(["--cell", CELL, "--preset", "smoke"]) == 0
    folder = project / "mine"
    folder.mkdir()
    rng = np.random.default_rng(0)
    sizes = {"wide.jpg": (37, 91), "tall.png": (120, 33), "grey.png": (50, 50)}
    for name, (h, w) in sizes.items():
        picture = Image.fromarray(rng.integers(0, 256, (h, w, 3)).astype(np.uint8))
        (picture.convert("L") if name.startswith("grey") else picture).save(folder / name)
    (folder / "broken.jpg").write_bytes(b"\xff\xd8\xff not really a jpeg")
    code = pipeline.predict.main(["--cell", CELL, "--preset", "smoke", "--out", str(project / "out"), str(folder)])
    out = capsys.readouterr()
    assert code == 1 and "1 of 4 images could not be read" in out.err and "broken.jpg: cannot be decoded" in out.err
    assert "[4/4]" in out.out
    cfg = load_params("params").resolve(CELL, "smoke")
    model = load_trained(cfg, Path(cfg.files.model), torch.device("cpu"))
    for name, (h, w) in sizes.items():
        stem = Path(name).stem
        classes = read_image(str(project / "out" / f"{stem}.png"))
        assert classes.shape == (1, h, w) and classes.dtype == torch.uint8 and classes.max() < 21
        assert read_image(str(project / "out" / f"{stem}_color.png")).shape == (3, h, w)
        assert read_image(str(project / "out" / f"{stem}_overlay.jpg")).shape == (3, h, w)
        image = torch.from_numpy(np.array(Image.open(folder / name).convert("RGB"))).permute(2, 0, 1).contiguous()
        expected = predict(model, image, SINGLE_SCALE, InputSpec.of(cfg, torch.device("cpu")))  # as evaluation scores
        assert torch.equal(classes[0].long(), expected)


def test_refuses_a_cell_without_a_model_and_a_model_of_other_params(project: Path, monkeypatch: pytest.MonkeyPatch,
                                                                    capsys: pytest.CaptureFixture) -> None:
    monkeypatch.chdir(project)
    Image.fromarray(np.zeros((20, 20, 3), np.uint8)).save(project / "one.png")
    args = ["--cell", CELL, "--preset", "smoke", "--out", str(project / "out"), str(project / "one.png")]
    assert pipeline.predict.main(args) == 2
    assert "model.pt not found: train the cell first" in capsys.readouterr().err
    assert pipeline.train.main(["--cell", CELL, "--preset", "smoke"]) == 0
    edit_train(project / "params", lr=0.02)
    assert pipeline.predict.main(args) == 2
    assert "trained under another training record" in capsys.readouterr().err
