"""The results-table renderer against golden files, and the table stage's files and errors.

Regenerate the golden files after an intended format change with ``UPDATE_GOLDEN=1 pytest tests/test_table.py``
and review the diff.
"""
from __future__ import annotations

import csv
import io
import json
import os
import re
from pathlib import Path

import pytest

from deeplab.config import load_params
from deeplab.table import BEGIN, END, Finished, TableError, read_metrics, render, replace_block
from pipeline import table as stage

GOLDEN = Path(__file__).resolve().parent / "golden"
COSTS = f"{stage.COST_BEGIN}\n{stage.COST_END}\n"  # README's generated cost table
# Three cells evaluated (above, below and at the reference), the other nine not yet: "-".
MEASURED = {"voc-r50-os8": 77.9012, "ade20k-r101-os16": 44.0, "cityscapes-r50-os16": 79.73}


def _metrics(miou: float) -> dict[str, object]:
    return {"mIoU": miou, "aAcc": 95.1, "mAcc": 85.2, "per_class_iou": {"a": miou, "b": None, "c": 50.0},
            "cell": "x"}


def _finished(miou: float) -> list[Finished]:
    return [Finished(_metrics(miou))]


def _squeezed(text: str) -> str:
    """Markdown with the column padding removed: '|  a  | b |' -> '| a | b |'."""
    return re.sub(r" *\| *", " | ", text)


def _check_golden(name: str, text: str) -> None:
    path = GOLDEN / name
    if os.environ.get("UPDATE_GOLDEN"):  # rewrite, and fail: a run that rewrites its golden file proves nothing
        path.write_text(text)
        pytest.fail(f"{name} rewritten (UPDATE_GOLDEN); review the diff, then rerun without UPDATE_GOLDEN")
    assert text == path.read_text(), f"{name} differs from the golden file; see the module docstring"


def test_table_md_matches_golden(params_dir: Path) -> None:
    params = load_params(params_dir)
    metrics = {cell: (_finished(MEASURED[cell]) if cell in MEASURED else []) for cell in params.cells}
    _check_golden("table.md", render(params, "full", metrics, link_base=""))


def test_readme_block_matches_golden_with_links_from_the_root(params_dir: Path) -> None:
    params = load_params(params_dir)
    metrics = {cell: _finished(MEASURED[cell]) for cell in MEASURED}
    _check_golden("readme_block.md", render(params, "full", metrics, link_base="results"))


def test_values_come_from_params(params_dir: Path) -> None:
    """Change the recipe and the reference: the table follows, nothing is typed into the renderer."""
    path = params_dir / "datasets.yaml"
    path.write_text(path.read_text().replace("  epochs: 60 ", "  epochs: 61 ").replace("title: PASCAL VOC", "title: VOC12"))
    path = params_dir / "cells.yaml"
    path.write_text(path.read_text().replace("reference_miou: 77.43", "reference_miou: 70.00"))
    text = render(load_params(params_dir), "full", {"voc-r50-os8": _finished(71.5)}, link_base="")
    assert "#### VOC12" in text and "0.01/poly/16/61" in text
    assert "| 71.50% | 70.00% | +1.50 |" in _squeezed(text)


def test_smoke_preset_shows_its_own_recipe(params_dir: Path) -> None:
    params = load_params(params_dir)
    text = _squeezed(render(params, "smoke", {}, link_base=""))
    for dataset in ("voc", "cityscapes"):
        recipe = params.dataset(dataset, "smoke")
        assert recipe.crop_size != params.dataset(dataset, "full").crop_size  # the preset's own crop...
        height, width = recipe.crop_size
        assert (f"ResNet50 (OS=8, PRE=Synthetic) | {height}x{width} | "  # ...shown (h x w), a random backbone
                f"LR/POLICY/BS/EPOCH: {params.resolve('voc-r50-os8', 'smoke').train.lr:g}/poly/{recipe.batch_size}/"
                f"{recipe.epochs}") in text


def test_stage_writes_table_and_readme_block_for_full_only(tmp_path: Path, params_dir: Path) -> None:
    (tmp_path / "README.md").write_text(f"# title\n\n{BEGIN}\nold\n{END}\n\nafter\n{COSTS}")
    cell_dir = tmp_path / "results" / "voc-r50-os8"
    cell_dir.mkdir(parents=True)
    (cell_dir / "metrics.json").write_text(json.dumps(_metrics(77.9012)))
    params = load_params(params_dir)
    files = stage.expected_files(params, "full", root=tmp_path)
    results = tmp_path / "results"
    assert set(files) == {results / "table.md", results / "table.html", results / "summary.csv", results / "per_class_iou.csv",
                          tmp_path / "README.md"}
    readme = files[tmp_path / "README.md"]
    assert readme.startswith("# title\n\n" + BEGIN + "\n#### PASCAL VOC") and f"{END}\n\nafter\n" in readme
    assert "| voc-r50-os8          |       634,560 |" in readme  # the cost table, generated too
    assert "[cfg](results/voc-r50-os8/config.yaml)" in readme and "77.90%" in readme
    assert "[cfg](voc-r50-os8/config.yaml)" in files[tmp_path / "results" / "table.md"]
    smoke = stage.expected_files(params, "smoke", root=tmp_path)
    assert tmp_path / "README.md" not in smoke and results / "smoke" / "table.md" in smoke  # never the README


