"""The reference implementation's own artefacts: its released checkpoints and training logs.

The reference (sssegmentation) publishes, for every cell, the trained segmentor and its training log as
release assets of its model store (:data:`STORE`), named ``deeplabv3plus_<resnet50|resnet101>os<8|16>_
<voc|ade20k|cityscapes>.pth`` / ``.log``. No checksum is published, so the first download's size and
sha256 are recorded (``pins.json`` beside the files) and a later copy that differs is refused.

Weights move between its segmentor and ours through :data:`KEY_MAP`, a table of module-name prefixes
written down once (by name, never by position). The log is one line per 50 iterations:
``YYYY-mm-dd HH:MM:SS INFO  {python dict}`` with ``cur_iter``, ``learning_rate``, ``loss_cls``, ...
"""
from __future__ import annotations

import ast
import csv
import io
import json
import pickle
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import torch

from deeplab import atomic
from deeplab.config import Cell
from deeplab.data.fetch import ChecksumError, FetchOptions, fetch, source_urls
from deeplab.data.sources import ArchiveSpec
from deeplab.errors import PipelineError
from deeplab.reference_log import CSV_FIELDS, read_log_csv

STORE = "https://github.com/SegmentationBLWX/modelstore/releases/download/ssseg_deeplabv3plus/"
PINS = "pins.json"
DEPTH = {"r50": "resnet50", "r101": "resnet101"}


class ReferenceAssetError(PipelineError):
    """A reference checkpoint or log that cannot be used as it is; the message says why and what to do."""


def asset_name(cell: Cell, kind: str) -> str:
    """The release asset of ``cell``: ``kind`` is ``pth`` (checkpoint) or ``log`` (training log)."""
    if kind not in ("pth", "log"):
        raise ValueError(f"kind must be 'pth' or 'log', got {kind!r}")
    return f"deeplabv3plus_{DEPTH[cell.backbone]}os{cell.output_stride}_{cell.dataset}.{kind}"


# ----------------------------------------------------------------------------------------------- download
def fetch_asset(cell: Cell, kind: str, dest_dir: Path, source: str | None = None,
                options: FetchOptions = FetchOptions()) -> Path:
    """A verified copy of the cell's checkpoint or log in ``dest_dir`` (resumable, from ``source`` only
    when given); the first copy's size and sha256 are pinned in ``dest_dir/pins.json``, later ones must match."""
    name = asset_name(cell, kind)
    pins_file = dest_dir / PINS
    pins = json.loads(pins_file.read_text()) if pins_file.is_file() else {}
    pinned = pins.get(name, {})
    spec = ArchiveSpec(filename=name, urls=(STORE + name,), size=pinned.get("size"), sha256=pinned.get("sha256"))
    try:
        path, sha256 = fetch(spec, dest_dir, source_urls(spec, source), options)
    except ChecksumError as error:
        raise ChecksumError(f"{error}\nThe first copy of {name} (recorded in {pins_file}) had size "
                            f"{pinned.get('size')} and sha256 {pinned.get('sha256')}: the reference's file changed "
                            f"or the source serves another one. If the reference re-published it, delete its entry "
                            f"in {pins_file} and run again.") from None
    if not pinned:
        pins[name] = {"size": path.stat().st_size, "sha256": sha256}
        atomic.write_json(pins_file, pins, sort_keys=True)
    return path


def fetch_log(cell: Cell, dest_dir: Path, parsed: Path, source: str | None = None) -> list[dict[str, str]]:
    """Fetch the cell's training log into ``dest_dir`` (pinned, resumable: :func:`fetch_asset`), parse it and
    write the rows to ``parsed`` (deeplab.paths' ``reference_log``); return them."""
    return write_log(parse_log(fetch_asset(cell, "log", dest_dir, source)), parsed)


def pin(dest_dir: Path, name: str) -> dict[str, Any]:
    """The recorded size and sha256 of a downloaded asset."""
    return json.loads((dest_dir / PINS).read_text())[name]


# -------------------------------------------------------------------------------------------- checkpoints
def _separable(ref: str, ours: str) -> list[tuple[str, str]]:
    """Its DepthwiseSeparableConv2d (named parts) against our SeparableConv (two conv-BN-ReLU blocks)."""
    return [(f"{ref}.depthwise_conv.", f"{ours}.0.0."), (f"{ref}.depthwise_bn.", f"{ours}.0.1."),
            (f"{ref}.pointwise_conv.", f"{ours}.1.0."), (f"{ref}.pointwise_bn.", f"{ours}.1.1.")]


