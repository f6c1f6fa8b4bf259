"""Stage: create the MLflow store and the preset's experiment once, before parallel jobs start.

    python -m pipeline.init_tracking --preset smoke [--params params]
    python -m pipeline.init_tracking --preset smoke --ui     # print how to browse it; changes nothing

Six jobs opening a fresh SQLite store at once crash in its schema migration; after this stage they don't.
Writes the preset's tracking marker (uri, experiment, experiment id; deeplab.paths) as the stage's output.
A store that is down or refuses only warns (experiment id null in the marker): the files are the record,
and every train and evaluate job tries the store again, so nothing waits for it. The experiment also gets
the saved runs view (deeplab.tracking.SHARED_VIEW) that ``--ui``'s link opens.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

from deeplab import atomic
from deeplab.config import Preset
from deeplab.tracking import default_tracking_uri, try_init_store, ui_link
from pipeline import stage

UI_ROOT = "http://127.0.0.1:5000"  # where `mlflow ui` answers by default


def mlflow_command() -> str:
    """The ``mlflow`` beside this interpreter (the project's .venv/bin/mlflow), relative where it is below here."""
    tool = Path(sys.executable).parent / "mlflow"
    return str(tool.relative_to(Path.cwd())) if tool.is_relative_to(Path.cwd()) else str(tool)


def ui_lines(preset: Preset) -> list[str]:
    """How to browse the preset's store: the `mlflow ui` command and the link to its runs, from the marker."""
    marker = Path(preset.paths.tracking_marker())
    if not marker.is_file():
        return [f"MLflow: no store yet for preset {preset.name} ({marker} is missing): run its DAG first"]
    doc = json.loads(marker.read_text())
    if doc.get("experiment_id") is None:
        return [f"MLflow: the store at {doc['uri']} was not available ({doc.get('problem')}); the runs' files "
                "are the record"]
    return [f"MLflow: {mlflow_command()} ui --backend-store-uri {doc['uri']} --port 5000, then open "
            f"{ui_link(UI_ROOT, doc['experiment_id'])}"]


def main(argv: list[str] | None = None) -> int:
    cli = stage.parser("init_tracking", __doc__)
    cli.add_argument("--ui", action="store_true", help="print the command and link that open the experiment's runs")
    args = cli.parse_args(argv)

    def work() -> None:
        preset = stage.params(args).preset(args.preset)
        if args.ui:
            print("\n".join(ui_lines(preset)))
            return
        root = Path.cwd()
        uri = default_tracking_uri(root)
        experiment_id, problem = try_init_store(uri, preset.experiment, root)
        atomic.write_json(preset.paths.tracking_marker(), {"uri": uri, "experiment": preset.experiment,
                                                           "experiment_id": experiment_id, "problem": problem})
        state = f"({experiment_id}) ready" if problem is None else f"not available ({problem}); continuing without it"
        print(f"pipeline.init_tracking: MLflow experiment '{preset.experiment}' {state} at {uri}")
    return stage.run("init_tracking", work)


if __name__ == "__main__":
    raise SystemExit(main())
