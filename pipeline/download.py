"""Stage: a dataset's official archives (or one backbone's ImageNet weights), verified.

    python -m pipeline.download --dataset {voc,ade20k,cityscapes} --preset PRESET [--params DIR] [--source URL_OR_DIR]
    python -m pipeline.download --weights {r50,r101} --preset PRESET [--params DIR] [--source URL_OR_DIR]
    python -m pipeline.download --reference-log CELL --preset PRESET [--params DIR] [--source URL_OR_DIR]

Files go to the preset's raw folders and a manifest (what was fetched, with sizes and sha256) is written
last (deeplab.paths). A preset with ``synthetic: true`` writes small synthetic archives and a randomly
initialised backbone checkpoint under the official names and formats instead of downloading.

``--reference-log`` fetches the reference's training log of a cell (resumable, its size and sha256 pinned
on first download like the reference's checkpoints) and parses it into the cell's ``reference_log.csv``,
the yardstick its training is held to; the DAG runs it before a cell trains where the preset compares with
the reference (``schedule_must_match_reference``). A log that cannot be fetched does not stop the DAG:
the step says why on one line, writes the CSV's header alone and exits 0, and the training warns once
that its yardstick is off and how to fetch the log.

Environment: ``DEEPLAB_MIRROR`` (same as --source: a folder or URL base holding the files under their
official names; when set, only it is used), ``CITYSCAPES_USERNAME``/``CITYSCAPES_PASSWORD`` (else the
cityscapesscripts credentials file is read), ``CITYSCAPES_SERVER`` (login API host, default the official).
"""
from __future__ import annotations

import os
from pathlib import Path

from deeplab import atomic, reference
from deeplab.config import BACKBONES, DATASETS, Params, Preset
from deeplab.errors import PipelineError
from deeplab.reference_log import CSV_FIELDS
from deeplab.data.cityscapes_login import default_credentials_file, read_credentials
from deeplab.data.download import download_dataset, download_weights, write_synthetic, write_synthetic_weights
from deeplab.data.sources import CITYSCAPES_SERVER
from pipeline import stage


def fetch_dataset(dataset: str, preset: Preset, source: str | None) -> str:
    """Fill the preset's raw folder for ``dataset``; return the manifest path."""
    raw_dir = Path(preset.paths.raw_dir(dataset))
    if preset.synthetic:
        files = write_synthetic(dataset, raw_dir)
    else:
        creds_file = default_credentials_file()
        creds = read_credentials(dict(os.environ), creds_file) if dataset == "cityscapes" else None
        files = download_dataset(dataset, raw_dir, source=source, credentials=creds, credentials_file=creds_file,
                                 cityscapes_server=os.environ.get("CITYSCAPES_SERVER") or CITYSCAPES_SERVER)
    manifest = preset.paths.dataset_manifest(dataset)
    atomic.write_json(manifest, {"dataset": dataset, "preset": preset.name, "synthetic": preset.synthetic,
                                 "files": files})
    return manifest


def fetch_weights(backbone: str, preset: Preset, source: str | None, width: int = 64) -> str:
    """Fetch one backbone's checkpoint into the preset's weights folder; return the manifest path.
    ``width``: the preset's backbone width, for the synthetic checkpoint (the official ones are 64)."""
    weights_dir = Path(preset.paths.weights_dir())
    files = write_synthetic_weights(backbone, weights_dir, width=width) if preset.synthetic \
        else download_weights(backbone, weights_dir, source=source)
    manifest = preset.paths.weights_manifest(backbone)
    atomic.write_json(manifest, {"backbone": backbone, "preset": preset.name, "synthetic": preset.synthetic,
                                 "files": files})
    return manifest


def fetch_reference_log(cell_id: str, params: Params, preset: Preset, source: str | None) -> str:
    """The cell's parsed reference log, or its header alone with a warning when it cannot be fetched; and,
    in any case, the asset file that names it. Returns a line saying which."""
    cell = params.cells[cell_id]
    files = preset.paths.reference_run(cell_id)
    Path(files.dir).mkdir(parents=True, exist_ok=True)
    if not cell.in_paper:  # DVC's training stages all wait on this step's files: a header and no asset
        atomic.write_text(files.reference_log, ",".join(CSV_FIELDS) + "\n")
        atomic.write_json(files.reference_log_asset, {"cell": cell_id, "asset": None, "url": None})
        return f"{cell_id} is a cell of your own dataset {cell.dataset}: the reference has no log of it (nothing fetched)"
    try:
        rows = reference.fetch_log(cell, Path(preset.paths.reference_dir()), Path(files.reference_log), source)
        said = f"{files.reference_log}: {len(rows)} rows of the reference's training log"
    except (PipelineError, OSError) as error:
        atomic.write_text(files.reference_log, ",".join(CSV_FIELDS) + "\n")
        said = (f"warning: the reference's training log of {cell_id} could not be fetched "
                f"({str(error).splitlines()[0]}); {cell_id} trains without its yardstick. Fetch it with "
                f"`python -m pipeline.download --reference-log {cell_id} --preset {preset.name}`")
    name = reference.asset_name(cell, "log")
    atomic.write_json(files.reference_log_asset, {"cell": cell_id, "asset": name, "url": reference.STORE + name})
    return said


def main(argv: list[str] | None = None) -> int:
    parser = stage.parser("download", __doc__)
    what = parser.add_mutually_exclusive_group(required=True)
    what.add_argument("--dataset", choices=DATASETS, help="fetch this dataset's archives (the paper's; a dataset "
                      "of your own is read from its folder by the prepare stage)")
    what.add_argument("--weights", choices=BACKBONES, help="fetch this backbone's ImageNet checkpoint")
    what.add_argument("--reference-log", metavar="CELL", help="fetch the reference's training log of this cell")
    parser.add_argument("--source", default=os.environ.get("DEEPLAB_MIRROR") or None,
                        help="folder or URL base holding the files under their official names; only this "
                             "source is used (default: $DEEPLAB_MIRROR, else the official URLs and mirrors)")
    args = parser.parse_args(argv)

    def work() -> None:
        params = stage.params(args)
        preset = params.preset(args.preset)
        if args.reference_log:
            params.resolve(args.reference_log, args.preset)  # an unknown cell is named with the known ones
            print(f"pipeline.download: {fetch_reference_log(args.reference_log, params, preset, args.source)}")
            return
        manifest = fetch_dataset(args.dataset, preset, args.source) if args.dataset \
            else fetch_weights(args.weights, preset, args.source, params.model_settings(args.preset).backbone_width)
        print(f"pipeline.download: wrote {manifest}")
    return stage.run("download", work)


if __name__ == "__main__":
    raise SystemExit(main())
