"""Your own data through the same machinery: a dataset entry of layout folder and its cells in params are
validated, take VOC's recipe where they say nothing, reach the doctor, the DAG, training (also from another
cell's model) and a table section of their own; README's paper tables never see them."""
from __future__ import annotations

import contextlib
import json
import subprocess
from pathlib import Path

import pytest
import torch

from deeplab.config import ParamsError, load_params
from deeplab.doctor import dataset_checks
from deeplab.model import ModelFileError, take_trained
from dag_fixtures import BIN, copy_checkout, run_tool, tool_env
from folder_fixtures import declare, write_learnable_folder
from train_fixtures import run_stage, shrink_params, write_prepared

PETS = {"layout": "folder", "source": "mydata/pets", "num_classes": 3}
CELLS = {"pets-r50-os16": {"dataset": "pets", "backbone": "r50", "output_stride": 16}}


def test_a_folder_entry_takes_voc_recipe_and_its_presets_overrides(params_dir: Path) -> None:
    """Two lines of params: the dataset trains with VOC's crop, batch, epochs and scales, under each preset
    (the smoke preset's VOC override too), unless its entry says otherwise; no reference mIoU needed."""
    declare(params_dir, "pets", {**PETS, "epochs": 30}, CELLS)
    params = load_params(params_dir)
    full, smoke = params.dataset("pets", "full"), params.dataset("pets", "smoke")
    voc_full, voc_smoke = params.dataset("voc", "full"), params.dataset("voc", "smoke")
    assert (full.crop_size, full.batch_size, full.eval_scale) == (voc_full.crop_size, voc_full.batch_size,
                                                                  voc_full.eval_scale)
    assert (smoke.crop_size, smoke.base_scale) == (voc_smoke.crop_size, voc_smoke.base_scale) != (full.crop_size,
                                                                                                  full.base_scale)
    assert full.epochs == smoke.epochs == 30 != voc_full.epochs  # its own key beats VOC's override
    assert full.expected_counts is None and full.title == "pets" and full.label_encoding == "index"
    cell = params.cells["pets-r50-os16"]
    assert cell.reference_miou is None and not cell.in_paper and cell.init == "imagenet"
    assert list(params.paper().cells) == [c for c in params.cells if c != "pets-r50-os16"]
    assert [r.cell.id for r in params.runs("full")].count("pets-r50-os16") == 1


def test_adding_a_dataset_of_your_own_changes_no_paper_runs_record(params_dir: Path) -> None:
    """The new keys (layout, source, init, ...) are in no record at their defaults: the paper's trained runs
    keep their digests, so adding your data retrains nothing of the table."""
    before = {run.run_key: run.evaluation_digest() for run in load_params(params_dir).runs("smoke")}
    declare(params_dir, "pets", PETS, CELLS)
    after = {run.run_key: run.evaluation_digest() for run in load_params(params_dir).runs("smoke")}
    assert {key: after[key] for key in before} == before


@pytest.mark.parametrize("entry, cells, message", [
    ({"source": "x", "num_classes": 3}, CELLS, "unknown dataset 'pets': a dataset of your own needs layout: folder"),
    ({"layout": "folder", "num_classes": 3}, CELLS, "pets.source: a dataset of layout folder needs its folder"),
    ({"layout": "folder", "source": "x"}, CELLS, "pets: no num_classes, and x/classes.txt, which gives it, is not there"),
    ({"layout": "folder"}, CELLS, "pets.source: a dataset of layout folder needs its folder"),
    ({**PETS, "label_values": {0: 0, 255: 7}}, CELLS, "pets.label_values: 255: 7: each entry maps a mask value"),
    ({**PETS, "label_encoding": "rgb"}, CELLS, "pets.label_encoding: 'rgb' is not one of 'index', 'color'"),
    ({**PETS, "crop": 5}, CELLS, "pets.crop: unknown key 'crop'"),
    (PETS, {"pets-r50-os16": {"dataset": "petz", "backbone": "r50", "output_stride": 16}},
     "cells.pets-r50-os16: cell id must be 'petz-r50-os16'"),
    (PETS, {"petz-r50-os16": {"dataset": "petz", "backbone": "r50", "output_stride": 16}},
     "cells.petz-r50-os16.dataset: unknown dataset 'petz'; known: voc, ade20k, cityscapes, pets"),
    (PETS, {"pets-r50-os16": {**CELLS["pets-r50-os16"], "init": "voc-r101-os8"}},
     "cells.pets-r50-os16.init: voc-r101-os8 has backbone r101, pets-r50-os16 r50"),
    (PETS, {"pets-r50-os16": {**CELLS["pets-r50-os16"], "init": "vocc-r50-os8"}},
     "cells.pets-r50-os16.init: 'vocc-r50-os8' is neither imagenet nor a cell"),
    (PETS, {"pets-r50-os16": {**CELLS["pets-r50-os16"], "init": "pets-r50-os8"},
            "pets-r50-os8": {**CELLS["pets-r50-os16"], "output_stride": 8, "init": "pets-r50-os16"}},
     "the cells start from each other in a circle"),
])
def test_a_wrong_entry_is_refused_naming_file_key_and_line(params_dir: Path, entry: dict, cells: dict,
                                                           message: str) -> None:
    declare(params_dir, "pets", entry, cells)
    with pytest.raises(ParamsError, match="datasets.yaml|cells.yaml") as error:
        load_params(params_dir)
    assert message in str(error.value)
    assert ".yaml:" in str(error.value).split(" ")[0]  # file:line first


