"""Your own data end to end: three folders (index masks, colour masks, binary 0/255 masks with label_values)
and their params entries go through the Snakemake DAG on the CPU, one of them fine-tuned from the demo's
voc-r50-os16, to a table section each, MLflow runs with logged and registered models, and predictions;
README's paper tables and the full preset's files stay untouched."""
from __future__ import annotations

import csv
import re
import subprocess
from pathlib import Path

import mlflow
import numpy as np
import pytest
import yaml
from PIL import Image

from dag_fixtures import copy_checkout, run_tool
from folder_fixtures import declare, write_learnable_folder

pytestmark = pytest.mark.slow

OWN = {  # dataset -> (mask kind, params entry); their cells: <dataset>-r50-os16
    "pets": ("index", {"layout": "folder", "source": "mydata/pets"}),  # README's entry: classes.txt gives the count
    "shapes": ("color", {"layout": "folder", "source": "mydata/shapes", "num_classes": 3, "label_encoding": "color"}),
    "spots": ("binary", {"layout": "folder", "source": "mydata/spots", "num_classes": 2,
                         "label_values": {0: 0, 255: 1}, "title": "Spots (binary)"}),
}


@pytest.fixture(scope="module")
def own_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str, str]:
    """The checkout with the three folders declared, the paper's cells cut to voc-r50-os16 (the start of the
    fine-tuned cell; the whole demo DAG has a test of its own), one seed and 2 epochs (a reduced configuration):
    the smoke DAG run once."""
    checkout = copy_checkout(tmp_path_factory.mktemp("own"))
    params = checkout / "params"
    cells = yaml.safe_load((params / "cells.yaml").read_text())["cells"]
    (params / "cells.yaml").write_text(yaml.safe_dump({"cells": {"voc-r50-os16": cells["voc-r50-os16"]}}))
    presets = params / "presets.yaml"
    text = presets.read_text().replace("seeds: {voc-r50-os16: [0, 1]}", "seeds: {}")
    assert text.count("batch_size: 8, epochs: 10,") == 3, "the smoke preset's epochs moved: update this test"
    presets.write_text(text.replace("batch_size: 8, epochs: 10,", "batch_size: 8, epochs: 2,", 1))  # VOC's: it
    # runs, it is no benchmark; the folders take VOC's epochs (their entries give none)
    for name, (masks, entry) in OWN.items():
        write_learnable_folder(checkout / "mydata" / name, n=24, seed=len(name), masks=masks)
        cell = {"dataset": name, "backbone": "r50", "output_stride": 16}
        declare(params, name, entry, {f"{name}-r50-os16": {**cell, **({"init": "voc-r50-os16"} if name == "pets" else {})}})
    uri = f"sqlite:///{checkout / 'mlflow.db'}"
    out = run_tool(["snakemake", "--cores", "2", "--config", "preset=smoke"], checkout, timeout=1500,
                   MLFLOW_TRACKING_URI=uri)
    return checkout, out.stdout + out.stderr, uri


def test_each_folder_dataset_reaches_a_table_section_of_its_own(own_run: tuple[Path, str, str]) -> None:
    checkout, output, _ = own_run
    assert "pipeline.doctor: nothing blocks preset smoke" in output
    assert "data pets" in output and "your folder mydata/pets: 24 images (22 to train on), 3 classes" in output  # the doctor's line
    table = (checkout / "results/smoke/table.md").read_text()
    for name, title in (("pets", "pets"), ("shapes", "shapes"), ("spots", "Spots (binary)")):
        section = table.split(f"#### {title}\n", 1)[1].split("####", 1)[0]
        header = next(line for line in section.splitlines() if line.startswith("|"))
        assert "Reference" not in header and "Diff" not in header and "mIoU" in header, header
        assert re.search(r"\| +\d+\.\d\d% +\|", section), section
    pets_row = table.split("#### pets\n", 1)[1].split("####", 1)[0]
    assert "PRE=voc-r50-os16" in pets_row  # fine-tuned from the demo's model
    rows = {row["cell"]: row for row in csv.DictReader((checkout / "results/smoke/summary.csv").open())}
    for name in OWN:
        row = rows[f"{name}-r50-os16"]
        assert row["dataset"] == name and float(row["mIoU"]) > 0 and row["reference_mIoU"] == row["diff"] == ""
    changed = subprocess.run(["git", "status", "--porcelain", "--", "README.md", "results/table.md", "dvc.yaml"],
                             cwd=checkout, capture_output=True, text=True, check=True).stdout
    assert changed == "", changed  # README's paper tables and the full preset's files are untouched


def test_the_fine_tuned_cell_started_from_the_demo_model(own_run: tuple[Path, str, str]) -> None:
    checkout, _, _ = own_run
    log = (checkout / "logs/smoke/train_cell/pets-r50-os16.log").read_text()
    line = next(line for line in log.splitlines() if line.startswith("starting from cell voc-r50-os16's model"))
    assert "re-initialised 4: classifier.classifier.weight ((21, 64, 1, 1) -> (3, 64, 1, 1))" in line, line


def test_masks_of_each_encoding_are_prepared_as_class_indices(own_run: tuple[Path, str, str]) -> None:
    checkout, _, _ = own_run
    for name, expected in (("pets", {0, 1, 2, 255}), ("shapes", {0, 1, 2}), ("spots", {0, 1})):
        prepared = checkout / "data/smoke/prepared" / name
        values = set()
        for label in (prepared / "labels").iterdir():
            values |= set(np.unique(np.asarray(Image.open(label))).tolist())
        assert values == expected, (name, values)
    rotated = Image.open(next((checkout / "data/smoke/prepared/pets/images").glob("photo_001.*")))
    mask = Image.open(checkout / "data/smoke/prepared/pets/labels/photo_001.png")
    assert rotated.size == mask.size  # the EXIF-rotated image as a viewer shows it, at its mask's size


def test_mlflow_holds_a_run_and_a_registered_model_per_own_cell(own_run: tuple[Path, str, str]) -> None:
    _, _, uri = own_run
    client = mlflow.MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name("deeplabv3plus-smoke")
    for name in OWN:
        cell = f"{name}-r50-os16"
        [run] = client.search_runs([experiment.experiment_id], f"attributes.run_name = '{cell}'")
        assert run.data.metrics["mIoU"] > 0 and run.data.tags["dataset"] == name
        assert any(d.dataset.name == f"{name}/train" for d in run.inputs.dataset_inputs)
        assert client.get_model_version_by_alias(f"deeplabv3plus-smoke-{cell}", "best").run_id == run.info.run_id


def test_predict_runs_on_an_own_cell(own_run: tuple[Path, str, str], tmp_path: Path) -> None:
    checkout, _, uri = own_run
    image = next((checkout / "mydata/spots/images").glob("photo_005.*"))
    run_tool(["python", "-m", "pipeline.predict", "--cell", "spots-r50-os16", "--preset", "smoke",
              "--out", str(tmp_path), str(image)], checkout, timeout=300, MLFLOW_TRACKING_URI=uri)
    predicted = np.asarray(Image.open(tmp_path / "photo_005.png"))
    assert predicted.shape == np.asarray(Image.open(image)).shape[:2] and set(np.unique(predicted)) <= {0, 1}
