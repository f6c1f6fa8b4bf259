"""A run's two records: every params key belongs to the training record, the evaluation record or neither,
and an edit of params/ changes exactly the records (and so reruns exactly the jobs) it decides."""
from __future__ import annotations

import copy
import dataclasses
import re
from pathlib import Path
from typing import Any, Iterator

import pytest
import yaml

from deeplab import config
from deeplab.config import (EVALUATION, KINDS, PREPARATION, RECORDS, TRAINING, CellConfig, Setting, digest, load_params,
                            record, record_of)

ROOT = Path(__file__).resolve().parent.parent
SECTION_OF_FILE = {"model.yaml": "model", "train.yaml": "train", "evaluate.yaml": "evaluate"}


def _leaves(doc: Any, prefix: tuple[str, ...] = ()) -> Iterator[tuple[str, ...]]:
    if isinstance(doc, dict) and doc:
        for key, value in doc.items():
            yield from _leaves(value, prefix + (str(key),))
    else:
        yield prefix


def params_keys(params_dir: Path) -> Iterator[tuple[str, tuple[str, ...], str, str]]:
    """Every key written in params/: (file, its key path, the resolved section, the field it sets). A mapping
    that is itself a setting (expected_counts, seeds) counts as one key."""
    for path in sorted(params_dir.glob("*.yaml")):
        doc = yaml.safe_load(path.read_text())
        for keys in _leaves(doc):
            if path.name == "cells.yaml":
                yield path.name, keys, "cell", keys[2]
            elif path.name == "datasets.yaml":
                yield path.name, keys, "data", keys[1]
            elif path.name in SECTION_OF_FILE:
                yield path.name, keys, SECTION_OF_FILE[path.name], keys[1]
            elif keys[2] == "overrides":
                section = "data" if keys[3] == "datasets" else keys[3]
                yield path.name, keys, section, keys[5] if section == "data" else keys[4]
            else:
                yield path.name, keys, "preset", keys[2]


def test_records_classify_exactly_the_fields_of_a_resolved_config() -> None:
    """RECORDS lists every field of every section, and nothing that is not one: a new setting cannot slip into
    neither record (or both) unnoticed."""
    owners = {"cell": config.Cell, "data": config.DatasetRecipe, "model": config.ModelSettings,
              "train": config.TrainSettings, "evaluate": config.EvalSettings, "preset": config.Preset}
    for section, cls in owners.items():
        assert set(RECORDS[section]) == {f.name for f in dataclasses.fields(cls)}, section
    assert set(RECORDS) == set(owners)


def test_every_setting_has_one_kind_and_a_reason_of_its_own() -> None:
    """One classification: each field's kind is one of the four and its reason a sentence beside it; a reason
    written where the kind goes is an error naming the key, never a silent "in neither record"."""
    for section, fields in RECORDS.items():
        for key, setting in fields.items():
            assert setting.kind in KINDS and len(setting.why) > 20, (section, key)
    broken = {**RECORDS["train"], "lr": Setting("a plausible reason", "")}  # type: ignore[arg-type]
    with pytest.MonkeyPatch.context() as patch:
        patch.setitem(RECORDS, "train", broken)
        with pytest.raises(ValueError, match="train.lr has kind 'a plausible reason'"):
            record_of("train", "lr")


def test_every_params_key_changes_exactly_the_records_it_is_classified_in() -> None:
    """Each key in params/ (overrides too) is classified; setting it to another value in a resolved config
    changes the training digest iff it is a training setting, the evaluation digest iff it is in either."""
    params = load_params(ROOT / "params")
    runs = {run.cell.id: run for run in params.runs("smoke")}
    seen = 0
    for file, keys, section, field in params_keys(ROOT / "params"):
        kinds = record_of(section, field)  # KeyError names an unclassified key
        run = runs[keys[1]] if file == "cells.yaml" else next(
            r for r in runs.values() if section != "data" or r.cell.dataset == (keys[0] if file == "datasets.yaml" else keys[4]))
        doc = run.to_dict()
        edited = copy.deepcopy(doc)
        edited[section][field] = ["an edited value"]
        changed = {which for which in (PREPARATION, TRAINING, EVALUATION)
                   if digest(record(edited, which)) != digest(record(doc, which))}
        assert changed == kinds, (file, ".".join(keys), changed, kinds)
        seen += 1
    assert seen > 100


def _edit(path: Path, pattern: str, replacement: str) -> None:
    text = path.read_text()
    new, count = re.subn(pattern, replacement, text, count=1, flags=re.MULTILINE)
    assert count == 1, (path, pattern)
    path.write_text(new)


def _digests(params_dir: Path) -> dict[str, tuple[str, str]]:
    return {run.run_key: (run.training_digest(), run.evaluation_digest())
            for run in load_params(params_dir).runs("smoke")}


