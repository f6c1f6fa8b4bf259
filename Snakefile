# The DAG of the reproduction: download -> prepare -> train (one GPU job per cell and seed) -> evaluate -> table.
#   snakemake --cores all results/table.md                      the full recipe (needs GPUs and the data)
#   snakemake --cores all --config preset=smoke                 the smoke preset on CPU, in minutes
#   snakemake --profile profiles/slurm results/table.md         one SLURM job per cell
#   snakemake --report report.html [--config preset=smoke]       one self-contained page: tables, pictures
# Every number lives in params/ (loaded and validated by deeplab.config); every file name in deeplab.paths,
# which this file and the stages both ask (so a rule's outputs are exactly what its command writes); rules
# pass only ids and the preset. dvc.yaml runs the same commands (reference/dvc.yaml those of the reference rules).
import math
import re
import sys
from pathlib import Path

sys.path.insert(0, workflow.basedir)  # the checkout's own deeplab/, also when not pip-installed
from deeplab.budget import estimated_gpu_hours
from deeplab.codedeps import stage_code
from deeplab.config import BACKBONES, DATASETS, digest, load_params
from deeplab.data.folder import source_files
from deeplab.records import records, write_records

PRESET = str(config.get("preset", "full"))
PARAMS_DIR = str(config.get("params", "params"))
PARAMS = load_params(PARAMS_DIR)  # raises ParamsError naming file, key and line
if PRESET not in PARAMS.presets:
    raise ValueError(f"--config preset={PRESET}: unknown preset; known: {', '.join(PARAMS.presets)} "
                     f"(params/presets.yaml)")
PATHS = PARAMS.preset(PRESET).paths
CELLS = PARAMS.cells  # the paper's and those of your own datasets (params/datasets.yaml layout: folder)
OWN = PARAMS.own_datasets
RUNS = {run.run_key: run for run in PARAMS.runs(PRESET)}  # "<cell>", or "<cell>/seed<k>" for further seeds
PY = sys.executable  # the interpreter running Snakemake: the project's venv, also on cluster nodes
STAGE_ARGS = f"--preset {PRESET} --params {PARAMS_DIR}"
# What decides each job's output: its record (deeplab/records.py), the same files DVC's records stage writes,
# rewritten here only where their content changed. A job takes its record's digest as a param (Snakemake
# reruns it when that changes: an edit reruns exactly the jobs it can change, whatever else params/ holds)
# and its record file as an input that exists (ancient: the digest, not the file's time, decides).
RECORDS = records(PARAMS, PRESET)
write_records(PARAMS, PRESET)


def record(kind, name):
    """A job's record file (ancient) and its digest: ``record(...)[0]`` is the input, ``[1]`` the param."""
    path = PATHS.record(kind, name)
    return ancient(path), digest(RECORDS[path])


# The code a job's outputs follow from (deeplab/codedeps.py): its numerics modules, not the bookkeeping ones
# (names, paths, errors, validation). Snakemake judges them by time: an edit reruns the jobs; to accept one
# that changes no number, `snakemake --touch` marks their outputs as up to date.
CODE = {name: stage_code([f"pipeline.{name}"], Path(workflow.basedir)) for name in ("prepare", "store_arrays",
                                                                                     "train", "evaluate", "export")}

def doctor_scope():
    """The doctor's --cell/--dataset arguments for the jobs this DAG is about to run: the cells of its
    training and evaluation jobs, and the datasets of its data jobs that none of those cells needs."""
    jobs = list(workflow.dag.needrun_jobs())
    cells = {RUNS[job.wildcards.run].cell.id for job in jobs if "run" in job.wildcards.keys()}
    cells |= {job.wildcards.cell for job in jobs if "cell" in job.wildcards.keys()}
    datasets = {job.wildcards.dataset for job in jobs if "dataset" in job.wildcards.keys()}
    datasets -= {CELLS[cell].dataset for cell in cells}
    return f" --cells '{','.join(sorted(cells))}' --datasets '{','.join(sorted(datasets))}'"


