"""The results tables: every cell's measured mIoU beside its reference, in the seed table's format.

One pandas DataFrame holds a row per cell (the recipe from params, the numbers from its ``metrics.json``,
the GPU-hours from its training log); the markdown tables are that frame rendered with
``DataFrame.to_markdown`` (tabulate), one section per dataset with the seed table's columns (Backbone,
Crop Size, Schedule, Train/Eval Set, mIoU, Download) plus the reference mIoU and the difference. The same
frame is written as ``summary.csv`` (one row per cell) and its per-class IoU as ``per_class_iou.csv``
(one row per run and class). A cell without metrics shows "-" in markdown and empty fields in the CSVs.
``table.html`` is the markdown rendered (markdown-it-py) for pages that show HTML, the Snakemake report's.

Every column of a row comes from its run's own ``metrics.json`` (the resolved config it was scored under,
its two records and their digests), not from today's params (which only fill the rows of cells not yet
run) nor from config.yaml (which a retraining rewrites when it starts). A run whose training or evaluation
record differs from what params/ now resolve to is *stale*: its mIoU carries "(stale)", summary.csv says
so, and ``python -m pipeline.table --check`` names it with each setting that differs and the record it
belongs to. Nothing is relabelled.

A cell trained with several seeds (``presets.<preset>.seeds``) shows the mean ± the sample standard
deviation over its finished seeds and their number, ``77.90 ± 0.31% (n=3)``, or ``(n=2 of 3)`` while
some still run; the difference to the reference is that of the mean.
"""
from __future__ import annotations

import csv
import json
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import pandas as pd
from markdown_it import MarkdownIt

from deeplab.config import DATASETS, CellConfig, Params
from deeplab.environment import summary
from deeplab.errors import PipelineError
from deeplab.paths import CellFiles

BEGIN = "<!-- results-table:begin -->"
END = "<!-- results-table:end -->"
BACKBONE_NAMES = {"r50": "ResNet50", "r101": "ResNet101"}
PRETRAINED_NAMES = {"imagenet": "ImageNet", "none": "None"}
POLICY = "poly"  # the recipe's only learning-rate policy (train.yaml: poly_power, min_lr)
STALE_NOTE = ("(stale): trained under other params than params/ gives now; `python -m pipeline.table --preset "
              "{preset} --check` lists what differs. Retrain the cell, or restore the params it was trained with.\n\n")
BATCHNORM_MARK, PRECISION_MARK = "†", "‡"
BATCHNORM_NOTE = ("{mark} BatchNorm normalised over fewer images per statistic than the reference's (its whole batch, "
                  "SyncBatchNorm across its GPUs): {runs}. Gradient accumulation keeps the loss's gradient, not these "
                  "statistics, so such a run can land below the reference's mIoU (README, \"BatchNorm's batch\").")
PRECISION_NOTE = ("{mark} Scored at another precision than the reference's fp32 (evaluate.precision): {runs}.")
HEADER = ("Backbone", "Crop Size", "Schedule", "Train/Eval Set", "mIoU", "Reference", "Diff", "Download")
OWN_HEADER = tuple(column for column in HEADER if column not in ("Reference", "Diff"))  # a dataset of your own
SUMMARY_COLUMNS = ("cell", "dataset", "backbone", "output_stride", "mIoU", "mIoU_std", "aAcc", "mAcc",
                   "reference_mIoU", "diff", "seeds", "seeds_planned", "gpu_hours", "stale", "batchnorm_images",
                   "reference_batchnorm_images", "eval_precision")


@dataclass(frozen=True)
class Finished:
    """One evaluated run of a cell: its metrics.json, its files and seed (None: unknown, e.g. in a test) and
    what params/ now give differently from its records (stale if any)."""

    doc: Mapping[str, Any]
    files: CellFiles | None = None
    seed: int | None = None
    changes: tuple[str, ...] = ()

    @property
    def config(self) -> Mapping[str, Any] | None:
        """The resolved config the run was scored under (its metrics.json's; None in an older file)."""
        return self.doc.get("config")

    @property
    def stale(self) -> bool:
        return bool(self.changes)

    @property
    def batchnorm_images(self) -> int | None:
        """Images per BatchNorm statistic in its training (None: not recorded, e.g. an older metrics.json)."""
        return self.doc.get("batchnorm_images")

    @property
    def small_batchnorm(self) -> bool:
        """BatchNorm saw fewer images per statistic than the reference's."""
        reference = self.doc.get("reference_batchnorm_images")
        return None not in (self.batchnorm_images, reference) and self.batchnorm_images < reference

    @property
    def precision(self) -> str:
        return str(self.doc.get("precision", ""))

    @property
    def not_fp32(self) -> bool:
        """Scored at another precision than the reference's fp32 (unknown precision counts as fp32)."""
        return bool(self.precision) and not self.precision.startswith("fp32")


