"""Download stage: a dataset's official archives (or one backbone's ImageNet weights), verified.

    python -m pipeline.download --dataset {voc,ade20k,cityscapes} --preset PRESET [--params DIR] [--source URL_OR_DIR]
    python -m pipeline.download --weights {r50,r101} --preset PRESET [--params DIR] [--source URL_OR_DIR]

Archives go to the preset's raw folder and ``<raw>/manifest.json`` is written last; weights go to the
preset's weights folder with ``manifest-<backbone>.json``. A preset with ``synthetic: true`` writes small
synthetic archives under the official names instead of downloading.

Environment: ``DEEPLAB_MIRROR`` (same as --source: a folder or URL base holding the files under their
official names; when set, only it is used), ``CITYSCAPES_USERNAME``/``CITYSCAPES_PASSWORD`` (else the
cityscapesscripts credentials file is read), ``CITYSCAPES_SERVER`` (login API host, default the official).
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from deeplab import atomic
from deeplab.config import BACKBONES, DATASETS, ParamsError, load_params
from deeplab.data.cityscapes_login import CityscapesLoginError, read_credentials
from deeplab.data.download import download_dataset, download_weights, write_synthetic
from deeplab.data.fetch import DownloadError
from deeplab.data.sources import CITYSCAPES_SERVER


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m pipeline.download", description=__doc__.splitlines()[0])
    what = parser.add_mutually_exclusive_group(required=True)
    what.add_argument("--dataset", choices=DATASETS, help="fetch this dataset's archives")
    what.add_argument("--weights", choices=BACKBONES, help="fetch this backbone's ImageNet checkpoint")
    parser.add_argument("--preset", required=True, help="preset of params/presets.yaml (e.g. full, smoke)")
    parser.add_argument("--params", type=Path, default=Path("params"), help="parameter folder (default: params)")
    parser.add_argument("--source", default=os.environ.get("DEEPLAB_MIRROR") or None,
                        help="folder or URL base holding the files under their official names; only this "
                             "source is used (default: $DEEPLAB_MIRROR, else the official URLs and mirrors)")
    return parser.parse_args(argv)


def credentials_file() -> Path:
    """Where cityscapesscripts' csDownload keeps credentials (appdirs' user data dir on Linux)."""
    data_home = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(data_home) / "cityscapesscripts" / "credentials.json"


def fetch_dataset(dataset: str, preset_name: str, params: Path, source: str | None) -> Path:
    """Fill the preset's raw folder for ``dataset``; return the manifest path."""
    preset = load_params(params).preset(preset_name)
    raw_dir = Path(preset.raw_dir(dataset))
    if preset.synthetic:
        files = write_synthetic(dataset, raw_dir)
    else:
        creds = read_credentials(dict(os.environ), credentials_file()) if dataset == "cityscapes" else None
        files = download_dataset(dataset, raw_dir, source=source, credentials=creds,
                                 credentials_file=credentials_file(),
                                 cityscapes_server=os.environ.get("CITYSCAPES_SERVER") or CITYSCAPES_SERVER)
    manifest = raw_dir / "manifest.json"
    atomic.write_json(manifest, {"dataset": dataset, "preset": preset.name, "synthetic": preset.synthetic,
                              "files": files})
    return manifest


def fetch_weights(backbone: str, preset_name: str, params: Path, source: str | None) -> Path:
    """Fetch one backbone's checkpoint into the preset's weights folder; return the manifest path."""
    preset = load_params(params).preset(preset_name)
    weights_dir = Path(preset.weights_dir())
    files = download_weights(backbone, weights_dir, source=source)
    manifest = weights_dir / f"manifest-{backbone}.json"
    atomic.write_json(manifest, {"backbone": backbone, "preset": preset.name, "files": files})
    return manifest


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        if args.dataset:
            manifest = fetch_dataset(args.dataset, args.preset, args.params, args.source)
        else:
            manifest = fetch_weights(args.weights, args.preset, args.params, args.source)
    except KeyError as err:  # unknown preset: the message lists the known ones
        print(f"error: {err.args[0]}", file=sys.stderr)
        return 2
    except ParamsError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except (DownloadError, CityscapesLoginError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(f"wrote {manifest}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
