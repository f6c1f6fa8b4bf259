"""Every file name of the pipeline, owned here and nowhere else.

The Snakefile, the stage entry points and the library all ask a :class:`Paths` (one per preset, from
``params/presets.yaml``'s ``data_dir`` and ``results_dir``) where a file lives; none of them spells a file
name itself. ``dvc.yaml`` cannot call Python, so it spells the same paths with its own templating, and
``python -m pipeline.dvc_presets --check`` (run by the tests) proves they agree with this module.

Layout, relative to the project root::

    <data_dir>/raw/<dataset>/            the official archives and manifest.json (what was fetched, sha256)
    <data_dir>/raw/weights/              ImageNet checkpoints and manifest-<backbone>.json
    <data_dir>/raw/reference/            the reference's released checkpoints and logs, pins.json
    <data_dir>/prepared/<dataset>/       splits/, labels, meta.json (written last)
    <data_dir>/arrays/<dataset>/         the training pairs as .npy where train_arrays says so; source.json
    <results_dir>/<cell>/                one cell (its default seed): see CellFiles
    <results_dir>/<cell>/seed<k>/        a further seed k of the cell, the same files
    <results_dir>/<cell>/seeds.json      a cell trained with several seeds: their number, mean and std
    <results_dir>/reference/<cell>/      our evaluation of the reference's weights (CellFiles), its log parsed
    <results_dir>/reference.md           the reference's published mIoU against our evaluation of its weights
    <results_dir>/records/<kind>/<name>.json   what decides each stage's output (deeplab.records), one file a job
    <results_dir>/table.md, summary.csv, per_class_iou.csv, memory_plan.json, mlflow.json
    logs/<preset>/<rule>/...             Snakemake's per-job logs
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class CellFiles:
    """The files of one table cell, all inside ``dir``."""

    dir: str

    @property
    def config(self) -> str:
        """The resolved config the cell was trained with (YAML), written when training starts."""
        return f"{self.dir}/config.yaml"

    @property
    def train_log(self) -> str:
        """One CSV row per logged iteration: loss, lr, images/s, peak memory."""
        return f"{self.dir}/train_log.csv"

    @property
    def checkpoint(self) -> str:
        """The resumable training state; deleted once ``model`` is written."""
        return f"{self.dir}/checkpoints/last.pt"

    @property
    def model(self) -> str:
        """The trained weights with their config digest; written last by training."""
        return f"{self.dir}/model.pt"

    @property
    def onnx(self) -> str:
        """The model as ONNX (pipeline.export, asked for by name): written only once its check passed."""
        return f"{self.dir}/model.onnx"

    @property
    def onnx_check(self) -> str:
        """How the ONNX model agreed with the PyTorch model on the dataset's own images (JSON)."""
        return f"{self.dir}/model.onnx.json"

    @property
    def metrics(self) -> str:
        """The evaluation's numbers and provenance; written last by evaluation."""
        return f"{self.dir}/metrics.json"

    @property
    def scores(self) -> str:
        """The headline numbers alone (mIoU, aAcc, mAcc, the extra protocols' mIoU): DVC's metrics file."""
        return f"{self.dir}/scores.json"

    @property
    def class_iou(self) -> str:
        """One CSV row per class present in the val split (class, IoU): DVC's per-class bar chart."""
        return f"{self.dir}/class_iou.csv"

    @property
    def reference_log(self) -> str:
        """The reference's training log of this cell, parsed: one CSV row per logged iteration (a header
        alone when it could not be fetched)."""
        return f"{self.dir}/reference_log.csv"

    @property
    def reference_log_asset(self) -> str:
        """Which release asset the reference's log of this cell is (written with it, the same whether it could
        be fetched or not): what training waits for, so fetching the log later retrains nothing."""
        return f"{self.dir}/reference_log.json"

    @property
    def environment(self) -> str:
        """Where the training ran (deeplab.environment), one entry per machine that trained the run."""
        return f"{self.dir}/environment.json"

    @property
    def pip_freeze(self) -> str:
        """Every installed package of the last training, as ``pip freeze`` lists them."""
        return f"{self.dir}/pip_freeze.txt"

    @property
    def run_id(self) -> str:
        """The cell's MLflow run id, so a resumed job and the evaluation reattach to one run."""
        return f"{self.dir}/mlflow_run_id"

    def picture(self, name: str) -> str:
        """One of the evaluation's pictures: ``iou_per_class``, ``learning_curves``, ``predictions``."""
        if name not in PICTURES:
            raise ValueError(f"unknown picture '{name}'; known: {', '.join(PICTURES)}")
        return f"{self.dir}/{name}.png"


PICTURES = ("iou_per_class", "learning_curves", "predictions")
# The offline page template of `dvc plots show` (pipeline.plots_template), named in .dvc/config relative to .dvc/
DVC_PLOTS_TEMPLATE = ".dvc/plots_offline.html"