Metrics = Mapping[str, list[Finished]]  # cell -> its evaluated runs (one per seed finished so far)


class TableError(PipelineError, ValueError):
    """A metrics file or README.md cannot be used; the message names the file and the fix."""


def read_metrics(root: Path, params: Params, preset: str) -> dict[str, list[Finished]]:
    """Each cell's finished runs under ``preset``: the ``metrics.json`` of each of its seeds evaluated so far."""
    found: dict[str, list[Finished]] = {cell_id: [] for cell_id in params.cells}
    for run in params.runs(preset):
        path = root / run.files.metrics
        if not path.is_file():
            continue
        try:
            doc = json.loads(path.read_text())
        except json.JSONDecodeError as error:
            raise TableError(f"{path}: not valid JSON ({error}); rerun the evaluate stage of {run.run_name}") from error
        miou_percent(doc, path)  # fail here, naming the file, rather than mid-render
        found[run.cell.id].append(Finished(doc, run.files, run.train.seed, tuple(changes(doc, run))))
    return found


def changes(doc: Mapping[str, Any], run: CellConfig) -> list[str]:
    """What params/ now give differently from the records a run was trained and scored under, each setting
    with its record (nothing when both digests in its metrics.json are today's; a metrics.json with no digest
    at all, e.g. written by hand, cannot be judged and is taken as is)."""
    provenance = doc.get("provenance", {})
    saved = (provenance.get("training_digest"), provenance.get("evaluation_digest"))
    if saved == (run.training_digest(), run.evaluation_digest()) or \
            (saved == (None, None) and "config_digest" not in provenance):
        return []
    return run.changes_since(doc.get("records")) or ["its record digests differ from those of params/ (same "
                                                     "settings: a change in how the records are computed)"]


def miou_percent(metrics: Mapping[str, Any], where: Path | str) -> float:
    """The single-scale mIoU of a metrics.json, in percent (as deeplab.metrics computes it)."""
    value = metrics.get("mIoU")
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not 0 <= value <= 100:
        raise TableError(f"{where}: 'mIoU' must be a percentage in [0, 100], got {value!r}; "
                         f"rerun the evaluate stage")
    return float(value)


def measured_gpu_hours(train_log: Path, gpus: int) -> float | None:
    """Measured training cost: the logged windows' wall time (images / images per s) x GPUs, in hours;
    None when the cell has no training log (not trained here, or trained before logs had these columns)."""
    if not train_log.is_file():
        return None
    with train_log.open() as f:
        rows = list(csv.DictReader(f))
    try:
        seconds = sum(float(r["images"]) / float(r["images_per_s"]) for r in rows if float(r["images_per_s"]) > 0)
    except (KeyError, ValueError) as error:
        raise TableError(f"{train_log}: unreadable training log ({error}); rerun the train stage") from error
    return seconds * gpus / 3600 if rows else None


def cell_frame(params: Params, preset: str, metrics: Metrics, root: Path = Path(".")) -> pd.DataFrame:
    """One row per cell: what the table shows and what summary.csv holds (NaN where not yet measured)."""
    rows = []
    for cell_id, cell in params.cells.items():
        runs = metrics.get(cell_id, [])
        mious = [miou_percent(run.doc, cell_id) for run in runs]
        mean = lambda key: statistics.fmean(run.doc[key] for run in runs) if runs else None  # noqa: E731
        hours = [measured_gpu_hours(root / run.files.train_log, cell.gpus) for run in runs if run.files is not None]
        rows.append({"cell": cell_id, "dataset": cell.dataset, "backbone": cell.backbone,
                     "output_stride": cell.output_stride, "mIoU": mean("mIoU"),
                     "mIoU_std": statistics.stdev(mious) if len(mious) > 1 else None,
                     "aAcc": mean("aAcc"), "mAcc": mean("mAcc"), "reference_mIoU": cell.reference_miou,
                     "diff": mean("mIoU") - cell.reference_miou if runs and cell.reference_miou is not None
                     else None, "seeds": len(runs),
                     "seeds_planned": len(params.seeds(cell_id, preset)),
                     "gpu_hours": sum(hours) if hours and None not in hours else None,
                     "stale": any(run.stale for run in runs),
                     "batchnorm_images": min((r.batchnorm_images for r in runs if r.batchnorm_images is not None),
                                             default=None),
                     "reference_batchnorm_images": next((r.doc.get("reference_batchnorm_images") for r in runs), None),
                     "eval_precision": ", ".join(sorted({r.precision for r in runs if r.precision})) or None})
    return pd.DataFrame(rows, columns=list(SUMMARY_COLUMNS))


