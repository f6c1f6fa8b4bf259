"""The validated parameters of the pipeline: ``params/*.yaml`` in, frozen typed objects out.

Everything is checked once, here, at the edge: an unknown key, a wrong type or an impossible value
raises :class:`ParamsError` naming the file, the key path and the line. Code inside the library only
ever sees the frozen dataclasses below. ``load_params(params_dir).resolve(cell_id, preset)`` gives the
full recipe of one table cell under one preset.
"""
from __future__ import annotations

import collections.abc
import dataclasses
import hashlib
import json
import math
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Mapping

import yaml

from deeplab.errors import PipelineError
from deeplab.paths import CellFiles, Paths, run_key

DATASETS = ("voc", "ade20k", "cityscapes")  # the paper's: params/datasets.yaml must define them (layout: official)
# What a dataset of your own takes from VOC's recipe (under each preset, with its overrides) unless its entry
# says otherwise, and the defaults of its other keys: a folder and its class count are all it needs.
FOLDER_FROM_VOC = ("base_scale", "ratio_range", "crop_size", "cat_max_ratio", "batch_size", "epochs", "eval_scale")
FOLDER_DEFAULTS = {"train_split": "train", "val_split": "val", "train_set_name": "train", "val_set_name": "val",
                   "expected_counts": None, "train_arrays": False}
BACKBONES = ("r50", "r101")
# The records. Every setting of a resolved config decides one thing, or nothing: the prepared data of its
# dataset (the preparation record, one per dataset and preset), the trained weights (the training record) or
# the scores of given weights (the evaluation record, which also holds the whole training record). Each record
# is hashed and written as a small file (pipeline.records) that the DAG's jobs depend on, under Snakemake and
# DVC alike; the model file's check in load_trained, the checkpoint's on resume and the table's stale mark use
# the same digests, so an edit reruns exactly the jobs whose output it can change. Every field of every
# section is listed with its kind and, as a field of its own, why (tests/test_records.py fails on an unlisted
# field and on a kind that is not one of the four).
PREPARATION, TRAINING, EVALUATION, NONE = "preparation", "training", "evaluation", "none"
KINDS = (PREPARATION, TRAINING, EVALUATION, NONE)


@dataclass(frozen=True)
class Setting:
    """How one setting is recorded: ``kind`` (one of KINDS) and why."""

    kind: Literal["preparation", "training", "evaluation", "none"]
    why: str


PIXELS = Setting(PREPARATION, "decides which pixels and labels the prepared dataset holds")
WEIGHTS = Setting(TRAINING, "decides the trained weights")
SCORES = Setting(EVALUATION, "decides the scores of given weights")
NAMES = Setting(NONE, "names, files or registers the result")
SPEED = Setting(NONE, "how fast or how often, not what, is computed")
SPREAD = Setting(NONE, "how a batch is spread over GPUs and forward passes: the gradient is the same, and the "
                       "images per BatchNorm statistic it gives are resolved when the run starts and kept with the "
                       "run (checkpoint, model.pt, metrics.json, MLflow), where a resume holds them to it")
CHECK = Setting(NONE, "a check that stops a stage; what it writes is unchanged")
RECORDS: dict[str, dict[str, Setting]] = {
    "cell": {"id": NAMES, "dataset": WEIGHTS, "backbone": WEIGHTS, "output_stride": WEIGHTS,
             "reference_miou": Setting(NONE, "the paper's number the result is compared with"),
             "in_seed_table": NAMES, "gpus": SPREAD,
             "init": Setting(TRAINING, "the model training starts from (its parent's training digest is recorded "
                                       "with it)")},
    "data": {"title": NAMES, "num_classes": WEIGHTS, "train_split": WEIGHTS, "val_split": SCORES,
             "train_set_name": NAMES, "val_set_name": NAMES, "expected_counts": CHECK,
             "base_scale": WEIGHTS, "ratio_range": WEIGHTS, "crop_size": WEIGHTS, "cat_max_ratio": WEIGHTS,
             "batch_size": WEIGHTS, "epochs": WEIGHTS, "eval_scale": SCORES,
             "train_arrays": Setting(NONE, "how the prepared pixels are stored, not which pixels"),
             **dict.fromkeys(("layout", "source", "label_encoding", "label_values", "val_share", "split_seed",
                              "ignore_colors", "exif"), PIXELS)},
    "model": dict.fromkeys(("stem", "pretrained", "backbone_width", "aspp_channels", "low_level_channels",
                            "decoder_channels", "dropout", "aux_channels"), WEIGHTS),
    "train": {**dict.fromkeys(("lr", "min_lr", "poly_power", "momentum", "weight_decay", "aux_weight", "seed",
                               "reference_replicas", "crop_tries", "flip_prob", "brightness_delta", "contrast_range",
                               "saturation_range", "hue_delta", "mean", "std"), WEIGHTS),
              "precision": Setting(TRAINING, "the numerics of the step (auto is resolved when the run starts and "
                                             "kept with the run, where a resume holds it to it)"),
              "device": Setting(NONE, "where it computes: a GPU's result is the recipe's, wherever it runs"),
              "channels_last": SPEED, "deterministic": SPEED, "compile": SPEED, "checkpoint_every": SPEED,
              "log_every": SPEED, "system_metrics_every_s": SPEED, "val_every": SPEED, "workers": SPEED,
              "max_micro_batch": SPREAD, "stop_when_diverging": CHECK},
    "evaluate": {"ms_ratios": SCORES, "ms_flip": SCORES, "max_workers": SPEED, "precision": SCORES},
    "preset": {"name": NAMES, "data_dir": NAMES, "results_dir": NAMES, "experiment": NAMES,
               "synthetic": Setting(PREPARATION, "which archives are prepared: the official ones or built ones"),
               "expect_official_counts": CHECK, "readme": NAMES, "register_models": NAMES,
               "schedule_must_match_reference": CHECK,
               "seeds": Setting(NONE, "which runs exist; each run's own seed is train.seed in its record"),
               "overrides": Setting(NONE, "applied to the sections above, whose settings are classified there")},
}
# Settings added after runs were recorded: at this value (what every run before them trained under) they stay
# out of the record, so adding them re-runs nothing that was already done; any other value is recorded.
ADDED_LATER = {("cell", "init"): "imagenet", ("data", "ignore_colors"): None, ("data", "exif"): None}
PARAM_FILES = ("cells.yaml", "datasets.yaml", "model.yaml", "train.yaml", "evaluate.yaml", "presets.yaml")