onstart:  # one line per check before any job starts; a check that fails stops the DAG here, not hours in. It
    # checks the cells and data of the jobs to run (a DAG for one cell is not stopped by another's needs);
    # `--config doctor=skip` skips it knowingly (e.g. to mark stand-in outputs done with --touch)
    if str(config.get("doctor", "run")) == "skip":
        print("pipeline.doctor: skipped (--config doctor=skip): nothing was checked before the jobs start")
    else:
        shell(f"{PY} -m pipeline.doctor {STAGE_ARGS}{doctor_scope()}" + ("" if workflow.local_exec else " --gpus-elsewhere"))


# `snakemake --report`'s home page: what the DAG does, then the preset's tables (its template reads the paths here)
config["report_files"] = {"tables": PATHS.table_html(), "summary": PATHS.summary()}
report: "docs/report.rst"


def in_results(path):
    """``path`` (under the preset's results folder) with that folder as the wildcard ``{results}``, which
    matches that folder alone. The workflow profile reruns make_table on every run (forcerun); Snakemake makes
    a forced rule without wildcards a target of its own, which would pull every cell into a DAG asked for
    one; with this wildcard it is rerun where a DAG holds it, and only there."""
    return "{results}" + path.removeprefix(PATHS.results_dir)


wildcard_constraints:
    results=re.escape(PATHS.results_dir),
    dataset="|".join(map(re.escape, PARAMS.datasets)),
    backbone="|".join(BACKBONES),
    run="|".join(map(re.escape, RUNS)),
    cell="|".join(map(re.escape, CELLS)),

# Small, network-bound or bookkeeping jobs stay on the submitting host under a cluster executor.
localrules: all, export, download_dataset, download_weights, download_reference_log, init_tracking, make_table, reference_table
COMPARES = PARAMS.preset(PRESET).schedule_must_match_reference  # fetch each cell's reference log before it trains


def weights_for(wildcards):
    """Where the run starts: the backbone's ImageNet checkpoint when the preset trains from it, or the trained
    model of the cell its params name (cells.<id>.init)."""
    run = RUNS[wildcards.run]
    if run.start_model:
        return run.start_model
    return [] if run.model.pretrained == "none" else PATHS.weights_manifest(run.cell.backbone)


def reference_log_for(wildcards):
    """The cell's reference log where the preset compares with the reference (the paper's cells): order only
    (ancient), so a log fetched later retrains nothing; it arms the training's yardstick."""
    run = RUNS[wildcards.run]
    return [ancient(PATHS.reference_run(run.cell.id).reference_log_asset)] if COMPARES and run.cell.in_paper else []


def train_minutes(wildcards):
    """Wall-clock request: the FLOPs estimate at an A100-class rate, 1.5x margin, over the cell's GPUs."""
    run = RUNS[wildcards.run]
    hours = estimated_gpu_hours(run, "A100") * 1.5 / run.cell.gpus
    return max(60, math.ceil(hours * 60))  # a killed job resumes from its checkpoint on rerun anyway


def run_args(wildcards):
    """The stage arguments naming one run: its cell and seed."""
    return RUNS[wildcards.run].stage_args


rule all:
    input: PATHS.table()


rule download_dataset:  # the paper's datasets; one of your own is read from its folder by prepare_folder
    wildcard_constraints: dataset="|".join(DATASETS)
    output: manifest=PATHS.dataset_manifest("{dataset}")
    log: PATHS.log("download_dataset", "{dataset}")
    resources: runtime=24 * 60  # ADE20k + VOC + SBD are tens of GB; the download resumes if cut
    shell: "{PY} -m pipeline.download --dataset {wildcards.dataset} {STAGE_ARGS} > {log} 2>&1"


rule download_weights:
    output: manifest=PATHS.weights_manifest("{backbone}")
    log: PATHS.log("download_weights", "{backbone}")
    params: width=PARAMS.model_settings(PRESET).backbone_width  # a changed width rewrites the synthetic checkpoint
    shell: "{PY} -m pipeline.download --weights {wildcards.backbone} {STAGE_ARGS} > {log} 2>&1"


rule download_reference_log:  # the yardstick: the reference's training log of a cell (a failed fetch only warns)
    output:
        log=PATHS.reference_run("{cell}").reference_log,
        asset=PATHS.reference_run("{cell}").reference_log_asset,
    log: PATHS.log("download_reference_log", "{cell}")
    shell: "{PY} -m pipeline.download --reference-log {wildcards.cell} {STAGE_ARGS} > {log} 2>&1"