# (reference prefix, our prefix): every state-dict key of one side starts with exactly one entry's prefix.
KEY_MAP: tuple[tuple[str, str], ...] = (
    ("backbone_net.", "backbone."),                                          # same V1c ResNet names inside
    ("aspp_net.parallel_branches.0.", "classifier.aspp.convs.0."),           # 1x1 conv, BN
    *_separable("aspp_net.parallel_branches.1", "classifier.aspp.convs.1"),  # the three atrous branches
    *_separable("aspp_net.parallel_branches.2", "classifier.aspp.convs.2"),
    *_separable("aspp_net.parallel_branches.3", "classifier.aspp.convs.3"),
    ("aspp_net.global_branch.1.", "classifier.aspp.convs.4.1.0."),           # image pooling: conv (after the pool)
    ("aspp_net.global_branch.2.", "classifier.aspp.convs.4.1.1."),           # ... and its BN
    ("aspp_net.bottleneck.", "classifier.aspp.project."),                    # the 3x3 fusion conv, BN
    ("shortcut.", "classifier.low_level."),                                  # layer1 projection to 48 channels
    *_separable("decoder.0", "classifier.decoder.0"),
    *_separable("decoder.1", "classifier.decoder.1"),
    ("decoder.3.", "classifier.classifier."),                                # decoder.2 is the dropout
    ("auxiliary_decoder.0.", "aux_classifier.0.0."),                         # aux: 3x3 conv
    ("auxiliary_decoder.1.", "aux_classifier.0.1."),                         # ... BN (2: ReLU, 3: dropout)
    ("auxiliary_decoder.4.", "aux_classifier.2."),                           # ... classifier
)


def _rename(state: Mapping[str, torch.Tensor], pairs: list[tuple[str, str]], side: str) -> dict[str, torch.Tensor]:
    out, unknown = {}, []
    for key, value in state.items():
        matches = [(src, dst) for src, dst in pairs if key.startswith(src)]
        if len(matches) != 1:
            unknown.append(key)
            continue
        src, dst = matches[0]
        out[dst + key[len(src):]] = value
    if unknown:
        raise ReferenceAssetError(f"{len(unknown)} {side} key(s) have no entry in deeplab.reference.KEY_MAP, e.g. "
                                  f"{', '.join(unknown[:5])}: not a DeepLabV3+ segmentor of the reference")
    return out


