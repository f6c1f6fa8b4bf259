"""The record files: what decides each stage's output, one small JSON file per job, rewritten only when its
content changes.

- ``prepare/<dataset>.json``: the preparation record (the settings that decide the prepared pixels and labels);
- ``arrays/<dataset>.json``: the training split and whether it is stored as arrays (the store_arrays stage);
- ``train/<run>.json``: the run's training record (with the training digest of the cell it starts from);
- ``evaluate/<run>.json``: its evaluation record (the training record and what decides the scores).

The records come from deeplab.config (``RECORDS``); their files live in ``<results_dir>/records``
(deeplab.paths). A stage depends on its record file and on its numerics code (deeplab.codedeps), never on the
params files as a whole nor on the modules that only name or check things: so Snakemake and DVC rerun exactly
the jobs an edit can change, and agree. DVC's ``records`` stage (``python -m pipeline.records``) writes them
before anything else; the Snakefile writes them when it loads, and its jobs take their digests as params.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from deeplab import atomic
from deeplab.config import EVALUATION, TRAINING, Params, digest


def records(params: Params, preset: str) -> dict[str, dict[str, Any]]:
    """Every record of ``preset`` by its file's path: each dataset's preparation and arrays records, each
    training run's training and evaluation records."""
    paths = params.preset(preset).paths
    result: dict[str, dict[str, Any]] = {}
    for name in params.datasets:
        recipe = params.dataset(name, preset)
        result[paths.record("prepare", name)] = params.preparation_record(name, preset)
        result[paths.record("arrays", name)] = {"dataset": name, "train_split": recipe.train_split,
                                                "train_arrays": recipe.train_arrays}
    for run in params.runs(preset):
        for kind, which in (("train", TRAINING), ("evaluate", EVALUATION)):
            result[paths.record(kind, run.run_key)] = run.record(which)
    return result


def text_of(record: dict[str, Any]) -> str:
    """A record file's text: sorted keys, so equal records are equal files; its digest on the last line."""
    return json.dumps({**record, "digest": digest(record)}, indent=1, sort_keys=True) + "\n"


def write_records(params: Params, preset: str) -> list[str]:
    """Write ``preset``'s record files whose content changed (an unchanged file keeps its bytes and its time)
    and delete those of runs and datasets params/ no longer has; return the paths written or deleted."""
    wanted = {path: text_of(record) for path, record in records(params, preset).items()}
    changed = []
    for path, text in wanted.items():
        if not Path(path).is_file() or Path(path).read_text() != text:
            atomic.write_text(path, text)
            changed.append(path)
    root = Path(params.preset(preset).paths.records_dir())
    for path in sorted(root.rglob("*.json")) if root.is_dir() else []:
        if str(path) not in wanted:
            path.unlink()
            changed.append(str(path))
    return changed