def test_a_paper_cell_still_needs_its_reference(params_dir: Path) -> None:
    text = (params_dir / "cells.yaml").read_text().replace("reference_miou: 77.43, ", "")
    (params_dir / "cells.yaml").write_text(text)
    with pytest.raises(ParamsError, match="voc-r50-os8.reference_miou: a cell of the paper's table needs"):
        load_params(params_dir)


def test_the_doctor_checks_the_folder(tmp_path: Path, params_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    declare(params_dir, "pets", PETS, CELLS)
    params = load_params(params_dir)
    preset = params.preset("smoke")
    [missing] = dataset_checks(params, preset, ["pets"])
    assert missing.status == "FAIL" and "mydata/pets: not found or not a folder" in missing.text
    write_learnable_folder(tmp_path / "mydata" / "pets", n=10)
    [fine] = dataset_checks(params, preset, ["pets"])
    assert fine.status == "OK" and "10 images (9 to train on), 3 classes" in fine.text
    (tmp_path / "mydata" / "pets" / "classes.txt").write_text("background\ncat\n")
    [wrong] = dataset_checks(params, preset, ["pets"])
    assert wrong.status == "FAIL" and "classes.txt: 2 classes, but params/datasets.yaml pets.num_classes says 3" \
        in wrong.text


def test_prepare_reads_the_folder_and_refuses_a_class_count_params_do_not_give(tmp_path: Path,
                                                                                params_dir: Path) -> None:
    declare(params_dir, "pets", {**PETS, "num_classes": 4}, CELLS)
    write_learnable_folder(tmp_path / "mydata" / "pets", n=8)
    refused = run_stage("prepare", "--dataset", "pets", "--preset", "smoke", "--params", str(params_dir),
                        cwd=tmp_path, check=False)
    assert refused.returncode == 2 and "classes.txt: 3 classes, but params/datasets.yaml pets.num_classes says 4" \
        in refused.stderr
    assert not (tmp_path / "data" / "smoke" / "prepared" / "pets").exists()
    unknown = run_stage("prepare", "--dataset", "petz", "--preset", "smoke", "--params", str(params_dir),
                        cwd=tmp_path, check=False)
    assert unknown.returncode == 2 and "unknown dataset 'petz'" in unknown.stderr


@pytest.mark.integration
def test_a_cell_fine_tunes_from_another_cells_model(tmp_path: Path, params_dir: Path) -> None:
    """init: <cell>: the backbone, ASPP and decoder come from that cell's model.pt, the classifiers of another
    class count are re-initialised, and the log names both; training from it goes on as usual."""
    shrink_params(params_dir, epochs=1)
    declare(params_dir, "pets", PETS, {"pets-r50-os16": {**CELLS["pets-r50-os16"], "init": "voc-r50-os16"}})
    write_prepared(tmp_path / "data" / "smoke" / "prepared" / "voc", num_classes=5)
    write_learnable_folder(tmp_path / "mydata" / "pets", n=12)
    args = ("--preset", "smoke", "--params", str(params_dir))
    run_stage("train", "--cell", "voc-r50-os16", *args, cwd=tmp_path)
    run_stage("prepare", "--dataset", "pets", *args, cwd=tmp_path)
    trained = run_stage("train", "--cell", "pets-r50-os16", *args, cwd=tmp_path)
    assert "starting from cell voc-r50-os16's model" in trained.stdout
    said = trained.stdout.split("starting from", 1)[1].splitlines()[0]
    assert "re-initialised 4: classifier.classifier.weight ((5, 16, 1, 1) -> (3, 16, 1, 1))" in said
    voc = torch.load(tmp_path / "results/smoke/voc-r50-os16/model.pt", weights_only=True)
    pets = torch.load(tmp_path / "results/smoke/pets-r50-os16/model.pt", weights_only=True)
    assert pets["state_dict"]["classifier.classifier.weight"].shape[0] == 3
    assert pets["training"]["cell"]["init"] == "voc-r50-os16"  # on record: it is what the weights started from
    assert "init" not in voc["training"]["cell"]  # imagenet, the default, stays out of the record
    run_stage("evaluate", "--cell", "pets-r50-os16", *args, cwd=tmp_path)


def test_taking_a_model_of_another_backbone_is_refused(tmp_path: Path) -> None:
    from deeplab.model import deeplabv3plus
    small = deeplabv3plus(backbone="r50", output_stride=16, num_classes=3, aux_loss=True, backbone_width=16, aspp_channels=16, decoder_channels=16,
                          aux_channels=16, low_level_channels=8)
    other = deeplabv3plus(backbone="r50", output_stride=16, num_classes=3, aux_loss=True, backbone_width=32, aspp_channels=16, decoder_channels=16,
                          aux_channels=16, low_level_channels=8)
    torch.save({"state_dict": other.state_dict(), "cell": "voc-r50-os16"}, tmp_path / "model.pt")
    with pytest.raises(ModelFileError, match="backbone tensor.s. of this model have no match of the same shape in cell voc-r50-os16.s"):
        take_trained(small, tmp_path / "model.pt", "voc-r50-os16")
    with pytest.raises(ModelFileError, match="holds the model of cell voc-r50-os16, not of voc-r50-os8"):
        take_trained(small, tmp_path / "model.pt", "voc-r50-os8")


@pytest.mark.integration
def test_dvc_picks_the_new_dataset_and_cells_up_from_params(tmp_path: Path) -> None:
    """A dataset and cells added to params/ reach DVC through one command, like a lockfile: before it, `--check`
    and the records stage name what to run (nothing rewrites the pipeline behind DVC's back); after it, the
    folder is prepared by its own stage, the fine-tuned cell waits on the model it starts from, and its
    training record (its file, a dependency) holds its parent's training digest and the settings it takes
    from VOC's entry."""
    checkout = copy_checkout(tmp_path / "copy")
    write_learnable_folder(checkout / "mydata" / "pets", n=6)
    declare(checkout / "params", "pets", {"layout": "folder", "source": "mydata/pets"},  # classes.txt: 3 classes
            {**CELLS, "pets-r50-os8": {**CELLS["pets-r50-os16"], "output_stride": 8, "init": "voc-r50-os16"}})
    check = subprocess.run([str(BIN / "python"), "-m", "pipeline.dvc_presets", "--check"], cwd=checkout,
                           env=tool_env(), capture_output=True, text=True, timeout=300)
    assert check.returncode == 1 and "out of date: dvc.yaml, smoke/dvc.yaml" in check.stderr, check.stderr
    stale = subprocess.run([str(BIN / "dvc"), "repro", "smoke/dvc.yaml:records"],
                           cwd=checkout, env=tool_env(), capture_output=True, text=True, timeout=300)
    assert stale.returncode != 0 and "smoke/dvc.yaml is out of date with params/" in stale.stdout + stale.stderr
    assert "run `python -m pipeline.dvc_presets`" in stale.stdout + stale.stderr
    run_tool(["python", "-m", "pipeline.dvc_presets"], checkout, timeout=300)
    for pipeline in ("dvc.yaml", "smoke/dvc.yaml"):
        run_tool(["dvc", "repro", "--single-item", f"{pipeline}:records"], checkout, timeout=300)
        status = json.loads(run_tool(["dvc", "status", pipeline, "--json"], checkout, timeout=300).stdout)
        prefix = "" if pipeline == "dvc.yaml" else "smoke/dvc.yaml:"
        assert {f"{prefix}prepare_folder@pets", f"{prefix}train_cell@pets-r50-os8",
                f"{prefix}evaluate_cell@pets-r50-os16"} <= set(status), sorted(status)
        assert f"{prefix}download_dataset@pets" not in status
    from dvc.repo import Repo
    with contextlib.chdir(checkout), Repo(str(checkout)) as repo:
        stages = {stage.addressing: stage for stage in repo.index.stages}
    tuned = stages["smoke/dvc.yaml:train_cell@pets-r50-os8"]
    assert {"results/smoke/voc-r50-os16/model.pt", "results/smoke/records/train/pets-r50-os8.json"} <= \
        {d.def_path for d in tuned.deps}
    record = json.loads((checkout / "results/smoke/records/train/pets-r50-os8.json").read_text())
    with contextlib.chdir(checkout):  # sources are relative to the project root
        params = load_params(checkout / "params")
    assert record["parent"] == {"cell": "voc-r50-os16",
                                "training_digest": params.resolve("voc-r50-os16", "smoke").training_digest()}
    assert record["data"]["num_classes"] == 3 and record["data"]["crop_size"] == [32, 32]  # its own, and VOC's
    assert "mydata/pets" in {d.def_path for d in stages["smoke/dvc.yaml:prepare_folder@pets"].deps}
    assert "mydata/pets/classes.txt" in {d.def_path for d in stages["smoke/dvc.yaml:records"].deps}
    with (checkout / "mydata" / "pets" / "classes.txt").open("a") as classes:  # a class more: the records follow
        classes.write("bird\n")
    status = json.loads(run_tool(["dvc", "status", "smoke/dvc.yaml", "--json"], checkout, timeout=300).stdout)
    assert "smoke/dvc.yaml:records" in status