def to_ours(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The reference segmentor's state dict under our module names."""
    return _rename(state, list(KEY_MAP), "reference")


def to_reference(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Our model's state dict under the reference's module names (a checkpoint it can load)."""
    return _rename(state, [(ours, ref) for ref, ours in KEY_MAP], "our")


def load_checkpoint(path: Path) -> dict[str, torch.Tensor]:
    """The reference checkpoint at ``path`` (a dict whose ``model`` entry is the segmentor's state dict),
    loaded with ``weights_only=True`` and converted to our names."""
    try:
        saved = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        raise ReferenceAssetError(f"{path}: not loadable with torch.load(weights_only=True): it holds objects "
                                  f"beyond tensors and plain containers ({str(error).splitlines()[0]}). Refusing to "
                                  "unpickle it; a reference checkpoint holds only its state dict.") from None
    except (RuntimeError, EOFError, OSError) as error:
        raise ReferenceAssetError(f"{path}: not a readable torch checkpoint ({error}); delete it to download it "
                                  "again") from None
    state = saved.get("model") if isinstance(saved, dict) else None
    if not isinstance(state, dict):
        raise ReferenceAssetError(f"{path}: expected a dict with a 'model' state dict (the reference's format), got "
                                  f"{type(saved).__name__} with keys {list(saved)[:5] if isinstance(saved, dict) else '-'}")
    return to_ours(state)


# ------------------------------------------------------------------------------------------------- logs
LOG_LINE = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d) INFO\s+(\{.*\})\s*$")
LOG_KEYS = ("cur_iter", "max_iters", "learning_rate", "loss_cls", "loss_aux", "loss_total")


@dataclass(frozen=True)
class LogRow:
    time: str
    values: dict[str, Any]

    @property
    def iteration(self) -> int:
        return int(self.values["cur_iter"])


def write_log(rows: list[LogRow], path: Path) -> list[dict[str, str]]:
    """Write the parsed log to ``path`` as CSV (deeplab.paths' ``reference_log``) and return its rows as
    :func:`read_log_csv` gives them: seconds per iteration from the timestamps (empty for the first row),
    the memory column empty where the log has none."""
    from datetime import datetime
    table: list[dict[str, str]] = []
    previous: LogRow | None = None
    for row in rows:
        seconds = ""
        if previous is not None:
            elapsed = (datetime.fromisoformat(row.time) - datetime.fromisoformat(previous.time)).total_seconds()
            seconds = f"{elapsed / (row.iteration - previous.iteration):.6g}"
        v = row.values
        table.append(dict(zip(CSV_FIELDS, [str(row.iteration), str(v["max_iters"]), repr(float(v["learning_rate"])),
                                           repr(float(v["loss_cls"])), repr(float(v["loss_aux"])),
                                           repr(float(v["loss_total"])), seconds, str(v.get("max_gpu_alloc_GB", ""))])))
        previous = row
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=CSV_FIELDS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(table)
    atomic.write_text(path, text.getvalue())
    return table


def row_metrics(row: Mapping[str, str]) -> dict[str, float]:
    """A parsed log row (:func:`read_log_csv`) as MLflow metrics: ``reference/learning_rate``, ..."""
    return {f"reference/{key}": float(row[key]) for key in CSV_FIELDS[2:] if row.get(key)}


@dataclass(frozen=True)
class Spent:
    """What the reference's log says one cell cost it."""

    seconds_per_iter: float | None  # median over the log's windows (all its GPUs together)
    max_gpu_gb: float | None        # the largest max_gpu_alloc_GB it logged (per GPU, 2 images, fp32)
    max_iters: int
    gpus: int                       # GPUs it trained on (train.reference_replicas)

    @property
    def gpu_hours(self) -> float | None:
        return None if self.seconds_per_iter is None else self.seconds_per_iter * self.max_iters * self.gpus / 3600


def spent(path: Path, gpus: int) -> Spent | None:
    """The cost recorded in a parsed reference log (deeplab.paths' ``reference_log``) of a run on ``gpus``
    GPUs, None without one."""
    if not path.is_file():
        return None
    rows = read_log_csv(path)
    if not rows:  # a header alone: the log could not be fetched
        return None
    seconds = sorted(float(r["seconds_per_iter"]) for r in rows if r["seconds_per_iter"])
    memory = [float(r["max_gpu_alloc_GB"]) for r in rows if r["max_gpu_alloc_GB"]]
    return Spent(seconds[len(seconds) // 2] if seconds else None, max(memory) if memory else None,
                 int(rows[0]["max_iters"]), gpus)


def spent_by_cell(params: Any, preset: str, root: Path = Path(".")) -> dict[str, Spent | None]:
    """Per cell what the reference's parsed log (if fetched) says it spent."""
    paths = params.preset(preset).paths
    return {cell: spent(root / paths.reference_run(cell).reference_log,
                        params.resolve(cell, preset).train.reference_replicas) for cell in params.cells}


def parse_log(path: Path) -> list[LogRow]:
    """The training rows of a reference log (other INFO lines, e.g. evaluation results, are skipped);
    a row that cannot be read is refused naming its line."""
    rows: list[LogRow] = []
    for number, line in enumerate(path.read_text(errors="replace").splitlines(), start=1):
        if "'cur_iter'" not in line:
            continue
        found = LOG_LINE.match(line)
        try:
            values = ast.literal_eval(found[2]) if found else None
        except (ValueError, SyntaxError):
            values = None
        if not isinstance(values, dict) or any(key not in values for key in LOG_KEYS):
            raise ReferenceAssetError(f"{path}:{number}: not a training row of the reference's log (expected "
                                      f"'YYYY-mm-dd HH:MM:SS INFO  {{...}}' with {', '.join(LOG_KEYS)}): {line[:120]!r}; "
                                      "the file is truncated or damaged: delete it to download it again")
        if rows and int(values["cur_iter"]) <= rows[-1].iteration:
            raise ReferenceAssetError(f"{path}:{number}: iteration {values['cur_iter']} after {rows[-1].iteration}: the "
                                      "log's rows must go forward")
        rows.append(LogRow(found[1], values))
    if not rows:
        raise ReferenceAssetError(f"{path}: no training rows: not a reference training log")
    return rows
