"""Stage: the record files of a preset (deeplab.records): what decides each job's output, one file a job.

    python -m pipeline.records --preset PRESET [--params DIR] [--pipeline]

Writes ``<results_dir>/records/{prepare,arrays,train,evaluate}/...json``, each only where its content changed,
and says which. DVC's first stage (the Snakefile writes the same files itself when it loads).

``--pipeline`` (DVC's command) first checks that the preset's DVC pipeline lists what params/ gives (its runs,
cells and datasets, its code deps and table inputs: pipeline.dvc_presets). DVC read that file before this
stage ran, so when it is stale (a cell, seed or dataset added to params/ without `python -m
pipeline.dvc_presets`, or a `dvc exp run -S` that adds one) this stops before any job, saying what to run.
"""
from __future__ import annotations

from deeplab.errors import PipelineError
from deeplab.records import write_records
from pipeline import dvc_presets, stage


class StalePipeline(PipelineError):
    exit_code = 1


def main(argv: list[str] | None = None) -> int:
    parser = stage.parser("records", __doc__)
    parser.add_argument("--pipeline", action="store_true",
                        help="first check that the preset's DVC pipeline matches params/ (DVC's records stage)")
    args = parser.parse_args(argv)

    def work() -> None:
        params = stage.params(args)
        if args.pipeline:
            problems = dvc_presets.stale(params, only=[dvc_presets.pipeline_of(args.preset)])
            if problems:
                raise StalePipeline("\n".join(problems) + "\nDVC read the pipeline before this stage: after "
                                    "`python -m pipeline.dvc_presets`, run `dvc repro` again (in a `dvc exp run`, "
                                    "regenerate and commit first, or run the experiment from that workspace)")
        changed = write_records(params, args.preset)
        print(f"pipeline.records: {len(changed)} record file(s) changed" + (
            ":\n  " + "\n  ".join(changed) if changed else ": every job's record is as it was"))
    return stage.run("records", work)


if __name__ == "__main__":
    raise SystemExit(main())
