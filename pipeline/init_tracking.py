"""Stage: create the MLflow store and the preset's experiment once, before parallel jobs start.

    python -m pipeline.init_tracking --preset smoke [--params params]

Six jobs opening a fresh SQLite store at once crash in its schema migration; after this stage they don't.
Writes the preset's tracking marker (uri, experiment, experiment id; deeplab.paths) as the stage's output.
A store that is down or refuses only warns (experiment id null in the marker): the files are the record,
and every train and evaluate job tries the store again, so nothing waits for it.
"""
from __future__ import annotations

from pathlib import Path

from deeplab import atomic
from deeplab.tracking import default_tracking_uri, try_init_store
from pipeline import stage


def main(argv: list[str] | None = None) -> int:
    args = stage.parser("init_tracking", __doc__).parse_args(argv)

    def work() -> None:
        preset = stage.params(args).preset(args.preset)
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
