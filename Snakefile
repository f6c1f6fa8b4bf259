# The DAG of the reproduction: download -> prepare -> train (one GPU job per cell) -> evaluate -> table.
#   snakemake --cores all results/table.md                      the full recipe (needs GPUs and the data)
#   snakemake --cores all --config preset=smoke                 the smoke preset on CPU, in minutes
#   snakemake --profile profiles/slurm results/table.md         one SLURM job per cell
# Every number lives in params/ (loaded and validated by deeplab.config); rules pass only paths, ids and
# the preset. dvc.yaml runs the same commands.
import math
import sys

sys.path.insert(0, workflow.basedir)  # the checkout's own deeplab/, also when not pip-installed
from deeplab.budget import gpu_hours
from deeplab.config import BACKBONES, DATASETS, load_params

PRESET = str(config.get("preset", "full"))
PARAMS_DIR = str(config.get("params", "params"))
PARAMS = load_params(PARAMS_DIR)  # raises ParamsError naming file, key and line
if PRESET not in PARAMS.presets:
    raise ValueError(f"--config preset={PRESET}: unknown preset; known: {', '.join(PARAMS.presets)} "
                     f"(params/presets.yaml)")
P = PARAMS.preset(PRESET)
CELLS = PARAMS.cells
PY = sys.executable  # the interpreter running Snakemake: the project's venv, also on cluster nodes
STAGE_ARGS = f"--preset {PRESET} --params {PARAMS_DIR}"
LOGS = f"logs/{PRESET}"

wildcard_constraints:
    dataset="|".join(DATASETS),
    backbone="|".join(BACKBONES),
    cell="|".join(CELLS),

# Small, network-bound or bookkeeping jobs stay on the submitting host under a cluster executor.
localrules: all, download_dataset, download_weights, init_tracking, make_table


def cell_config(cell):
    return PARAMS.resolve(cell, PRESET)


def prepared_meta(dataset):
    return f"{P.prepared_dir(dataset)}/meta.json"


def weights_for(wildcards):
    """The backbone's ImageNet checkpoint, only when the preset trains from it."""
    config_ = cell_config(wildcards.cell)
    if config_.model.pretrained == "none":
        return []
    return f"{P.weights_dir()}/manifest-{config_.cell.backbone}.json"


def train_minutes(wildcards):
    """Wall-clock request: the FLOPs estimate at an A100-class rate, 1.5x margin, over the cell's GPUs."""
    config_ = cell_config(wildcards.cell)
    hours = gpu_hours(config_, "A100") * 1.5 / config_.cell.gpus
    return max(60, math.ceil(hours * 60))  # a killed job resumes from its checkpoint on rerun anyway


rule all:
    input: f"{P.results_dir}/table.md"


rule download_dataset:
    output: manifest=f"{P.raw_dir('{dataset}')}/manifest.json"
    log: f"{LOGS}/download_dataset/{{dataset}}.log"
    resources: runtime=24 * 60  # ADE20k + VOC + SBD are tens of GB; the download resumes if cut
    shell: "{PY} -m pipeline.download --dataset {wildcards.dataset} {STAGE_ARGS} > {log} 2>&1"


rule download_weights:
    output: manifest=f"{P.weights_dir()}/manifest-{{backbone}}.json"
    log: f"{LOGS}/download_weights/{{backbone}}.log"
    shell: "{PY} -m pipeline.download --weights {wildcards.backbone} {STAGE_ARGS} > {log} 2>&1"


rule prepare_dataset:
    input: manifest=rules.download_dataset.output.manifest
    output: meta=prepared_meta("{dataset}")
    log: f"{LOGS}/prepare_dataset/{{dataset}}.log"
    params:
        raw=lambda w: P.raw_dir(w.dataset),
        out=lambda w: P.prepared_dir(w.dataset),
        counts="--expect-official-counts" if P.expect_official_counts else "",
    threads: 2
    resources: mem_mb=8000, runtime=4 * 60
    shell:
        "{PY} -m pipeline.prepare --dataset {wildcards.dataset} --raw {params.raw} --out {params.out}"
        " {params.counts} --params {PARAMS_DIR} > {log} 2>&1"


rule init_tracking:  # create the MLflow store and experiment once: parallel first writers race otherwise
    output: store=f"{P.results_dir}/mlflow.json"
    log: f"{LOGS}/init_tracking.log"
    shell: "{PY} -m pipeline.init_tracking {STAGE_ARGS} > {log} 2>&1"


rule train_cell:
    input:
        meta=lambda w: prepared_meta(CELLS[w.cell].dataset),
        weights=weights_for,
        tracking=ancient(rules.init_tracking.output.store),  # order only: a re-made store retrains nothing
    output: model=f"{P.cell_dir('{cell}')}/model.pt"  # written last; train_log.csv, config.yaml beside it
    log: f"{LOGS}/train_cell/{{cell}}.log"
    params:
        config_digest=lambda w: cell_config(w.cell).digest(),  # a changed recipe reruns only its cells
    threads: lambda w: CELLS[w.cell].gpus * (cell_config(w.cell).train.workers + 1)
    resources:
        gpu=lambda w: CELLS[w.cell].gpus,
        mem_mb=lambda w: CELLS[w.cell].gpus * (4000 + 2000 * cell_config(w.cell).train.workers),
        runtime=train_minutes,
    shell:  # gpu_slot: its own GPU(s), torchrun when the cell has several; the log keeps resumed attempts
        "{PY} -m pipeline.gpu_slot --cell {wildcards.cell} --params {PARAMS_DIR}"
        " -m pipeline.train --cell {wildcards.cell} {STAGE_ARGS} >> {log} 2>&1"


rule evaluate_cell:
    input:
        model=rules.train_cell.output.model,
        meta=lambda w: prepared_meta(CELLS[w.cell].dataset),
        tracking=ancient(rules.init_tracking.output.store),
    output: metrics=f"{P.cell_dir('{cell}')}/metrics.json"
    log: f"{LOGS}/evaluate_cell/{{cell}}.log"
    threads: lambda w: cell_config(w.cell).train.workers + 1  # as training: loader workers + the main process
    resources: gpu=1, mem_mb=16000, runtime=2 * 60
    shell:
        "{PY} -m pipeline.gpu_slot --gpus 1 -m pipeline.evaluate --cell {wildcards.cell} {STAGE_ARGS} > {log} 2>&1"


rule make_table:
    input: metrics=expand(f"{P.cell_dir('{cell}')}/metrics.json", cell=CELLS)
    output: table=f"{P.results_dir}/table.md"  # the full preset also rewrites README.md's results block
    log: f"{LOGS}/make_table.log"
    shell: "{PY} -m pipeline.table {STAGE_ARGS} > {log} 2>&1"