rule prepare_dataset:
    wildcard_constraints: dataset="|".join(DATASETS)
    input:
        manifest=rules.download_dataset.output.manifest,
        record=lambda w: record("prepare", w.dataset)[0],
        code=CODE["prepare"],
    output: meta=PATHS.prepared_meta("{dataset}")
    log: PATHS.log("prepare_dataset", "{dataset}")
    params: preparation_record=lambda w: record("prepare", w.dataset)[1]  # e.g. synthetic: another preparation
    threads: 2
    resources: mem_mb=8000, runtime=4 * 60
    shell: "{PY} -m pipeline.prepare --dataset {wildcards.dataset} {STAGE_ARGS} > {log} 2>&1"


rule prepare_folder:  # a dataset of your own: its folder's every file is an input, so an edit there re-prepares
    wildcard_constraints: dataset="|".join(map(re.escape, OWN)) or "(?!)"
    input:
        files=lambda w: source_files(PARAMS.dataset(w.dataset, PRESET).source),
        record=lambda w: record("prepare", w.dataset)[0],
        code=CODE["prepare"],
    output: meta=PATHS.prepared_meta("{dataset}")
    log: PATHS.log("prepare_dataset", "{dataset}")
    params:  # how its masks are read and its split drawn (its preparation record): an edit re-prepares it
        preparation_record=lambda w: record("prepare", w.dataset)[1],
    threads: 2
    resources: mem_mb=8000, runtime=4 * 60
    shell: "{PY} -m pipeline.prepare --dataset {wildcards.dataset} {STAGE_ARGS} > {log} 2>&1"


rule store_arrays:  # the training pairs as arrays, or none (train_arrays): a storage format, in a folder of its own
    input:
        meta=rules.prepare_dataset.output.meta,
        record=lambda w: record("arrays", w.dataset)[0],
        code=CODE["store_arrays"],
    output: source=PATHS.arrays_source("{dataset}")
    log: PATHS.log("store_arrays", "{dataset}")
    params: arrays_record=lambda w: record("arrays", w.dataset)[1]  # train_arrays toggled: this reruns, no training
    threads: 2
    resources: mem_mb=8000, runtime=4 * 60
    shell: "{PY} -m pipeline.store_arrays --dataset {wildcards.dataset} {STAGE_ARGS} > {log} 2>&1"


rule init_tracking:  # create the MLflow store and experiment once: parallel first writers race otherwise
    output: store=PATHS.tracking_marker()
    log: PATHS.log("init_tracking")
    shell: "{PY} -m pipeline.init_tracking {STAGE_ARGS} > {log} 2>&1"


rule train_cell:  # one job per training run: a cell, or a further seed of it
    input:
        meta=lambda w: PATHS.prepared_meta(RUNS[w.run].cell.dataset),
        # order only: the arrays are how the prepared pixels are stored, and storing them retrains nothing
        arrays=lambda w: ancient(PATHS.arrays_source(RUNS[w.run].cell.dataset)),
        weights=weights_for,
        reference_log=reference_log_for,
        tracking=ancient(rules.init_tracking.output.store),  # order only: a re-made store retrains nothing
        record=lambda w: record("train", w.run)[0],
        code=CODE["train"],
    output: model=PATHS.run("{run}").model  # written last; the training log and config beside it
    log: PATHS.log("train_cell", "{run}")
    params:
        training_record=lambda w: record("train", w.run)[1],  # an edit of what decides the weights retrains
        # the runs it changes; nothing else (naming, folders, evaluation, speed) does: deeplab.config.RECORDS
        cell=lambda w: RUNS[w.run].cell.id,
        run=run_args,
    threads: lambda w: RUNS[w.run].cell.gpus * (RUNS[w.run].train.workers + 1)
    resources:
        gpu=lambda w: RUNS[w.run].cell.gpus,
        mem_mb=lambda w: RUNS[w.run].cell.gpus * (4000 + 2000 * RUNS[w.run].train.workers),
        runtime=train_minutes,
    shell:  # gpu_slot: its own GPU(s), torchrun when the cell has several; the log keeps resumed attempts
        "{PY} -m pipeline.gpu_slot --cell {params.cell} --params {PARAMS_DIR}"
        " -m pipeline.train {params.run} {STAGE_ARGS} >> {log} 2>&1"