def run_key(cell_id: str, seed: int | None = None) -> str:
    """A training run's folder under the results: ``<cell>`` for its default seed, ``<cell>/seed<k>`` else."""
    return cell_id + (f"/seed{seed}" if seed is not None else "")


@dataclass(frozen=True)
class Paths:
    """Where one preset's files live (relative to the project root)."""

    preset: str
    data_dir: str
    results_dir: str

    def raw_dir(self, dataset: str) -> str:
        """The archives of ``dataset`` as downloaded (or synthesised)."""
        return f"{self.data_dir}/raw/{dataset}"

    def dataset_manifest(self, dataset: str) -> str:
        """Written last by the download stage: what was fetched, with sizes and sha256."""
        return f"{self.raw_dir(dataset)}/manifest.json"

    def weights_dir(self) -> str:
        """The ImageNet backbone checkpoints."""
        return f"{self.data_dir}/raw/weights"

    def weights_manifest(self, backbone: str) -> str:
        return f"{self.weights_dir()}/manifest-{backbone}.json"

    def prepared_dir(self, dataset: str) -> str:
        """The prepared ``dataset``: splits/, converted labels, meta.json."""
        return f"{self.data_dir}/prepared/{dataset}"

    def prepared_meta(self, dataset: str) -> str:
        """Written last by the prepare stage: its presence marks a complete prepared folder."""
        return f"{self.prepared_dir(dataset)}/meta.json"

    def arrays_dir(self, dataset: str) -> str:
        """The training pairs of the prepared ``dataset`` as uint8 arrays (``train_arrays``), a storage
        format kept apart from the prepared folder (deeplab.data.arrays)."""
        return f"{self.data_dir}/arrays/{dataset}"

    def arrays_source(self, dataset: str) -> str:
        """The arrays folder's ``source.json``: the prepared split it was made from, the same whether arrays
        are stored or not (what training depends on, so a storage change retrains nothing)."""
        return f"{self.arrays_dir(dataset)}/source.json"

    def cell(self, cell_id: str, seed: int | None = None) -> CellFiles:
        """One cell's files; a further seed of the cell (not its default) has a folder of its own inside."""
        return self.run(run_key(cell_id, seed))

    def reference_dir(self) -> str:
        """The reference's released checkpoints and training logs as downloaded, with their pins.json."""
        return f"{self.data_dir}/raw/reference"

    def reference_run(self, cell_id: str) -> CellFiles:
        """Our evaluation of the reference's weights for ``cell_id`` (metrics.json, pictures, MLflow run id)
        and its training log parsed (``reference_log``)."""
        return CellFiles(f"{self.results_dir}/reference/{cell_id}")

    def reference_table(self) -> str:
        """The reference's published mIoU, our evaluation of its weights, and the difference, per cell."""
        return f"{self.results_dir}/reference.md"

    def run(self, key: str) -> CellFiles:
        """The files of the training run ``key`` (see :func:`run_key`)."""
        return CellFiles(f"{self.results_dir}/{key}")

    def tracking_marker(self) -> str:
        """Written by init_tracking: the MLflow store's URI and the experiment id."""
        return f"{self.results_dir}/mlflow.json"

    def records_dir(self) -> str:
        """The records of every run and dataset (deeplab.records): the one folder DVC's records stage writes."""
        return f"{self.results_dir}/records"

    def record(self, kind: str, name: str) -> str:
        """The record file of ``kind`` (prepare, arrays, train, evaluate) of a dataset or run ``name`` (a run key:
        ``<cell>`` or ``<cell>/seed<k>``), which the stage of that kind depends on."""
        return f"{self.records_dir()}/{kind}/{name}.json"

    def table(self) -> str:
        """The results tables in markdown."""
        return f"{self.results_dir}/table.md"

    def table_html(self) -> str:
        """table.md rendered as HTML (what the Snakemake report's home page shows)."""
        return f"{self.results_dir}/table.html"

    def summary(self) -> str:
        """One CSV row per cell: mIoU, aAcc, mAcc, reference, difference, seeds, GPU-hours."""
        return f"{self.results_dir}/summary.csv"

    def seeds_summary(self, cell_id: str) -> str:
        """A cell trained with several seeds: their number and the mean (and std) of its headline numbers,
        written by the table stage beside the default seed's files (a DVC metrics file)."""
        return f"{self.results_dir}/{cell_id}/seeds.json"

    def per_class_iou(self) -> str:
        """One CSV row per (cell, class): the per-class IoU behind each mIoU."""
        return f"{self.results_dir}/per_class_iou.csv"

    def memory_plan(self) -> str:
        """The predicted GPU memory of every cell (pipeline.plan), which README's memory table renders."""
        return f"{self.results_dir}/memory_plan.json"

    def log(self, rule: str, name: str = "") -> str:
        """Snakemake's log file of one job of ``rule`` (``name``: its wildcard value, if any)."""
        return f"logs/{self.preset}/{rule}/{name}.log" if name else f"logs/{self.preset}/{rule}.log"