def seeds_json(row: Any) -> str:
    """A :func:`cell_frame` row of a cell with several seeds as the JSON of its seeds.json."""
    measured = row.seeds > 0
    doc = {"seeds": int(row.seeds), **{f"{key}_mean": round(getattr(row, key), 4) if measured else None
                                          for key in ("mIoU", "aAcc", "mAcc")},
           "mIoU_std": round(row.mIoU_std, 4) if row.seeds > 1 else None}
    return json.dumps(doc, indent=2) + "\n"


def to_csv(frame: pd.DataFrame) -> str:
    """CSV text of a frame: numbers with 4 decimals, empty fields where nothing was measured."""
    return frame.to_csv(index=False, float_format="%.4f", lineterminator="\n")


def per_class_frame(params: Params, metrics: Metrics) -> pd.DataFrame:
    """One row per (evaluated run, class): the per-class IoU behind each mIoU (empty: class absent)."""
    rows = [{"cell": cell_id, "seed": run.seed, "dataset": params.cells[cell_id].dataset,
             "class_index": index, "class": name, "iou": iou}
            for cell_id, runs in metrics.items() for run in runs
            for index, (name, iou) in enumerate(run.doc.get("per_class_iou", {}).items())]
    return pd.DataFrame(rows, columns=["cell", "seed", "dataset", "class_index", "class", "iou"])


def render(params: Params, preset: str, metrics: Metrics, link_base: str, root: Path = Path(".")) -> str:
    """Markdown of the paper's three sections, then one per dataset of your own that has cells (without the
    Reference and Diff columns: the paper has no number for it). ``link_base``: path from the table's file to
    the results folder."""
    frame = cell_frame(params, preset, metrics, root)
    sections = []
    own = [name for name in params.own_datasets if (frame["dataset"] == name).any()]
    for dataset in (*DATASETS, *own):
        rows = frame[frame["dataset"] == dataset]
        header = HEADER if dataset in DATASETS else OWN_HEADER
        shown = pd.DataFrame([_row(params, preset, row, metrics.get(row.cell, []), link_base)
                              for row in rows.itertuples()], columns=list(HEADER))[list(header)]
        table = shown.to_markdown(index=False, tablefmt="pipe", colalign=("center",) * len(header),
                                  disable_numparse=True)
        where = measured_on([run for cell in rows["cell"] for run in metrics.get(cell, [])])
        note = f"\n\n{STALE_NOTE.format(preset=preset).strip()}" if rows["stale"].any() else ""
        note += footnotes([(cell, run) for cell in rows["cell"] for run in metrics.get(cell, [])])
        sections.append(f"#### {params.dataset(dataset, preset).title}\n\n{where}{table}{note}")
    return "\n\n".join(sections) + "\n"


HTML_STYLE = (".results-table table{border-collapse:collapse;margin:0.5em 0 1.5em}"
              ".results-table th,.results-table td{border:1px solid #bbb;padding:0.25em 0.6em}"
              ".results-table th{background:#eee}")


def to_html(markdown: str, note: str) -> str:
    """The tables' ``markdown`` (no raw HTML in it: it is escaped) as one HTML fragment, headed by the
    comment ``note``: tables, headings and links, styled under its own class only."""
    body = MarkdownIt("commonmark", {"html": False}).enable("table").render(markdown)
    return f"<!-- {note} -->\n<div class=\"results-table\">\n<style>{HTML_STYLE}</style>\n{body}</div>\n"


def footnotes(runs: list[tuple[str, Finished]]) -> str:
    """The notes under a section for its runs marked † (BatchNorm below the reference's) or ‡ (not fp32)."""
    first = {}
    for cell, run in runs:  # a cell's first run is its own folder; further seeds are named as their folders
        first.setdefault(cell, run)

    def name(cell: str, run: Finished) -> str:
        return cell if run is first[cell] else f"{cell}/seed{run.seed}"
    small = [f"{name(cell, run)} {run.batchnorm_images} (reference {run.doc['reference_batchnorm_images']})"
             for cell, run in runs if run.small_batchnorm]
    other = [f"{name(cell, run)} {run.precision}" for cell, run in runs if run.not_fp32]
    notes = ([BATCHNORM_NOTE.format(mark=BATCHNORM_MARK, runs="; ".join(small))] if small else []) + \
        ([PRECISION_NOTE.format(mark=PRECISION_MARK, runs="; ".join(other))] if other else [])
    return "".join(f"\n\n{note}" for note in notes)


