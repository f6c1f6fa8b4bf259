"""The results-table renderer against golden files, and the table stage's files and errors.

Regenerate the golden files after an intended format change with ``UPDATE_GOLDEN=1 pytest tests/test_table.py``
and review the diff.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from deeplab.config import load_params
from deeplab.table import BEGIN, END, TableError, read_metrics, render, replace_block
from pipeline import table as stage

GOLDEN = Path(__file__).resolve().parent / "golden"
# Three cells evaluated (above, below and at the reference), the other nine not yet: "-".
MEASURED = {"voc-r50-os8": 77.9012, "ade20k-r101-os16": 44.0, "cityscapes-r50-os16": 79.73}


def _metrics(miou: float) -> dict[str, object]:
    return {"mIoU": miou, "aAcc": 95.1, "mAcc": 85.2, "iou": [miou] * 3, "cell": "x"}


def _check_golden(name: str, text: str) -> None:
    path = GOLDEN / name
    if os.environ.get("UPDATE_GOLDEN"):
        path.write_text(text)
    assert text == path.read_text(), f"{name} differs from the golden file; see the module docstring"


def test_table_md_matches_golden(params_dir: Path) -> None:
    params = load_params(params_dir)
    metrics = {cell: (_metrics(MEASURED[cell]) if cell in MEASURED else None) for cell in params.cells}
    _check_golden("table.md", render(params, "full", metrics, link_base=""))


def test_readme_block_matches_golden_with_links_from_the_root(params_dir: Path) -> None:
    params = load_params(params_dir)
    metrics = {cell: _metrics(MEASURED[cell]) for cell in MEASURED}
    _check_golden("readme_block.md", render(params, "full", metrics, link_base="results"))


def test_values_come_from_params(params_dir: Path) -> None:
    """Change the recipe and the reference: the table follows, nothing is typed into the renderer."""
    path = params_dir / "datasets.yaml"
    path.write_text(path.read_text().replace("  epochs: 60 ", "  epochs: 61 ").replace("title: PASCAL VOC", "title: VOC12"))
    path = params_dir / "cells.yaml"
    path.write_text(path.read_text().replace("reference_miou: 77.43", "reference_miou: 70.00"))
    text = render(load_params(params_dir), "full", {"voc-r50-os8": _metrics(71.5)}, link_base="")
    assert "#### VOC12" in text and "0.01/poly/16/61" in text
    assert "| 71.50% | 70.00% | +1.50 |" in text


def test_smoke_preset_shows_its_own_recipe(params_dir: Path) -> None:
    params = load_params(params_dir)
    text = render(params, "smoke", {}, link_base="")
    for dataset in ("voc", "cityscapes"):
        recipe = params.dataset(dataset, "smoke")
        assert recipe.crop_size != params.dataset(dataset, "full").crop_size  # the preset's own crop...
        height, width = recipe.crop_size
        assert (f"ResNet50 (OS=8, PRE=None) | {height}x{width} | "  # ...shown (h x w), trained from scratch
                f"LR/POLICY/BS/EPOCH: 0.01/poly/{recipe.batch_size}/{recipe.epochs}") in text


def test_stage_writes_table_and_readme_block_for_full_only(tmp_path: Path, params_dir: Path) -> None:
    (tmp_path / "README.md").write_text(f"# title\n\n{BEGIN}\nold\n{END}\n\nafter\n")
    cell_dir = tmp_path / "results" / "voc-r50-os8"
    cell_dir.mkdir(parents=True)
    (cell_dir / "metrics.json").write_text(json.dumps(_metrics(77.9012)))
    files = stage.expected_files(params_dir, "full", root=tmp_path)
    assert set(files) == {tmp_path / "results" / "table.md", tmp_path / "README.md"}
    readme = files[tmp_path / "README.md"]
    assert readme.startswith("# title\n\n" + BEGIN + "\n#### PASCAL VOC") and readme.endswith(f"{END}\n\nafter\n")
    assert "[cfg](results/voc-r50-os8/config.yaml)" in readme and "77.90%" in readme
    assert "[cfg](voc-r50-os8/config.yaml)" in files[tmp_path / "results" / "table.md"]
    smoke = stage.expected_files(params_dir, "smoke", root=tmp_path)
    assert set(smoke) == {tmp_path / "results" / "smoke" / "table.md"}  # never the README


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