class ParamsError(PipelineError, ValueError):
    """A parameter file is wrong; the message names the file, the key and the line."""


class TooFewImages(PipelineError, ValueError):
    """A training split smaller than one batch: no iteration could be drawn."""


def too_few_to_train(name: str, count: int, batch: int, where: str) -> str:
    """The line that refuses a training split smaller than one batch (prepare, the doctor, pipeline.folder,
    and training itself, for any dataset)."""
    return (f"{name}: {count} training image(s), fewer than one batch of {batch} ({where}): add images, or "
            f"train with a batch of {count} or fewer (batch_size in its entry of params/datasets.yaml; a dataset "
            "of your own otherwise takes VOC's)")


class UnknownName(PipelineError, KeyError):
    """A cell, preset or dataset name that params/ does not define; the message lists the known ones."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


@dataclass(frozen=True)
class DatasetRecipe:
    title: str
    num_classes: int
    train_split: str
    val_split: str
    train_set_name: str
    val_set_name: str
    expected_counts: Mapping[str, int] | None  # None: a dataset of your own, whose sizes are its own
    base_scale: tuple[int, int]
    ratio_range: tuple[float, float]
    crop_size: tuple[int, int]
    cat_max_ratio: float
    batch_size: int
    epochs: int
    eval_scale: tuple[int, int] | None
    train_arrays: bool  # also keep the train split as uint8 arrays read by memory map (deeplab.data.arrays)
    layout: Literal["official", "folder"] = "official"  # folder: your own data (deeplab.data.folder)
    source: str | None = None  # folder layout: the folder (relative to the project root, or absolute)
    label_encoding: Literal["index", "color"] = "index"  # folder layout: how its masks are read
    label_values: Mapping[int, int] | None = None  # folder layout: mask value -> class (255 = ignore)
    val_share: float = 0.1  # folder layout without splits/: the val share of the drawn split
    split_seed: int = 0  # and its seed
    ignore_colors: tuple[tuple[int, int, int], ...] | None = None  # folder layout, color masks: colours = ignore
    exif: Literal["apply", "ignore"] | None = None  # folder layout: whether masks follow the images' EXIF
    # orientation (None: each image's size decides, and prepare asks where it cannot)

    @property
    def folder(self) -> bool:
        return self.layout == "folder"

    def to_dict(self) -> dict[str, Any]:
        """Plain, JSON-ready form."""
        return _plain(self)

    def check(self) -> dict[str, str]:
        problems = {}
        if self.folder and not self.source:
            problems["source"] = "a dataset of layout folder needs its folder: source: path/to/folder"
        if not self.folder:
            for key in ("source", "label_values", "ignore_colors", "exif"):
                if getattr(self, key) is not None:
                    problems[key] = "only a dataset of layout: folder reads this"
        if self.label_values is not None:
            bad = [f"{k}: {v}" for k, v in self.label_values.items()
                   if not isinstance(k, int) or not 0 <= k <= 65535 or not (0 <= v < self.num_classes or v == 255)]
            if bad:
                problems["label_values"] = (f"{bad[0]}: each entry maps a mask value (0..65535) to a class index "
                                            f"0..{self.num_classes - 1} or 255 (ignore)")
        if self.label_encoding == "color" and self.label_values is not None:
            problems["label_values"] = ("maps the values of single-channel masks, and under label_encoding: color "
                                        "a mask's classes are classes.txt's colours: remove it (a colour that means "
                                        "ignore goes in ignore_colors)")
        if self.ignore_colors is not None:
            if self.label_encoding != "color":
                problems["ignore_colors"] = ("only colour masks (label_encoding: color) have colours; under index, "
                                             "255 is ignore")
            elif any(not 0 <= v <= 255 for colour in self.ignore_colors for v in colour):
                problems["ignore_colors"] = "each colour is [r, g, b], each in 0..255"
        if not 0 < self.val_share < 1:
            problems["val_share"] = "must be in (0, 1)"
        if self.num_classes < 2 or self.num_classes > 254:
            problems["num_classes"] = "must be in 2..254 (255 is the ignore index)"
        if not 0 < self.ratio_range[0] <= self.ratio_range[1]:
            problems["ratio_range"] = "must be [low, high] with 0 < low <= high"
        if not 0 < self.cat_max_ratio <= 1:
            problems["cat_max_ratio"] = "must be in (0, 1]"
        for key in ("base_scale", "crop_size", "eval_scale"):
            value = getattr(self, key)
            if value is not None and min(value) <= 0:
                problems[key] = "sizes must be positive"
        for key in ("batch_size", "epochs"):
            if getattr(self, key) <= 0:
                problems[key] = "must be positive"
        if self.expected_counts is None:
            if not self.folder:
                problems["expected_counts"] = "the paper's datasets give their official split sizes"
        elif set(self.expected_counts) != {"train", "val"} or min(self.expected_counts.values()) <= 0:
            problems["expected_counts"] = "must give positive counts for exactly 'train' and 'val'"
        return problems


@dataclass(frozen=True)
class ModelSettings:
    stem: Literal["deep", "standard"]
    pretrained: Literal["imagenet", "none"]
    backbone_width: int
    aspp_channels: int
    low_level_channels: int
    decoder_channels: int
    dropout: float
    aux_channels: int

    def check(self) -> dict[str, str]:
        problems = {}
        for key in ("aspp_channels", "low_level_channels", "decoder_channels", "aux_channels"):
            if getattr(self, key) <= 0:
                problems[key] = "must be positive"
        if self.backbone_width < 2 or self.backbone_width % 2:
            problems["backbone_width"] = "must be a positive even number of channels (64 = the ImageNet checkpoints)"
        if not 0 <= self.dropout < 1:
            problems["dropout"] = "must be in [0, 1)"
        return problems


@dataclass(frozen=True)
class TrainSettings:
    lr: float
    min_lr: float
    poly_power: float
    momentum: float
    weight_decay: float
    aux_weight: float
    precision: Literal["auto", "bf16", "fp16", "fp32"]
    device: Literal["auto", "cuda", "cpu"]  # cuda: stop at once when no GPU is usable (deeplab.device)
    channels_last: bool
    checkpoint_every: int
    log_every: int
    system_metrics_every_s: float  # seconds between MLflow's system-metric samples while training and evaluating
    val_every: int
    workers: int
    seed: int
    deterministic: bool
    reference_replicas: int
    max_micro_batch: int | Literal["auto"]  # images one GPU runs at once: 0 its whole share, auto what fits
    compile: Literal["off", "inductor", "aot_eager"]  # torch.compile backend of the training step
    stop_when_diverging: bool  # stop (after a checkpoint) when the loss stays above the reference's band
    crop_tries: int  # the random crop is re-drawn up to this many times while one class dominates
    flip_prob: float
    brightness_delta: float  # photometric distortion, each step applied with probability 1/2
    contrast_range: tuple[float, float]
    saturation_range: tuple[float, float]
    hue_delta: int  # OpenCV 8-bit hue units (0-180)
    mean: tuple[float, float, float]  # normalisation of 0-255 RGB (the ImageNet weights' statistics)
    std: tuple[float, float, float]

    def check(self) -> dict[str, str]:
        problems = {}
        for key in ("contrast_range", "saturation_range"):
            low, high = getattr(self, key)
            if not 0 <= low <= high:
                problems[key] = "must be [low, high] with 0 <= low <= high"
        if min(self.std) <= 0:
            problems["std"] = "must be positive"
        if not 0 <= self.flip_prob <= 1:
            problems["flip_prob"] = "must be in [0, 1]"
        for key in ("brightness_delta", "hue_delta"):
            if getattr(self, key) < 0:
                problems[key] = "must not be negative"
        if self.crop_tries < 1:
            problems["crop_tries"] = "must be at least 1"
        if self.system_metrics_every_s <= 0:
            problems["system_metrics_every_s"] = "must be a positive number of seconds"
        if self.lr <= 0:
            problems["lr"] = "must be positive"
        elif not 0 <= self.min_lr <= self.lr:
            problems["min_lr"] = "must be in [0, lr]"
        for key in ("poly_power", "momentum", "weight_decay", "aux_weight", "workers", "val_every"):
            if getattr(self, key) < 0:
                problems[key] = "must not be negative"
        if self.max_micro_batch != "auto" and (self.max_micro_batch < 0 or self.max_micro_batch == 1):
            # a 1x1 pooled map of one image has no batch statistics
            problems["max_micro_batch"] = ("must be auto, 0 or at least 2: BatchNorm after ASPP's image pooling "
                                           "needs 2 images")
        for key in ("checkpoint_every", "log_every", "reference_replicas"):
            if getattr(self, key) <= 0:
                problems[key] = "must be positive"
        return problems


@dataclass(frozen=True)
class EvalSettings:
    ms_ratios: tuple[float, ...]  # scales of the multi-scale protocol, relative to the single-scale size
    ms_flip: bool                 # the multi-scale protocol also averages horizontally flipped inputs
    max_workers: int              # loader workers of an evaluation (at most train.workers)
    precision: Literal["fp32", "bf16"]  # fp32 (TF32 off) = the reference's published numbers' numerics

    def check(self) -> dict[str, str]:
        problems = {}
        if not self.ms_ratios or min(self.ms_ratios) <= 0:
            problems["ms_ratios"] = "must be a non-empty list of positive ratios"
        if self.max_workers < 0:
            problems["max_workers"] = "must not be negative"
        return problems


@dataclass(frozen=True)
class Cell:
    id: str
    dataset: str  # a dataset of params/datasets.yaml: the paper's, or one of your own
    backbone: Literal["r50", "r101"]
    output_stride: Literal[8, 16]
    reference_miou: float | None = None  # the paper's cells: the reference's mIoU; your own: none
    in_seed_table: bool = False
    gpus: int = 1  # GPUs of one training job; more than 1 runs under torchrun (DDP), the global batch is split
    init: str = "imagenet"  # or a cell id: start from that cell's trained model (heads re-initialised if they differ)

    @property
    def in_paper(self) -> bool:
        """One of the paper's cells (a dataset of the table), not one of your own."""
        return self.dataset in DATASETS

    def check(self) -> dict[str, str]:
        expected = f"{self.dataset}-{self.backbone}-os{self.output_stride}"
        if self.id != expected:
            return {"": f"cell id must be '{expected}' for its dataset, backbone and output_stride"}
        if self.in_paper and self.reference_miou is None:
            return {"reference_miou": "a cell of the paper's table needs the reference's mIoU"}
        if self.init == self.id:
            return {"init": "a cell cannot start from its own model; use imagenet or another cell's id"}
        if self.reference_miou is not None and not 0 <= self.reference_miou <= 100:
            return {"reference_miou": "must be a percentage in [0, 100]"}
        if self.gpus < 1:
            return {"gpus": "must be at least 1"}
        return {}