def test_summary_and_per_class_csv_hold_every_cell(tmp_path: Path, params_dir: Path) -> None:
    """summary.csv: a row per cell, measured or not, GPU-hours from the training log; per_class_iou.csv: a
    row per class of each evaluated cell."""
    params = load_params(params_dir)
    cell_dir = tmp_path / "results" / "voc-r50-os8"
    cell_dir.mkdir(parents=True)
    (cell_dir / "metrics.json").write_text(json.dumps(_metrics(77.9012)))
    (cell_dir / "train_log.csv").write_text("iteration,images,images_per_s\n50,800,4.0\n100,800,2.0\n")
    (tmp_path / "README.md").write_text(f"{BEGIN}\n{END}\n{COSTS}")
    files = stage.expected_files(params, "full", root=tmp_path)
    summary = list(csv.DictReader(io.StringIO(files[tmp_path / "results" / "summary.csv"])))
    assert [row["cell"] for row in summary] == list(params.cells)
    voc = summary[0]
    assert (voc["mIoU"], voc["reference_mIoU"], voc["diff"], voc["seeds"], voc["mIoU_std"]) == \
        ("77.9012", "77.4300", "0.4712", "1", "")
    assert voc["gpu_hours"] == f"{(200 + 400) / 3600:.4f}"  # 800 images at 4/s, then at 2/s, on 1 GPU
    assert summary[1]["mIoU"] == "" and summary[1]["seeds"] == "0" and summary[1]["gpu_hours"] == ""
    per_class = list(csv.DictReader(io.StringIO(files[tmp_path / "results" / "per_class_iou.csv"])))
    assert [(r["cell"], r["class"], r["iou"]) for r in per_class] == \
        [("voc-r50-os8", "a", "77.9012"), ("voc-r50-os8", "b", ""), ("voc-r50-os8", "c", "50.0000")]


def test_check_fails_on_a_stale_summary(tmp_path: Path, params_dir: Path, monkeypatch: pytest.MonkeyPatch,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "README.md").write_text(f"{BEGIN}\n{END}\n{COSTS}")
    monkeypatch.chdir(tmp_path)
    args = ["--preset", "full", "--params", str(params_dir)]
    assert stage.main(args) == 0 and stage.main([*args, "--check"]) == 0
    summary = tmp_path / "results" / "summary.csv"
    summary.write_text(summary.read_text().replace("77.4300", "77.4400"))
    assert stage.main([*args, "--check"]) == 1
    assert "out of date: results/summary.csv" in capsys.readouterr().err


def test_bad_metrics_name_the_file(tmp_path: Path, params_dir: Path) -> None:
    path = tmp_path / "results" / "ade20k-r50-os8" / "metrics.json"
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps({"mIoU": 4451}))
    with pytest.raises(TableError, match=r"ade20k-r50-os8/metrics.json: 'mIoU' must be a percentage"):
        read_metrics(tmp_path, load_params(params_dir), "full")
    path.write_text("{not json")
    with pytest.raises(TableError, match=r"ade20k-r50-os8/metrics.json: not valid JSON"):
        read_metrics(tmp_path, load_params(params_dir), "full")


@pytest.mark.parametrize("text", ["no markers", f"{BEGIN}\n{BEGIN}\n{END}\n", f"{END}\n{BEGIN}\n"])
def test_readme_without_one_pair_of_markers_is_an_error(text: str) -> None:
    with pytest.raises(TableError, match="README.md: needs exactly one"):
        replace_block(text, "table\n")


def test_a_cell_with_several_seeds_shows_mean_std_and_count(tmp_path: Path, params_dir: Path) -> None:
    """The smoke preset trains voc-r50-os16 with seeds 0 and 1: mean ± sample std (n), the difference of the
    mean; while a seed still runs, what has finished (n=1 of 2)."""
    params = load_params(params_dir)
    assert params.seeds("voc-r50-os16", "smoke") == (0, 1)
    paths = params.preset("smoke").paths
    seed1 = tmp_path / paths.cell("voc-r50-os16", 1).metrics
    seed1.parent.mkdir(parents=True)
    seed1.write_text(json.dumps(_metrics(14.0)))
    text = _squeezed(render(params, "smoke", read_metrics(tmp_path, params, "smoke"), link_base="", root=tmp_path))
    assert "| 14.00% (n=1 of 2) | 76.92% | -62.92 |" in text
    seed0 = tmp_path / paths.cell("voc-r50-os16").metrics
    seed0.write_text(json.dumps(_metrics(10.0)))
    metrics = read_metrics(tmp_path, params, "smoke")
    text = _squeezed(render(params, "smoke", metrics, link_base="", root=tmp_path))
    std = ((10.0 - 12.0) ** 2 + (14.0 - 12.0) ** 2) ** 0.5  # sample standard deviation of 10 and 14
    assert f"| 12.00 ± {std:.2f}% (n=2) | 76.92% | -64.92 ± {std:.2f} |" in text
    assert "[cfg](voc-r50-os16/config.yaml)" in text  # links to the default seed's run
    per_class = stage.expected_files(params, "smoke", root=tmp_path)[tmp_path / paths.per_class_iou()]
    assert per_class.count("voc-r50-os16,0,voc,") == 3 and per_class.count("voc-r50-os16,1,voc,") == 3