# The table: one params edit of the smoke preset each -> (trainings, evaluations) it reruns. New runs
# (a further seed) count as both.
EDITS = {
    "evaluate.precision: bf16": ("evaluate.yaml", r"precision: fp32", "precision: bf16", 0, 13),
    "evaluate.ms_ratios gains a scale": ("evaluate.yaml", r"ms_ratios: \[0.5,", "ms_ratios: [0.25, 0.5,", 0, 13),
    "experiment renamed": ("presets.yaml", r"experiment: deeplabv3plus-smoke", "experiment: renamed", 0, 0),
    "results_dir moved": ("presets.yaml", r"results_dir: results/smoke", "results_dir: /elsewhere/smoke", 0, 0),
    "data_dir moved": ("presets.yaml", r"data_dir: data/smoke", "data_dir: /elsewhere/data", 0, 0),
    "register_models toggled": ("presets.yaml", r"register_models: true( +# as deeplabv3plus-smoke)",
                                r"register_models: false\1", 0, 0),
    "readme on the smoke preset": ("presets.yaml", r"readme: true ", "readme: false ", 0, 0),
    "a second seed for ade20k-r50-os8": ("presets.yaml", r"seeds: \{voc-r50-os16: \[0, 1\]\}",
                                         "seeds: {voc-r50-os16: [0, 1], ade20k-r50-os8: [0, 1]}", 1, 1),
    "VOC's train_arrays: true": ("datasets.yaml", r"train_arrays: false ", "train_arrays: true ", 0, 0),
    "train.workers: 6 (smoke's override)": ("presets.yaml", r"workers: 0", "workers: 6", 0, 0),
    "train.device: cpu": ("train.yaml", r"device: auto ", "device: cpu ", 0, 0),
    "train.log_every (smoke's override)": ("presets.yaml", r"log_every: 10", "log_every: 5", 0, 0),
    "evaluate.max_workers": ("evaluate.yaml", r"max_workers: 4", "max_workers: 2", 0, 0),
    "a cell's reference mIoU": ("cells.yaml", r"reference_miou: 77.43", "reference_miou: 77.5", 0, 0),
    "train.deterministic toggled": ("train.yaml", r"deterministic: false", "deterministic: true", 0, 0),
    "train.channels_last toggled": ("train.yaml", r"channels_last: true", "channels_last: false", 0, 0),
    "train.max_micro_batch: 4": ("train.yaml", r"max_micro_batch: auto", "max_micro_batch: 4", 0, 0),
    "a cell on 2 GPUs": ("cells.yaml", r"in_seed_table: true,  gpus: 1\}", "in_seed_table: true,  gpus: 2}", 0, 0),
    # the seed of the cells the preset lists no seeds for: voc-r50-os16 trains exactly its seeds 0 and 1
    "train.seed: 1": ("train.yaml", r"  seed: 0 ", "  seed: 1 ", 11, 11),
    "train.lr (smoke's override)": ("presets.yaml", r"lr: 0.05", "lr: 0.02", 13, 13),
    "VOC's crop (smoke's override)": ("presets.yaml", r"voc:        \{base_scale: \[64, 48\], crop_size: \[32, 32\]",
                                      "voc:        {base_scale: [64, 48], crop_size: [24, 24]", 5, 5),
    "VOC's eval_scale (smoke's override)": ("presets.yaml", r"epochs: 10, eval_scale: \[64, 48\]\}",
                                            "epochs: 10, eval_scale: [80, 48]}", 0, 5),
}


@pytest.mark.parametrize("edit", list(EDITS))
def test_a_params_edit_reruns_exactly_the_runs_it_changes(edit: str, params_dir: Path) -> None:
    file, pattern, replacement, trainings, evaluations = EDITS[edit]
    before = _digests(params_dir)
    _edit(params_dir / file, pattern, replacement)
    after = _digests(params_dir)
    retrained = [key for key in after if key not in before or after[key][0] != before[key][0]]
    rescored = [key for key in after if key not in before or after[key][1] != before[key][1]]
    assert (len(retrained), len(rescored)) == (trainings, evaluations), (retrained, rescored)


def test_a_changed_setting_is_named_with_its_record(params_dir: Path) -> None:
    run = load_params(params_dir).resolve("voc-r50-os8", "full")
    saved = run.records()
    _edit(params_dir / "evaluate.yaml", r"precision: fp32", "precision: bf16")
    _edit(params_dir / "train.yaml", r"  lr: 0.01 ", "  lr: 0.02 ")
    now: CellConfig = load_params(params_dir).resolve("voc-r50-os8", "full")
    assert now.changes_since(saved) == ["evaluate.precision: fp32 -> bf16 (evaluation record)",
                                        "train.lr: 0.01 -> 0.02 (training record)"]
    assert now.changes_since(None) == ["its metrics.json carries no records of the settings it was trained "
                                       "and scored under"]


def test_a_fine_tuned_cell_records_its_parents_training(params_dir: Path) -> None:
    """A cell that starts from another cell's model holds that cell's training digest in its training record:
    the parent retrained under other settings (here VOC's epochs, which the child's ADE20k recipe does not
    read) retrains the child; the child's own evaluation setting does not touch the parent."""
    _edit(params_dir / "cells.yaml", r"(ade20k-r50-os16: +\{dataset: ade20k,.*gpus: 1)\}", r"\1, init: voc-r50-os16}")
    before = load_params(params_dir).resolve("ade20k-r50-os16", "smoke")
    parent = load_params(params_dir).resolve("voc-r50-os16", "smoke")
    assert before.record(TRAINING)["parent"] == {"cell": "voc-r50-os16", "training_digest": parent.training_digest()}
    _edit(params_dir / "presets.yaml", r"batch_size: 8, epochs: 10, eval_scale: \[64, 48\]\}",
          "batch_size: 8, epochs: 12, eval_scale: [64, 48]}")
    after = load_params(params_dir).resolve("ade20k-r50-os16", "smoke")
    assert after.data == before.data and after.training_digest() != before.training_digest()
    assert after.changes_since(before.records()) == [
        f"parent.training_digest: {parent.training_digest()} -> "
        f"{load_params(params_dir).resolve('voc-r50-os16', 'smoke').training_digest()} (training record)"]