@dataclass(frozen=True)
class Preset:
    name: str
    data_dir: str
    results_dir: str
    experiment: str
    synthetic: bool
    expect_official_counts: bool
    readme: bool  # its results and memory plan are README.md's tables (one preset at most)
    register_models: bool  # evaluation registers each cell's model in MLflow's registry
    schedule_must_match_reference: bool  # a schedule of another length than the reference's log is an error
    seeds: Mapping[str, tuple[int, ...]]  # cell -> its seeds (the first in the cell's folder); unlisted: train.seed
    overrides: Mapping[str, Any]

    def check(self) -> dict[str, str]:
        for cell, seeds in self.seeds.items():
            if not seeds or len(set(seeds)) != len(seeds) or min(seeds) < 0:
                return {f"seeds.{cell}": "must be a non-empty list of distinct seeds >= 0"}
        return {}

    @property
    def paths(self) -> Paths:
        """Where this preset's files live (deeplab.paths owns every file name)."""
        return Paths(self.name, self.data_dir, self.results_dir)


@dataclass(frozen=True)
class CellConfig:
    """Everything one table cell needs: the resolved recipe of one cell under one preset."""

    cell: Cell
    data: DatasetRecipe
    model: ModelSettings
    train: TrainSettings
    evaluate: EvalSettings
    preset: Preset
    extra_seed: bool = False  # True: one of the cell's further seeds, with files of its own (deeplab.paths)
    parent_digest: str | None = None  # cells.<id>.init names a cell: that cell's training digest (a retrained
    # parent, or one trained under other settings, changes this run's training record)

    @property
    def run_key(self) -> str:
        """This run's folder under the results: the cell id, or ``<cell>/seed<k>`` for further seeds."""
        return run_key(self.cell.id, self.train.seed if self.extra_seed else None)

    @property
    def files(self) -> CellFiles:
        """This run's files under its preset: the cell's folder, or its seed's folder for further seeds."""
        return self.preset.paths.run(self.run_key)

    @property
    def stage_args(self) -> str:
        """The stage arguments naming this run: its cell, and its seed where it is a further one (a first seed's
        run takes the cell's first seed: so the DAG's command lines do not change with train.seed)."""
        return f"--cell {self.cell.id}" + (f" --seed {self.train.seed}" if self.extra_seed else "")

    @property
    def run_name(self) -> str:
        """The run's name wherever a person reads it (MLflow, the report, DVC's plot titles, warnings): its key,
        the cell id or ``<cell>/seed<k>`` for a further seed, as its folder is named. Names that cannot hold
        a "/" (DVC's stage names, MLflow's model names) spell it ``<cell>-seed<k>``."""
        return self.run_key

    @property
    def prepared_dir(self) -> str:
        """The prepared dataset this cell trains and is scored on."""
        return self.preset.paths.prepared_dir(self.cell.dataset)

    @property
    def start_model(self) -> str | None:
        """The trained model this run starts from (the first seed's of the cell ``cell.init`` names, under the
        same preset), or None when it starts from ImageNet."""
        return None if self.cell.init == "imagenet" else self.preset.paths.run(self.cell.init).model

    def share(self, world: int | None = None) -> int:
        """Images one process trains per iteration: the global batch over ``world`` processes (default:
        the cell's GPUs)."""
        return self.data.batch_size // (self.cell.gpus if world is None else world)

    @property
    def reference_batchnorm_images(self) -> int:
        """Images per BatchNorm statistic in the reference's training: its whole global batch, which
        SyncBatchNorm normalises over across its GPUs (16; 8 for Cityscapes)."""
        return self.data.batch_size

    def max_iters(self, num_train_images: int) -> int:
        """Iterations of the schedule, counted as the reference counts them.

        The reference spreads the global batch over ``reference_replicas`` GPUs; each GPU's distributed
        sampler sees ceil(N / replicas) images (padded) and drops its last incomplete batch. That gives
        epochs x floor(N / batch) for VOC (39,660) and ADE20k (164,190) but 81,840 (not 81,620) for
        Cityscapes (docs/recipe.md). Replicas are taken as gcd(batch, reference_replicas).
        """
        replicas = math.gcd(self.data.batch_size, self.train.reference_replicas)
        per_replica = -(-num_train_images // replicas)
        per_epoch = per_replica // (self.data.batch_size // replicas)
        if per_epoch == 0 or num_train_images < self.data.batch_size:  # the sampler takes whole batches
            raise TooFewImages(too_few_to_train(self.cell.dataset, num_train_images, self.data.batch_size,
                                                f"preset {self.preset.name}"))
        return self.data.epochs * per_epoch

    def to_dict(self) -> dict[str, Any]:
        """Plain, JSON-ready form: written as the resolved config and logged as MLflow params."""
        return _plain(self)

    def record(self, which: str) -> dict[str, Any]:
        """The run's training or evaluation record (``which``: TRAINING or EVALUATION; see RECORDS), with the
        training digest of the model it starts from when that is another cell's."""
        result = record(self.to_dict(), which)
        if self.parent_digest is not None:
            result["parent"] = {"cell": self.cell.init, "training_digest": self.parent_digest}
        return result

    def training_digest(self) -> str:
        """sha256 of the training record: what decides the trained weights."""
        return digest(self.record(TRAINING))

    def evaluation_digest(self) -> str:
        """sha256 of the evaluation record: the training record and what decides the scores."""
        return digest(self.record(EVALUATION))

    def records(self) -> dict[str, Any]:
        """Both records and their digests, as metrics.json, config.yaml and the MLflow run carry them."""
        return {"training": self.record(TRAINING), "evaluation": self.record(EVALUATION),
                "training_digest": self.training_digest(), "evaluation_digest": self.evaluation_digest()}

    def changes_since(self, saved: Mapping[str, Any] | None) -> list[str]:
        """What this config gives differently from a run's saved records (``saved``, as :meth:`records`
        wrote them), one ``key: then -> now (training record)`` line per setting; a setting of the evaluation
        record alone says ``(evaluation record)``. One line saying so when nothing was saved."""
        if not saved or EVALUATION not in saved:
            return ["its metrics.json carries no records of the settings it was trained and scored under"]
        return record_changes(saved[EVALUATION], self.record(EVALUATION))


@dataclass(frozen=True)
class Params:
    cells: Mapping[str, Cell]
    datasets: Mapping[str, DatasetRecipe]
    model: ModelSettings
    train: TrainSettings
    evaluate: EvalSettings
    presets: Mapping[str, Preset]
    cell_keys: Mapping[str, frozenset[str]] = dataclasses.field(default_factory=dict)  # per cell: the keys its entry gives
    own_keys: Mapping[str, frozenset[str]] = dataclasses.field(default_factory=dict)  # per folder dataset: the keys its entry gives

    @property
    def own_datasets(self) -> list[str]:
        """The datasets of your own (layout: folder), in params order."""
        return [name for name, recipe in self.datasets.items() if recipe.folder]

    def paper(self) -> "Params":
        """These params with the paper's cells alone: what README's tables, the reference's weights and logs and
        the cost tables are about."""
        return self.only([cell_id for cell_id, cell in self.cells.items() if cell.in_paper])

    def resolve(self, cell_id: str, preset: str = "full", seed: int | None = None) -> CellConfig:
        """The recipe of one run: ``cell_id`` under ``preset``, with ``seed`` (default: the cell's first seed,
        :meth:`seeds`). The first seed's run is the cell's own folder; each further one has a folder of its own."""
        if cell_id not in self.cells:
            raise UnknownName(f"unknown cell '{cell_id}'; known cells: {', '.join(self.cells)}")
        chosen = self.preset(preset)
        cell = self.cells[cell_id]
        seeds = self.seeds(cell_id, preset)
        if seed is not None and seed not in seeds:
            raise UnknownName(f"seed {seed} is not one of cell {cell_id}'s seeds under preset {preset} "
                              f"({list(seeds)}; presets.{preset}.seeds in params/presets.yaml)")
        seed = seeds[0] if seed is None else seed
        train = dataclasses.replace(self._section("train", self.train, chosen), seed=seed)
        parent = None if cell.init == "imagenet" else self.resolve(cell.init, preset).training_digest()
        return CellConfig(cell=cell, data=self.dataset(cell.dataset, preset), parent_digest=parent,
                          model=self._section("model", self.model, chosen), train=train,
                          evaluate=self._section("evaluate", self.evaluate, chosen), preset=chosen,
                          extra_seed=seed != seeds[0])

    def resolve_reference(self, cell_id: str, preset: str = "full") -> CellConfig:
        """What the reference's released weights of ``cell_id`` are scored under: the cell on ``preset``'s
        data, with the recipe's own model (the reference's architecture, whatever the preset thins) and the
        reference's evaluation numerics (fp32, TF32 off, whatever evaluate.precision says)."""
        cfg = self.resolve(cell_id, preset)
        if not cfg.cell.in_paper:
            raise UnknownName(f"cell '{cell_id}' is one of your own dataset {cfg.cell.dataset}'s: the reference "
                              f"released weights for the paper's cells alone ({', '.join(self.paper().cells)})")
        return dataclasses.replace(cfg, model=self.model,
                                   evaluate=dataclasses.replace(cfg.evaluate, precision="fp32"))

    def seeds(self, cell_id: str, preset: str = "full") -> tuple[int, ...]:
        """The seeds ``cell_id`` trains with under ``preset``: those the preset lists for it, else train.seed. So
        which runs exist (and their folders) follows from cells.yaml and presets.yaml alone, never train.seed."""
        chosen = self.preset(preset)
        return chosen.seeds.get(cell_id) or (self._section("train", self.train, chosen).seed,)

    def seeded_cells(self, preset: str = "full") -> list[str]:
        """The cells ``preset`` trains with several seeds (each gets a seeds.json summary)."""
        return [cell_id for cell_id in self.cells if len(self.seeds(cell_id, preset)) > 1]

    def runs(self, preset: str = "full") -> list[CellConfig]:
        """Every training run of ``preset``: one per cell and seed, the cell's default seed first."""
        return [self.resolve(cell_id, preset, seed) for cell_id in self.cells for seed in self.seeds(cell_id, preset)]

    def only(self, cell_ids: list[str] | tuple[str, ...]) -> "Params":
        """These params with ``cell_ids``' cells alone (what a DAG asked for runs): every check and listing
        that walks the cells then walks those."""
        unknown = [cell_id for cell_id in cell_ids if cell_id not in self.cells]
        if unknown:
            raise UnknownName(f"unknown cell '{unknown[0]}'; known cells: {', '.join(self.cells)}")
        return dataclasses.replace(self, cells=types.MappingProxyType({c: self.cells[c] for c in self.cells
                                                                       if c in cell_ids}))

    def preset(self, name: str) -> Preset:
        if name not in self.presets:
            raise UnknownName(f"unknown preset '{name}'; known presets: {', '.join(self.presets)} "
                              "(params/presets.yaml)")
        return self.presets[name]

    def model_settings(self, preset: str = "full") -> ModelSettings:
        """model.yaml with ``preset``'s overrides applied."""
        return self._section("model", self.model, self.preset(preset))

    def preparation_record(self, name: str, preset: str = "full") -> dict[str, Any]:
        """What decides dataset ``name``'s prepared pixels and labels under ``preset`` (RECORDS' preparation
        settings): the prepare stage's record, which Snakemake and DVC rerun it on."""
        doc = {"data": self.dataset(name, preset).to_dict(), "preset": _plain(self.preset(preset))}
        return {"dataset": name, **record(doc, PREPARATION)}

    def dataset(self, name: str, preset: str = "full") -> DatasetRecipe:
        """The recipe of ``name`` with ``preset``'s overrides applied."""
        if name not in self.datasets:
            raise UnknownName(f"unknown dataset '{name}'; known datasets: {', '.join(self.datasets)}")
        overrides = self.preset(preset).overrides.get("datasets", {})
        recipe = self.datasets[name]
        if recipe.folder:  # what its entry leaves to VOC's recipe follows VOC's under this preset too
            from_voc = {k: v for k, v in overrides.get("voc", {}).items()
                        if k in FOLDER_FROM_VOC and k not in self.own_keys.get(name, ())}
            recipe = dataclasses.replace(recipe, **from_voc)
        return dataclasses.replace(recipe, **overrides.get(name, {}))

    @staticmethod
    def _section(section: str, base: Any, preset: Preset) -> Any:
        return dataclasses.replace(base, **preset.overrides.get(section, {}))


def load_params(params_dir: str | Path = "params") -> Params:
    """Read and validate every file in ``params_dir``; raise :class:`ParamsError` on the first problem."""
    params_dir = Path(params_dir)
    docs = {name: _read_yaml(params_dir / name) for name in PARAM_FILES}
    cells_doc = _expect_keys(docs["cells.yaml"], {"cells"}, params_dir / "cells.yaml", ())
    cells = {cell_id: _build(Cell, {"id": cell_id, **_mapping(raw, params_dir / "cells.yaml", ("cells", cell_id))},
                             params_dir / "cells.yaml", ("cells", cell_id))
             for cell_id, raw in _mapping(cells_doc["cells"], params_dir / "cells.yaml", ("cells",)).items()}
    datasets, own_keys = _build_datasets(docs["datasets.yaml"], params_dir / "datasets.yaml")
    for cell in cells.values():
        if cell.dataset not in datasets:
            raise ParamsError(f"{_where(params_dir / 'cells.yaml', ('cells', cell.id, 'dataset'))}: unknown dataset "
                              f"'{cell.dataset}'; known: {', '.join(datasets)} (params/datasets.yaml)")
        if cell.init != "imagenet" and cell.init not in cells:
            raise ParamsError(f"{_where(params_dir / 'cells.yaml', ('cells', cell.id, 'init'))}: '{cell.init}' is "
                              f"neither imagenet nor a cell; known cells: {', '.join(cells)}")
        if cell.init != "imagenet" and cells[cell.init].backbone != cell.backbone:
            raise ParamsError(f"{_where(params_dir / 'cells.yaml', ('cells', cell.id, 'init'))}: {cell.init} has "
                              f"backbone {cells[cell.init].backbone}, {cell.id} {cell.backbone}: start from a cell "
                              "of the same backbone")
    starts = {cell.id: cell.init for cell in cells.values() if cell.init != "imagenet"}
    for cell_id in starts:  # a chain of starts must end at ImageNet
        seen = [cell_id]
        while seen[-1] in starts:
            seen.append(starts[seen[-1]])
            if seen[-1] in seen[:-1]:
                raise ParamsError(f"{_where(params_dir / 'cells.yaml', ('cells', cell_id, 'init'))}: the cells start "
                                  f"from each other in a circle ({' -> '.join(seen)}); one of them must start from imagenet")
    model = _build(ModelSettings, _expect_keys(docs["model.yaml"], {"model"}, params_dir / "model.yaml", ())["model"],
                   params_dir / "model.yaml", ("model",))
    train = _build(TrainSettings, _expect_keys(docs["train.yaml"], {"train"}, params_dir / "train.yaml", ())["train"],
                   params_dir / "train.yaml", ("train",))
    evaluate = _build(EvalSettings, _expect_keys(docs["evaluate.yaml"], {"evaluate"}, params_dir / "evaluate.yaml",
                                                 ())["evaluate"], params_dir / "evaluate.yaml", ("evaluate",))
    presets_doc = _expect_keys(docs["presets.yaml"], {"presets"}, params_dir / "presets.yaml", ())["presets"]
    base = {"datasets": datasets, "model": model, "train": train, "evaluate": evaluate}
    presets = {name: _build_preset(name, raw, base, params_dir / "presets.yaml", cells)
               for name, raw in _mapping(presets_doc, params_dir / "presets.yaml", ("presets",)).items()}
    if "full" not in presets:
        raise ParamsError(f"{params_dir / 'presets.yaml'}: presets: the 'full' preset is required")
    readme = [name for name, preset in presets.items() if preset.readme]
    if len(readme) > 1:
        raise ParamsError(f"{_where(params_dir / 'presets.yaml', ('presets', readme[1], 'readme'))}: only one preset "
                          f"can fill README.md's tables ({', '.join(readme)} say readme: true); keep one")
    params = Params(cells=types.MappingProxyType(cells), datasets=types.MappingProxyType(datasets),
                    model=model, train=train, evaluate=evaluate, presets=types.MappingProxyType(presets),
                    own_keys=types.MappingProxyType(own_keys),
                    cell_keys=types.MappingProxyType({cell_id: frozenset(map(str, raw)) for cell_id, raw in
                                                      cells_doc["cells"].items()}))
    for preset in presets:  # every override must still give a valid recipe
        for name in datasets:
            _check(params.dataset(name, preset), params_dir / "presets.yaml",
                   ("presets", preset, "overrides", "datasets", name))
        for section in ("model", "train", "evaluate"):
            _check(Params._section(section, base[section], presets[preset]), params_dir / "presets.yaml",
                   ("presets", preset, "overrides", section))
        for cell in cells.values():  # DDP splits the global batch evenly over a cell's GPUs
            batch = params.dataset(cell.dataset, preset).batch_size
            if batch % cell.gpus:
                raise ParamsError(f"{_where(params_dir / 'cells.yaml', ('cells', cell.id, 'gpus'))}: "
                                  f"{cell.gpus} GPUs cannot split the {cell.dataset} batch of {batch} "
                                  f"(preset {preset}); use a divisor of {batch}")
    return params


def record(doc: Mapping[str, Any], which: str) -> dict[str, Any]:
    """The training or evaluation record (``which``) of a resolved config ``doc`` (CellConfig.to_dict, or a
    run's config.yaml): per section, the fields RECORDS gives to that record."""
    result = {}
    for section, fields in RECORDS.items():
        kept = {k: v for k, v in doc.get(section, {}).items() if k in fields and which in record_of(section, k)
                and not ((section, k) in ADDED_LATER and v == ADDED_LATER[section, k])}
        if kept:
            result[section] = kept
    return result


def record_of(section: str, key: str) -> set[str]:
    """Which records a resolved setting is part of: {preparation}, {training, evaluation}, {evaluation} or
    none. A kind that is not one of KINDS (a reason written where the kind goes) is an error, never "none"."""
    if key not in RECORDS.get(section, {}):
        raise KeyError(f"{section}.{key} is not classified in deeplab.config.RECORDS")
    kind = RECORDS[section][key].kind
    if kind not in KINDS:
        raise ValueError(f"deeplab.config.RECORDS: {section}.{key} has kind {kind!r}, not one of {', '.join(KINDS)} "
                         "(the reason is Setting.why)")
    return {PREPARATION: {PREPARATION}, TRAINING: {TRAINING, EVALUATION}, EVALUATION: {EVALUATION},
            NONE: set()}[kind]


def digest(doc: Mapping[str, Any]) -> str:
    """sha256 of a record, independent of key order."""
    return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()


def record_changes(then: Mapping[str, Any], now: Mapping[str, Any]) -> list[str]:
    """``key: then -> now (training record)`` per setting two evaluation records differ in; a setting that
    is in the evaluation record alone is marked ``(evaluation record)``."""
    old, new = flatten(then), flatten(now)
    lines = []
    for key in sorted(set(old) | set(new)):
        if old.get(key) != new.get(key):
            section, _, name = key.partition(".")
            field = name.split(".")[0]  # "parent": the training digest of the model the run starts from
            which = EVALUATION if field in RECORDS.get(section, {}) and TRAINING not in record_of(section, field) \
                else TRAINING
            lines.append(f"{key}: {old.get(key, '(absent)')} -> {new.get(key, '(absent)')} ({which} record)")
    return lines


def flatten(doc: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """A nested config as ``{"train.lr": 0.01, ...}``."""
    result: dict[str, Any] = {}
    for key, value in doc.items():
        if isinstance(value, Mapping):
            result.update(flatten(value, f"{prefix}{key}."))
        else:
            result[f"{prefix}{key}"] = value
    return result


def _plain(value: Any) -> Any:
    """Dataclasses, mappings and tuples as plain dicts and lists (JSON- and YAML-ready)."""
    if dataclasses.is_dataclass(value):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (tuple, list)):
        return [_plain(v) for v in value]
    return value


def _build_datasets(doc: Any, path: Path) -> tuple[dict[str, DatasetRecipe], dict[str, frozenset[str]]]:
    """The paper's three datasets (every key given) and any of your own (``layout: folder``: a folder and its
    class count; the rest from VOC's entry and FOLDER_DEFAULTS). Returns them and, per dataset of your own,
    the keys its entry gives (a preset's VOC override does not reach those)."""
    doc = _mapping(doc, path, ())
    missing = [name for name in DATASETS if name not in doc]
    if missing:
        raise ParamsError(f"{_where(path, ())}: missing key '{missing[0]}' (the paper's datasets are all required)")
    datasets, own_keys = {}, {}
    for name in DATASETS:
        datasets[name] = _build(DatasetRecipe, doc[name], path, (name,))
        if datasets[name].folder:
            raise ParamsError(f"{_where(path, (name, 'layout'))}: the paper's dataset is prepared from its official "
                              "archives; give your folder a name of its own")
    for name, raw in doc.items():
        if name in DATASETS:
            continue
        raw = _mapping(raw, path, (name,))
        if not isinstance(name, str) or not name.replace("_", "").isalnum() or not name[0].isalpha() \
                or name != name.lower():
            raise ParamsError(f"{_where(path, (str(name),))}: a dataset name is lower-case letters, digits and _, "
                              "starting with a letter (it names folders, cells and stages)")
        if raw.get("layout") != "folder":
            raise ParamsError(f"{_where(path, (name,))}: unknown dataset '{name}': a dataset of your own needs "
                              f"layout: folder and source: <its folder>; the paper's are {', '.join(DATASETS)}")
        given = _fields(DatasetRecipe, raw, path, (name,), partial=True)
        if "num_classes" not in given:  # classes.txt owns it; where the entry gives it too, prepare checks both agree
            if not given.get("source"):
                raise ParamsError(f"{_where(path, (name, 'source'))}: a dataset of layout folder needs its folder: "
                                  "source: path/to/folder")
            given["num_classes"] = classes_listed(Path(given["source"]), _where(path, (name,)))
        voc = datasets["voc"]
        full = {"title": name, **FOLDER_DEFAULTS, **{k: getattr(voc, k) for k in FOLDER_FROM_VOC}, **given}
        datasets[name] = DatasetRecipe(**full)
        _check(datasets[name], path, (name,))
        own_keys[name] = frozenset(given)
    return datasets, own_keys


def classes_listed(folder: Path, where: str) -> int:
    """The classes a folder's classes.txt lists (its non-empty lines; prepare checks them whole)."""
    listed = folder / "classes.txt"
    if not listed.is_file():
        raise ParamsError(f"{where}: no num_classes, and {listed}, which gives it, is not there: put the folder "
                          "there (source), or give num_classes")
    return sum(1 for line in listed.read_text().splitlines() if line.strip())


def _build_preset(name: str, raw: Any, base: Mapping[str, Any], path: Path, cells: Mapping[str, Cell]) -> Preset:
    where = ("presets", name)
    raw = dict(_mapping(raw, path, where))
    overrides = _mapping(raw.get("overrides", {}), path, where + ("overrides",))
    _expect_keys(overrides, set(base), path, where + ("overrides",), required=False)
    checked: dict[str, Any] = {}
    for section, values in overrides.items():
        spot = where + ("overrides", section)
        if section == "datasets":
            _expect_keys(values, set(base["datasets"]), path, spot, required=False)
            checked[section] = {ds: _fields(DatasetRecipe, v, path, spot + (ds,), partial=True)
                                for ds, v in values.items()}
        else:
            checked[section] = _fields(type(base[section]), values, path, spot, partial=True)
    raw["overrides"] = checked
    preset = _build(Preset, {"name": name, **raw}, path, where)
    unknown = sorted(set(preset.seeds) - set(cells))
    if unknown:
        raise ParamsError(f"{_where(path, where + ('seeds', unknown[0]))}: unknown cell; known: {', '.join(cells)}")
    return preset


def _build(cls: type, raw: Any, path: Path, where: tuple[str, ...]) -> Any:
    obj = cls(**_fields(cls, raw, path, where, partial=False))
    _check(obj, path, where)
    return obj


def _check(obj: Any, path: Path, where: tuple[str, ...]) -> None:
    for key, problem in obj.check().items() if hasattr(obj, "check") else ():
        spot = where + ((key,) if key else ())
        raise ParamsError(f"{_where(path, spot)}: {problem}")


def _fields(cls: type, raw: Any, path: Path, where: tuple[str, ...], partial: bool) -> dict[str, Any]:
    """Type-check ``raw`` against the fields of dataclass ``cls``; return converted values."""
    raw = _mapping(raw, path, where)
    hints = typing.get_type_hints(cls)
    supplied = {"id", "name"} & set(hints)  # set by the loader, never written in the file
    defaulted = {f.name for f in dataclasses.fields(cls) if f.default is not dataclasses.MISSING}
    _expect_keys(raw, set(hints), path, where, required=not partial, optional=supplied | defaulted, hidden=supplied)
    return {key: _convert(value, hints[key], path, where + (key,)) for key, value in raw.items()}


def _convert(value: Any, hint: Any, path: Path, where: tuple[str, ...]) -> Any:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        options = [a for a in args if a is not type(None)]
        for option in options[:-1]:  # the first option the value converts to; the last one's error if none
            try:
                return _convert(value, option, path, where)
            except ParamsError:
                continue
        return _convert(value, options[-1], path, where)
    if origin is Literal:
        if value is False and "off" in args:  # YAML 1.1 reads an unquoted off as false; DVC's -S writes it so
            return "off"
        if value not in args or type(value) is not type(args[0]):
            raise ParamsError(f"{_where(path, where)}: {value!r} is not one of {', '.join(map(repr, args))}")
        return value
    if origin is tuple and args[-1] is Ellipsis:
        if not isinstance(value, list):
            raise ParamsError(f"{_where(path, where)}: expected a list, got {value!r}")
        return tuple(_convert(v, args[0], path, where + (str(i),)) for i, v in enumerate(value))
    if origin is tuple:
        if not isinstance(value, list) or len(value) != len(args):
            raise ParamsError(f"{_where(path, where)}: expected a list of {len(args)} numbers, got {value!r}")
        return tuple(_convert(v, a, path, where + (str(i),)) for i, (v, a) in enumerate(zip(value, args)))
    if origin in (collections.abc.Mapping, dict) or hint is Mapping:
        value = _mapping(value, path, where)
        value_type = args[1] if args else Any
        return types.MappingProxyType({k: _convert(v, value_type, path, where + (str(k),))
                                       for k, v in value.items()})
    if hint is Any:
        return value
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if not isinstance(value, hint) or (hint is int and isinstance(value, bool)):
        raise ParamsError(f"{_where(path, where)}: expected {hint.__name__}, got {type(value).__name__} {value!r}")
    return value


def _mapping(value: Any, path: Path, where: tuple[str, ...]) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise ParamsError(f"{_where(path, where)}: expected a mapping of keys, got {type(value).__name__}")
    return value


def _expect_keys(raw: Any, allowed: set[str], path: Path, where: tuple[str, ...],
                 required: bool = True, optional: set[str] = frozenset(),
                 hidden: set[str] = frozenset()) -> Mapping[str, Any]:
    """``raw`` as a mapping whose keys are in ``allowed``; with ``required``, every one of them but ``optional``
    must be there. ``hidden``: allowed keys that the error's list leaves out (the loader sets them)."""
    raw = _mapping(raw, path, where)
    unknown = sorted(set(map(str, raw)) - allowed)
    if unknown:
        raise ParamsError(f"{_where(path, where + (unknown[0],))}: unknown key '{unknown[0]}'; "
                          f"allowed: {', '.join(sorted(allowed - hidden))}")
    missing = sorted(allowed - optional - set(raw)) if required else []
    if missing:
        raise ParamsError(f"{_where(path, where)}: missing key '{missing[0]}'")
    return raw


class _UniqueKeyLoader(yaml.SafeLoader):
    """YAML's safe loader, except that a key given twice in one mapping is an error (plain YAML keeps the
    last value silently: ``lr: 0.01`` then ``lr: 10.0`` would train at 10)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            line = key_node.start_mark.line + 1
            if key in seen:
                raise ParamsError(f"{key_node.start_mark.name}:{line}: key '{key}' given twice (first on line "
                                  f"{seen[key]}); keep one of them")
            seen[key] = line
        return super().construct_mapping(node, deep)


def _read_yaml(path: Path) -> Any:
    if not path.is_file():
        raise ParamsError(f"{path}: parameter file not found (expected {', '.join(PARAM_FILES)} in {path.parent})")
    try:
        with path.open() as f:
            return yaml.load(f, Loader=_UniqueKeyLoader)  # noqa: S506 (a SafeLoader subclass)
    except yaml.YAMLError as exc:
        raise ParamsError(f"{path}: not valid YAML: {exc}") from exc


def _where(path: Path, keys: tuple[str, ...]) -> str:
    """``file:line: key.path`` for an error message; the line is that of the deepest key found."""
    line = _line_of(path, keys)
    key = ".".join(keys) or "(top level)"
    return f"{path}:{line}: {key}" if line else f"{path}: {key}"


def _line_of(path: Path, keys: tuple[str, ...]) -> int | None:
    try:
        node = yaml.compose(path.read_text())
    except (OSError, yaml.YAMLError):
        return None
    line = None
    for key in keys:
        if isinstance(node, yaml.MappingNode):
            match = [(k, v) for k, v in node.value if str(k.value) == key]
            if not match:
                break
            line, node = match[0][0].start_mark.line + 1, match[0][1]
        elif isinstance(node, yaml.SequenceNode) and key.isdigit() and int(key) < len(node.value):
            node = node.value[int(key)]
            line = node.start_mark.line + 1
        else:
            break
    return line
