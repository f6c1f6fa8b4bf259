"""Stage: create the MLflow store and the preset's experiment once, before parallel jobs start.

    python -m pipeline.init_tracking --preset smoke [--params params]

Six jobs opening a fresh SQLite store at once crash in its schema migration; after this stage they don't.
Writes ``<results_dir>/mlflow.json`` (uri, experiment, experiment id) as the stage's output.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from deeplab import atomic
from deeplab.config import load_params
from deeplab.tracking import default_tracking_uri, init_store


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", required=True, help="preset of params/presets.yaml, e.g. full or smoke")
    parser.add_argument("--params", default="params", help="folder of the parameter files")
    args = parser.parse_args(argv)
    preset = load_params(args.params).preset(args.preset)
    root = Path.cwd()
    uri = default_tracking_uri(root)
    experiment_id = init_store(uri, preset.experiment, root)
    marker = Path(preset.results_dir) / "mlflow.json"
    atomic.write_json(marker, {"uri": uri, "experiment": preset.experiment, "experiment_id": experiment_id})
    print(f"MLflow experiment '{preset.experiment}' ({experiment_id}) ready at {uri}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