def measured_on(runs: list[Finished]) -> str:
    """'Measured on: <GPUs>, torch <v>, cuDNN <v>.' for a section's finished runs (their last training
    machine), or which machines when they disagree; nothing when no run recorded one."""
    machines = sorted({summary(run.doc["environment"]["training"][-1]) for run in runs
                       if run.doc.get("environment", {}).get("training")})
    if not machines:
        return ""
    if len(machines) == 1:
        return f"Measured on: {machines[0]}.\n\n"
    return f"Measured on: cells disagree ({'; '.join(machines)}).\n\n"


def _row(params: Params, preset: str, row: Any, runs: list[Finished], link_base: str) -> tuple[str, ...]:
    config = params.resolve(row.cell, preset)
    cell = config.cell
    scored = next((run.config for run in runs if run.config is not None), None)
    recipe = scored or config.to_dict()  # the run's own recipe; today's params only for a cell not yet run
    data, model = recipe["data"], recipe["model"]
    pretrained = PRETRAINED_NAMES[model["pretrained"]]
    if recipe["preset"]["synthetic"] and model["pretrained"] == "imagenet":
        pretrained = "Synthetic"  # the synthetic presets' backbone checkpoint is random, not ImageNet
    start = recipe["cell"].get("init", "imagenet")
    if start != "imagenet":
        pretrained = start  # fine-tuned from that cell's trained model
    backbone = f"{BACKBONE_NAMES[cell.backbone]} (OS={cell.output_stride}, PRE={pretrained})"
    crop = f"{data['crop_size'][0]}x{data['crop_size'][1]}"
    schedule = f"LR/POLICY/BS/EPOCH: {_number(recipe['train']['lr'])}/{POLICY}/{data['batch_size']}/{data['epochs']}"
    sets = f"{data['train_set_name']}/{data['val_set_name']}"
    stale = (" (stale)" if row.stale else "") + (BATCHNORM_MARK if any(r.small_batchnorm for r in runs) else "") \
        + (PRECISION_MARK if any(r.not_fp32 for r in runs) else "")
    reference = "-" if cell.reference_miou is None else f"{cell.reference_miou:.2f}%"
    if pd.isna(row.mIoU):
        return backbone, crop, schedule, sets, "-", reference, "-", "-"
    files = runs[0].files or config.preset.paths.cell(row.cell)
    download = " &#124; ".join(f"[{name}]({_link(path, config.preset.results_dir, link_base)})" for name, path
                               in (("cfg", files.config), ("model", files.model), ("log", files.train_log)))
    diff = "-" if pd.isna(row.diff) else f"{row.diff:+.2f}"
    if row.seeds_planned == 1:
        return backbone, crop, schedule, sets, f"{row.mIoU:.2f}%{stale}", reference, diff, download
    spread = f" ± {row.mIoU_std:.2f}" if row.seeds > 1 else ""
    count = f"n={row.seeds}" + (f" of {row.seeds_planned}" if row.seeds < row.seeds_planned else "")
    return (backbone, crop, schedule, sets, f"{row.mIoU:.2f}{spread}% ({count}){stale}", reference,
            diff if pd.isna(row.diff) else f"{diff}{spread}", download)


def _link(path: str, results_dir: str, link_base: str) -> str:
    """``path`` (under the results folder) as a link from a file whose path to that folder is ``link_base``."""
    relative = Path(path).relative_to(results_dir).as_posix()
    return f"{link_base}/{relative}" if link_base else relative


def _number(value: float) -> str:
    """0.01 stays 0.01 (not 1e-02); integers lose their .0."""
    return str(int(value)) if float(value).is_integer() else f"{value:g}" if value >= 1e-4 else repr(value)


def replace_block(text: str, block: str, where: Path | str = "README.md", begin: str = BEGIN, end: str = END) -> str:
    """``text`` with everything between the ``begin`` and ``end`` markers (the results tables' by default)
    replaced by ``block``."""
    if text.count(begin) != 1 or text.count(end) != 1 or text.index(begin) > text.index(end):
        raise TableError(f"{where}: needs exactly one '{begin}' line followed by one '{end}' line "
                         f"around the generated table; put them back where the table belongs")
    head, rest = text.split(begin)
    _, tail = rest.split(end)
    return f"{head}{begin}\n{block}{end}{tail}"
