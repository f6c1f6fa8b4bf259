# The DAG of the reproduction: download -> prepare -> train (one GPU job per cell) -> evaluate -> table.
#   snakemake --cores all results/table.md                      the full recipe (needs GPUs and the data)
#   snakemake --cores all --config preset=smoke                 the smoke preset on CPU, in minutes
#   snakemake --profile profiles/slurm results/table.md         one SLURM job per cell
# Every number lives in params/ (loaded and validated by deeplab.config); every file name in deeplab.paths,
# which this file and the stages both ask (so a rule's outputs are exactly what its command writes); rules
# pass only ids and the preset. dvc.yaml runs the same commands.
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
PATHS = PARAMS.preset(PRESET).paths
CELLS = PARAMS.cells
PY = sys.executable  # the interpreter running Snakemake: the project's venv, also on cluster nodes
STAGE_ARGS = f"--preset {PRESET} --params {PARAMS_DIR}"

wildcard_constraints:
    dataset="|".join(DATASETS),
    backbone="|".join(BACKBONES),
    cell="|".join(CELLS),

# Small, network-bound or bookkeeping jobs stay on the submitting host under a cluster executor.
localrules: all, download_dataset, download_weights, init_tracking, make_table


def cell_config(cell):
    return PARAMS.resolve(cell, PRESET)


def weights_for(wildcards):
    """The backbone's ImageNet checkpoint, only when the preset trains from it."""
    config_ = cell_config(wildcards.cell)
    if config_.model.pretrained == "none":
        return []
    return PATHS.weights_manifest(config_.cell.backbone)


def train_minutes(wildcards):
    """Wall-clock request: the FLOPs estimate at an A100-class rate, 1.5x margin, over the cell's GPUs."""
    config_ = cell_config(wildcards.cell)
    hours = gpu_hours(config_, "A100") * 1.5 / config_.cell.gpus
    return max(60, math.ceil(hours * 60))  # a killed job resumes from its checkpoint on rerun anyway


rule all:
    input: PATHS.table()


rule download_dataset:
    output: manifest=PATHS.dataset_manifest("{dataset}")
    log: PATHS.log("download_dataset", "{dataset}")
    resources: runtime=24 * 60  # ADE20k + VOC + SBD are tens of GB; the download resumes if cut
    shell: "{PY} -m pipeline.download --dataset {wildcards.dataset} {STAGE_ARGS} > {log} 2>&1"


rule download_weights:
    output: manifest=PATHS.weights_manifest("{backbone}")
    log: PATHS.log("download_weights", "{backbone}")
    shell: "{PY} -m pipeline.download --weights {wildcards.backbone} {STAGE_ARGS} > {log} 2>&1"


rule prepare_dataset:
    input: manifest=rules.download_dataset.output.manifest
    output: meta=PATHS.prepared_meta("{dataset}")
    log: PATHS.log("prepare_dataset", "{dataset}")
    threads: 2
    resources: mem_mb=8000, runtime=4 * 60
    shell: "{PY} -m pipeline.prepare --dataset {wildcards.dataset} {STAGE_ARGS} > {log} 2>&1"


rule init_tracking:  # create the MLflow store and experiment once: parallel first writers race otherwise
    output: store=PATHS.tracking_marker()
    log: PATHS.log("init_tracking")
    shell: "{PY} -m pipeline.init_tracking {STAGE_ARGS} > {log} 2>&1"


rule train_cell:
    input:
        meta=lambda w: PATHS.prepared_meta(CELLS[w.cell].dataset),
        weights=weights_for,
        tracking=ancient(rules.init_tracking.output.store),  # order only: a re-made store retrains nothing
    output: model=PATHS.cell("{cell}").model  # written last; the training log and config beside it
    log: PATHS.log("train_cell", "{cell}")
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
        meta=lambda w: PATHS.prepared_meta(CELLS[w.cell].dataset),
        tracking=ancient(rules.init_tracking.output.store),
    output: metrics=PATHS.cell("{cell}").metrics
    log: PATHS.log("evaluate_cell", "{cell}")
    threads: lambda w: cell_config(w.cell).train.workers + 1  # as training: loader workers + the main process
    resources: gpu=1, mem_mb=16000, runtime=2 * 60
    shell:
        "{PY} -m pipeline.gpu_slot --gpus 1 -m pipeline.evaluate --cell {wildcards.cell} {STAGE_ARGS} > {log} 2>&1"


rule make_table:
    input: metrics=[PATHS.cell(cell).metrics for cell in CELLS]
    output:  # the full preset also rewrites README.md's results block
        table=PATHS.table(),
        summary=PATHS.summary(),
        per_class=PATHS.per_class_iou(),
    log: PATHS.log("make_table")
    shell: "{PY} -m pipeline.table {STAGE_ARGS} > {log} 2>&1"