def _record_run(root: Path, params_dir: Path, cell: str, miou: float) -> None:
    """A run's metrics.json as evaluation writes it: the resolved config, both records and their digests."""
    cfg = load_params(params_dir).resolve(cell, "full")
    run = root / cfg.files.dir
    run.mkdir(parents=True, exist_ok=True)
    records = cfg.records()
    (run / "metrics.json").write_text(json.dumps({
        **_metrics(miou), "config": cfg.to_dict(),
        "records": {"training": records["training"], "evaluation": records["evaluation"]},
        "provenance": {"training_digest": records["training_digest"],
                       "evaluation_digest": records["evaluation_digest"]}}))


def test_a_run_trained_under_other_params_is_shown_as_stale_never_relabelled(
        tmp_path: Path, params_dir: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "README.md").write_text(f"{BEGIN}\n{END}\n{COSTS}")
    _record_run(tmp_path, params_dir, "voc-r50-os8", 77.9)
    _record_run(tmp_path, params_dir, "voc-r50-os16", 76.0)
    monkeypatch.chdir(tmp_path)
    args = ["--preset", "full", "--params", str(params_dir)]
    assert stage.main(args) == 0 and stage.main([*args, "--check"]) == 0  # current: nothing stale
    assert "(stale)" not in (tmp_path / "results" / "table.md").read_text()
    train = params_dir / "train.yaml"
    train.write_text(train.read_text().replace("  lr: 0.01 ", "  lr: 0.02 ", 1))
    datasets = params_dir / "datasets.yaml"
    datasets.write_text(datasets.read_text().replace("  epochs: 60 ", "  epochs: 61 ", 1))
    capsys.readouterr()
    assert stage.main(args) == 0
    table = _squeezed((tmp_path / "results" / "table.md").read_text())
    voc = [line for line in table.splitlines() if "ResNet50 (OS=8" in line][0]  # the first section is VOC
    assert "LR/POLICY/BS/EPOCH: 0.01/poly/16/60" in voc and "77.90% (stale)" in voc  # its own recipe, marked
    fresh = [line for line in table.splitlines() if "ResNet101 (OS=8" in line][0]
    assert "0.02/poly/16/61" in fresh and "| - |" in fresh  # not run yet: today's recipe
    assert "(stale): trained under other params" in table
    summary = list(csv.DictReader((tmp_path / "results" / "summary.csv").open()))
    assert [row["stale"] for row in summary[:3]] == ["True", "True", "False"]
    assert stage.main([*args, "--check"]) == 1
    err = capsys.readouterr().err
    assert "results/voc-r50-os8: trained under other params" in err and "results/voc-r50-os16" in err
    assert "train.lr: 0.01 -> 0.02 (training record)" in err and "data.epochs: 60 -> 61 (training record)" in err


def test_a_row_is_its_metrics_json_alone_and_names_the_record_a_change_belongs_to(
        tmp_path: Path, params_dir: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """A retraining rewrites config.yaml when it starts: the row keeps the recipe of its metrics.json. An
    evaluation setting marks the run stale as an evaluation-record change; a naming setting changes nothing."""
    (tmp_path / "README.md").write_text(f"{BEGIN}\n{END}\n{COSTS}")
    _record_run(tmp_path, params_dir, "voc-r50-os8", 77.9)
    monkeypatch.chdir(tmp_path)
    args = ["--preset", "full", "--params", str(params_dir)]
    (tmp_path / "results" / "voc-r50-os8" / "config.yaml").write_text("train: {lr: 0.5}\n")  # a retraining began
    presets = params_dir / "presets.yaml"
    presets.write_text(presets.read_text().replace("experiment: deeplabv3plus ", "experiment: renamed ", 1))
    assert stage.main(args) == 0 and stage.main([*args, "--check"]) == 0
    voc = [line for line in _squeezed((tmp_path / "results" / "table.md").read_text()).splitlines()
           if "ResNet50 (OS=8" in line][0]
    assert "0.01/poly/16/60" in voc and "77.90%" in voc and "(stale)" not in voc
    evaluate = params_dir / "evaluate.yaml"
    evaluate.write_text(evaluate.read_text().replace("precision: fp32", "precision: bf16", 1))
    assert stage.main(args) == 0
    capsys.readouterr()
    assert stage.main([*args, "--check"]) == 1
    err = capsys.readouterr().err
    assert "evaluate.precision: fp32 -> bf16 (evaluation record)" in err and "training record" not in err
