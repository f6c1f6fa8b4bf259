"""The results tables: every cell's measured mIoU beside its reference, in the seed table's format.

One section per dataset (PASCAL VOC, ADE20k, CityScapes), one row per cell, columns as in the seed table
(Backbone, Crop Size, Schedule, Train/Eval Set, mIoU, Download) plus the reference mIoU and the difference.
Every value comes from the validated params and the cells' ``metrics.json``; a cell without metrics shows
"-". The same markdown goes into ``<results_dir>/table.md`` and, for the full preset only, between the
markers in README.md (with links made relative to the README).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping

from deeplab.config import DATASETS, Params

BEGIN = "<!-- results-table:begin -->"
END = "<!-- results-table:end -->"
BACKBONE_NAMES = {"r50": "ResNet50", "r101": "ResNet101"}
PRETRAINED_NAMES = {"imagenet": "ImageNet", "none": "None"}
POLICY = "poly"  # the recipe's only learning-rate policy (train.yaml: poly_power, min_lr)
HEADER = ("Backbone", "Crop Size", "Schedule", "Train/Eval Set", "mIoU", "Reference", "Diff", "Download")


class TableError(ValueError):
    """A metrics file or README.md cannot be used; the message names the file and the fix."""


def read_metrics(root: Path, params: Params, preset: str) -> dict[str, dict[str, Any] | None]:
    """Each cell's ``metrics.json`` under ``preset`` (None where the cell has not been evaluated yet)."""
    found: dict[str, dict[str, Any] | None] = {}
    for cell_id in params.cells:
        path = root / params.preset(preset).cell_dir(cell_id) / "metrics.json"
        if not path.is_file():
            found[cell_id] = None
            continue
        try:
            found[cell_id] = json.loads(path.read_text())
        except json.JSONDecodeError as error:
            raise TableError(f"{path}: not valid JSON ({error}); rerun the evaluate stage of {cell_id}") from error
        miou_percent(found[cell_id], path)  # fail here, naming the file, rather than mid-render
    return found


def miou_percent(metrics: Mapping[str, Any], where: Path | str = "metrics.json") -> float:
    """The single-scale mIoU of a metrics.json, in percent (as deeplab.metrics computes it)."""
    value = metrics.get("mIoU")
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not 0 <= value <= 100:
        raise TableError(f"{where}: 'mIoU' must be a percentage in [0, 100], got {value!r}; "
                         f"rerun the evaluate stage")
    return float(value)


def render(params: Params, preset: str, metrics: Mapping[str, Mapping[str, Any] | None],
           link_base: str) -> str:
    """Markdown of the three sections. ``link_base``: path from the table's file to the results folder."""
    sections = []
    for dataset in DATASETS:
        recipe = params.dataset(dataset, preset)
        rows = [_row(params, preset, cell_id, metrics.get(cell_id), link_base)
                for cell_id, cell in params.cells.items() if cell.dataset == dataset]
        lines = [f"#### {recipe.title}", "", _line(HEADER), _line((":-:",) * len(HEADER))]
        sections.append("\n".join(lines + [_line(row) for row in rows]))
    return "\n\n".join(sections) + "\n"


def _row(params: Params, preset: str, cell_id: str, metrics: Mapping[str, Any] | None,
         link_base: str) -> tuple[str, ...]:
    config = params.resolve(cell_id, preset)
    cell, data = config.cell, config.data
    backbone = (f"{BACKBONE_NAMES[cell.backbone]} (OS={cell.output_stride}, "
                f"PRE={PRETRAINED_NAMES[config.model.pretrained]})")
    crop = f"{data.crop_size[0]}x{data.crop_size[1]}"
    schedule = f"LR/POLICY/BS/EPOCH: {_number(config.train.lr)}/{POLICY}/{data.batch_size}/{data.epochs}"
    sets = f"{data.train_set_name}/{data.val_set_name}"
    reference = f"{cell.reference_miou:.2f}%"
    if metrics is None:
        return backbone, crop, schedule, sets, "-", reference, "-", "-"
    miou = miou_percent(metrics, cell_id)
    base = f"{link_base}/{cell_id}" if link_base else cell_id
    download = " &#124; ".join(f"[{name}]({base}/{file})" for name, file in
                               (("cfg", "config.yaml"), ("model", "model.pt"), ("log", "train_log.csv")))
    diff = miou - cell.reference_miou
    return backbone, crop, schedule, sets, f"{miou:.2f}%", reference, f"{diff:+.2f}", download


def _line(cells: tuple[str, ...]) -> str:
    return "| " + " | ".join(cells) + " |"


def _number(value: float) -> str:
    """0.01 stays 0.01 (not 1e-02); integers lose their .0."""
    return str(int(value)) if float(value).is_integer() else f"{value:g}" if value >= 1e-4 else repr(value)


def replace_block(text: str, block: str, where: Path | str = "README.md") -> str:
    """``text`` with everything between the results-table markers replaced by ``block``."""
    if text.count(BEGIN) != 1 or text.count(END) != 1 or text.index(BEGIN) > text.index(END):
        raise TableError(f"{where}: needs exactly one '{BEGIN}' line followed by one '{END}' line "
                         f"around the results tables; put them back where the tables belong")
    head, rest = text.split(BEGIN)
    _, tail = rest.split(END)
    return f"{head}{BEGIN}\n{block}{END}{tail}"