rule evaluate_cell:
    input:
        model=rules.train_cell.output.model,
        meta=lambda w: PATHS.prepared_meta(RUNS[w.run].cell.dataset),
        tracking=ancient(rules.init_tracking.output.store),
        record=lambda w: record("evaluate", w.run)[0],
        code=CODE["evaluate"],
    output:  # the pictures go into `snakemake --report report.html`, one subcategory per run
        metrics=PATHS.run("{run}").metrics,
        scores=PATHS.run("{run}").scores,
        class_iou=PATHS.run("{run}").class_iou,
        **{name: report(PATHS.run("{run}").picture(name), category=caption, subcategory="{run}",
                        labels={"run": "{run}", "figure": caption})
           for name, caption in (("iou_per_class", "per-class IoU"), ("learning_curves", "learning curves"),
                                 ("predictions", "predictions"))},
    log: PATHS.log("evaluate_cell", "{run}")
    params:
        evaluation_record=lambda w: record("evaluate", w.run)[1],  # an evaluation setting re-scores, never retrains
        run=run_args,
    threads: lambda w: RUNS[w.run].train.workers + 1  # as training: loader workers + the main process
    resources: gpu=1, mem_mb=16000, runtime=2 * 60
    shell:
        "{PY} -m pipeline.gpu_slot --gpus 1 -m pipeline.evaluate {params.run} {STAGE_ARGS} > {log} 2>&1"


rule make_table:
    input: metrics=[PATHS.run(run).metrics for run in RUNS]
    output:  # the full preset also rewrites README.md's results block
        table=report(in_results(PATHS.table()), category="results table", labels={"file": "table.md"}),
        table_html=report(in_results(PATHS.table_html()), category="results table", labels={"file": "table.html"}),
        summary=report(in_results(PATHS.summary()), category="results table", labels={"file": "summary.csv"}),
        seeds=[in_results(PATHS.seeds_summary(cell)) for cell in PARAMS.seeded_cells(PRESET)],
        per_class=in_results(PATHS.per_class_iou()),
    log: PATHS.log("make_table", "{results}")  # every file of a rule names its wildcards: logs/<preset>/make_table/<results>.log
    shell: "{PY} -m pipeline.table {STAGE_ARGS} > {log} 2>&1"


# Each run's model as ONNX, checked against PyTorch: asked for by name, never by the table
# (`snakemake --cores all export`, or one: `snakemake --cores all results/voc-r50-os8/model.onnx`).
rule export:
    input: [PATHS.run(run).onnx for run in RUNS]


rule export_onnx:
    input:
        model=rules.train_cell.output.model,
        meta=lambda w: PATHS.prepared_meta(RUNS[w.run].cell.dataset),  # the check's images
        tracking=ancient(rules.init_tracking.output.store),
        record=lambda w: record("evaluate", w.run)[0],
        code=CODE["export"],
    output:
        onnx=PATHS.run("{run}").onnx,
        check=PATHS.run("{run}").onnx_check,
    log: PATHS.log("export_onnx", "{run}")
    params:
        evaluation_record=lambda w: record("evaluate", w.run)[1],  # the test size and normalisation in the graph
        run=run_args,
    resources: mem_mb=8000
    shell: "{PY} -m pipeline.export {params.run} {STAGE_ARGS} > {log} 2>&1"


# The reference's released weights through our evaluation (needs the network and the prepared data, not the
# training rules): `snakemake --cores all results/reference.md`.
rule reference_eval:
    input:
        meta=lambda w: PATHS.prepared_meta(CELLS[w.cell].dataset),
        reference_log=rules.download_reference_log.output.log,  # its curve goes into the reference's run
        tracking=ancient(rules.init_tracking.output.store),
    output:
        metrics=PATHS.reference_run("{cell}").metrics,
    log: PATHS.log("reference_eval", "{cell}")
    resources: gpu=1, mem_mb=16000, runtime=2 * 60
    shell:
        "{PY} -m pipeline.gpu_slot --gpus 1 -m pipeline.reference_eval --cell {wildcards.cell} {STAGE_ARGS} > {log} 2>&1"


rule reference_table:
    input: [PATHS.reference_run(cell).metrics for cell in PARAMS.paper().cells]
    output: PATHS.reference_table()
    log: PATHS.log("reference_table")
    shell: "{PY} -m pipeline.reference_eval --table {STAGE_ARGS} > {log} 2>&1"
