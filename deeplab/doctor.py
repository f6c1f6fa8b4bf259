"""Before anything is rented or run: every check a preset's DAG needs to pass, each one line, none of them
downloading or computing anything (seconds, also without a GPU).

A check is ``OK`` (nothing to do), ``WARN`` (the run goes, but not as the recipe means it, or slower; the
line says what to do) or ``FAIL`` (the run would stop or waste GPU time; the line says the fix). The
checks: the GPUs against the preset's ``train.device`` and this torch build's driver; per cell, whether its
memory plan fits this GPU (micro-batch x accumulation, images per BatchNorm statistic, evaluation's peak);
free disk for the data and results still to come; each dataset's state; Cityscapes' credentials or placed
archives; the MLflow store; the results folder; the installed packages against the lock.
"""
from __future__ import annotations

import json
import os
import shutil
import sqlite3
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Literal

from deeplab import device as devices
from deeplab.config import DatasetRecipe, Params, Preset, too_few_to_train
from deeplab.data.folder import (FolderError, check_classes, find_pairs, image_count, read_splits, source_files,
                                 spec_of)
from deeplab.data.sources import (ARCHIVES, DISK_GIB, IMAGENET_WEIGHTS, PREPARED_SHARE, RUN_GIB, SYNTHETIC_GIB,
                                  arrays_gib)
from deeplab.datasets import stored_arrays
from deeplab.environment import lock_state

Status = Literal["OK", "WARN", "FAIL"]
LOCK = Path("requirements.lock")


@dataclass(frozen=True)
class Check:
    status: Status
    name: str
    text: str

    def line(self) -> str:
        return f"{self.status:<4}  {self.name:<22} {self.text}"


@dataclass(frozen=True)
class Gpu:
    """The GPU this host gives a job (the first one; jobs get one each)."""

    count: int
    name: str
    memory_gib: float
    bf16: bool


def gpu_checks(params: Params, preset: str, seen: devices.Probe, elsewhere: bool) -> tuple[list[Check], Gpu | None]:
    """The GPUs against the preset's device setting; the GPU found (None without a usable one)."""
    setting = params.resolve(next(iter(params.cells)), preset).train.device
    if elsewhere:
        return [Check("OK", "gpu", "checked in each job on its node (cluster executor): each job stops within "
                                   "seconds, naming why, when its GPU is unusable")], None
    if setting == "cpu":
        return [Check("OK", "gpu", "train.device is cpu: the preset runs on the CPU")], None
    problem = devices.gpu_problem(seen)
    if problem is not None:
        if setting == "cuda":
            return [Check("FAIL", "gpu", f"train.device is cuda but {problem}")], None
        status: Status = "WARN" if seen.nvml_gpus else "OK"
        return [Check(status, "gpu", "no usable GPU: train.device auto runs on the CPU"
                      + (f" ({problem})" if seen.nvml_gpus else ""))], None
    import torch
    properties = torch.cuda.get_device_properties(0)
    gpu = Gpu(seen.device_count, properties.name, properties.total_memory / 2**30, torch.cuda.is_bf16_supported())
    need = seen.required_driver
    return [Check("OK", "gpu", f"{gpu.count} x {gpu.name}, {gpu.memory_gib:.0f} GiB, driver {seen.driver} (this torch "
                               f"build: CUDA {seen.cuda_build}, needs r{need}+)")], gpu


def plan_checks(params: Params, preset: str, gpu: Gpu | None) -> list[Check]:
    """Per cell: the micro-batch that fits this GPU, images per BatchNorm statistic, evaluation's peak."""
    if gpu is None:
        return [Check("OK", "memory plan", "no GPU here to fit the cells to (on a CPU each cell runs its whole share)")]
    from deeplab import plan  # torchvision and the fake-tensor tracker: seconds, only where a GPU is
    from deeplab.memory import GIB, gpus_for_whole_batch, largest_fitting
    path = Path(params.preset(preset).paths.memory_plan())
    stored = plan.read(path) or {}
    missing = plan.stale(stored, params, preset)
    if missing:
        return [Check("WARN", "memory plan", f"{path}: no current prediction for {', '.join(missing[:3])}"
                                             f"{' ...' if len(missing) > 3 else ''}; run `python -m pipeline.plan "
                                             f"--preset {preset}` (seconds per cell) and the doctor again")]
    checks = []
    for cell_id in params.cells:
        cfg = params.resolve(cell_id, preset)
        precision = "fp32" if cfg.train.precision == "fp32" or not gpu.bf16 else "bf16"
        line = plan.line_of(stored["entries"][f"{cell_id}/{precision}"])
        share = cfg.share()
        micro = largest_fitting(line, share, gpu.memory_gib)
        name = f"plan {cell_id}"
        if micro is None:
            checks.append(Check("FAIL", name, f"not even 2 images per step fit {gpu.memory_gib:.0f} GiB in {precision}: "
                                              "use a larger GPU or more GPUs (params/cells.yaml gpus)"))
            continue
        steps = share // micro
        images = micro * cfg.cell.gpus  # SyncBatchNorm joins a cell's GPUs
        evals = plan.evaluation_fits(stored, cell_id, gpu.memory_gib)
        peaks = plan.evaluation_peaks(stored, cell_id)
        text = (f"{precision} {micro}{f' x {steps}' if steps > 1 else ''} on {cfg.cell.gpus} GPU(s), BatchNorm over "
                f"{images} images (reference {cfg.reference_batchnorm_images}), evaluation peak "
                + " / ".join(f"{peak / GIB:.1f}" for peak in peaks.values()) + " GiB")
        status: Status = "OK"
        if images < cfg.reference_batchnorm_images:
            gpus = gpus_for_whole_batch(line, cfg.data.batch_size, gpu.memory_gib)
            status = "WARN"
            text += ("; to keep the reference's statistics train on " +
                     (f"{gpus} such GPUs (params/cells.yaml gpus: {gpus})" if gpus else "larger GPUs"))
        if not all(evals.values()):
            status = "WARN"
            text += (f"; {', '.join(k for k, fits in evals.items() if not fits)} passes will not fit: they run "
                     "off the GPU (same numbers, slower)")
        checks.append(Check(status, name, text))
    return checks


def _existing(path: Path) -> Path:
    """``path``, or the nearest folder above it that exists (where it would be created)."""
    return next(p for p in [path, *path.resolve().parents] if p.exists())


def _gib_free(path: Path) -> float:
    return shutil.disk_usage(_existing(path)).free / 2**30


def datasets_of(params: Params) -> list[str]:
    return sorted({cell.dataset for cell in params.cells.values()})


def disk_check(params: Params, preset: Preset, datasets: list[str]) -> Check:
    """Free disk for the raw and prepared ``datasets`` not there yet and every run's results."""
    paths, needed = preset.paths, 0.0
    for dataset in datasets:
        recipe = params.dataset(dataset, preset.name)
        size = folder_gib(recipe.source) if recipe.folder else SYNTHETIC_GIB if preset.synthetic else DISK_GIB[dataset]
        if not recipe.folder and not Path(paths.dataset_manifest(dataset)).is_file():
            needed += size
        if not Path(paths.prepared_meta(dataset)).is_file():
            needed += size * PREPARED_SHARE
        if recipe.train_arrays and not preset.synthetic and \
                stored_arrays(paths.arrays_dir(dataset), paths.prepared_dir(dataset), recipe.train_split):
            needed += size * 4 if recipe.folder else arrays_gib(dataset, recipe.expected_counts["train"])
    runs = [run for run in params.runs(preset.name) if not Path(run.files.model).is_file()]
    needed += len(runs) * (SYNTHETIC_GIB if preset.synthetic else RUN_GIB)
    free = min(_gib_free(Path(preset.data_dir)), _gib_free(Path(preset.results_dir)))
    text = (f"{free:.1f} GiB free for about {needed:.1f} GiB still to come (data not yet downloaded or prepared, "
            f"{len(runs)} runs' results)")
    if free < needed:
        return Check("FAIL", "disk", f"{text}: free space under {preset.data_dir} and {preset.results_dir}, or point "
                                     "the preset's data_dir / results_dir at a larger disk (params/presets.yaml)")
    return Check("OK", "disk", text)


def folder_gib(source: str | None) -> float:
    """The size of a dataset folder of your own (0 when it is not there)."""
    return sum(Path(path).stat().st_size for path in source_files(source or "")) / 2**30


def folder_check(dataset: str, recipe: DatasetRecipe) -> Check:
    """A dataset of your own: its folder there and readable, classes.txt giving the class count of params (the
    whole check of every image and mask is the prepare stage's, before anything is written)."""
    name, folder = f"data {dataset}", Path(recipe.source or "")
    try:
        check_classes(folder, recipe.label_encoding, recipe.num_classes, dataset)
        files = source_files(folder)
        unreadable = [path for path in files if not os.access(path, os.R_OK)]
        if unreadable:
            return Check("FAIL", name, f"{unreadable[0]} (and {len(unreadable) - 1} more) cannot be read: fix the "
                                       "permissions")
        images = image_count(files)
        splits, drawn = read_splits(folder, [pair.stem for pair in find_pairs(folder)], spec_of(recipe))
    except FolderError as error:
        return Check("FAIL", name, str(error).splitlines()[0])
    if len(splits["train"]) < recipe.batch_size:
        return Check("FAIL", name, too_few_to_train(dataset, len(splits["train"]), recipe.batch_size,
                                                    "drawn from the folder" if drawn else "splits/train.txt"))
    return Check("OK", name, f"your folder {folder}: {images} images ({len(splits['train'])} to train on), "
                             f"{recipe.num_classes} classes (prepare checks every image and mask before it writes)")


def dataset_checks(params: Params, preset: Preset, datasets: list[str]) -> list[Check]:
    """Each dataset: prepared, downloaded (sizes as recorded) or still to download; Cityscapes' access; the
    folder of a dataset of your own."""
    checks, paths = [], preset.paths
    for dataset in datasets:
        name = f"data {dataset}"
        recipe = params.dataset(dataset, preset.name)
        if recipe.folder:  # its folder is checked even when prepared: an edit there re-prepares it
            checks.append(folder_check(dataset, recipe))
            continue
        if Path(paths.prepared_meta(dataset)).is_file():
            meta = json.loads(Path(paths.prepared_meta(dataset)).read_text())
            counts = meta.get("counts", {})
            checks.append(Check("OK", name, "prepared (" + ", ".join(f"{k} {v}" for k, v in counts.items()) + ")"))
            continue
        manifest = Path(paths.dataset_manifest(dataset))
        if manifest.is_file():
            files = json.loads(manifest.read_text()).get("files", {})
            raw = Path(paths.raw_dir(dataset))
            wrong = [f for f, entry in files.items() if not (raw / f).is_file()
                     or (raw / f).stat().st_size != entry.get("size")]
            if wrong:
                checks.append(Check("FAIL", name, f"{manifest} lists {', '.join(wrong)}, missing or of another size in "
                                                  f"{raw}: delete {manifest} to download again"))
            else:
                checks.append(Check("OK", name, "downloaded and verified, not prepared yet (the DAG prepares it)"))
            continue
        if preset.synthetic:
            checks.append(Check("OK", name, "synthetic: generated by the DAG (no download)"))
        elif dataset == "cityscapes":
            checks.append(cityscapes_access(Path(paths.raw_dir(dataset))))
        else:
            checks.append(Check("OK", name, f"not downloaded yet: the DAG downloads about {DISK_GIB[dataset]:.1f} GiB "
                                            f"({', '.join(s.filename for s in ARCHIVES[dataset])})"))
    if not preset.synthetic:
        for backbone in sorted({cell.backbone for cell in params.cells.values() if cell.init == "imagenet"}):
            if not Path(paths.weights_manifest(backbone)).is_file():
                checks.append(Check("OK", f"weights {backbone}", f"not downloaded yet: the DAG downloads "
                                                                 f"{IMAGENET_WEIGHTS[backbone].filename}"))
    return checks


def cityscapes_access(raw_dir: Path) -> Check:
    """Cityscapes needs an account: credentials, or both archives placed in its raw folder."""
    from deeplab.data.cityscapes_login import CityscapesLoginError, default_credentials_file, read_credentials
    placed = [spec.filename for spec in ARCHIVES["cityscapes"] if (raw_dir / spec.filename).is_file()]
    if len(placed) == len(ARCHIVES["cityscapes"]):
        return Check("OK", "data cityscapes", f"archives placed in {raw_dir} (checked against their checksums "
                                              "when the DAG downloads)")
    try:
        credentials = read_credentials(dict(os.environ), default_credentials_file())
    except CityscapesLoginError as error:
        return Check("FAIL", "data cityscapes", str(error))
    if credentials is not None:
        return Check("OK", "data cityscapes", f"not downloaded yet; credentials from {credentials.origin} (not tried: "
                                              "the download logs in)")
    names = " and ".join(spec.filename for spec in ARCHIVES["cityscapes"])
    return Check("FAIL", "data cityscapes", "needs an approved account: set CITYSCAPES_USERNAME and CITYSCAPES_PASSWORD "
                                            f"(or cityscapesscripts' {default_credentials_file()}), or place {names} "
                                            f"from https://www.cityscapes-dataset.com/downloads/ in {raw_dir}/")


def mlflow_check(uri: str) -> Check:
    """The tracking store reachable and writable, without creating it (init_tracking does)."""
    if uri.startswith(("http://", "https://")):
        try:
            with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=5) as answer:
                ok = answer.status == 200
        except (urllib.error.URLError, OSError) as error:
            return Check("FAIL", "mlflow", f"{uri} does not answer ({error}): start the server or set "
                                           "MLFLOW_TRACKING_URI to a store that answers")
        return Check("OK" if ok else "FAIL", "mlflow", f"{uri} answers" + ("" if ok else " but not healthy"))
    if uri.startswith("sqlite:///"):
        path = Path(uri[len("sqlite:///"):])
        if path.is_file():
            try:
                with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as db:
                    db.execute("SELECT name FROM sqlite_master LIMIT 1").fetchall()
            except sqlite3.Error as error:
                return Check("FAIL", "mlflow", f"{path} is not a readable SQLite store ({error}): move it aside")
            writable = os.access(path, os.W_OK) and os.access(path.parent, os.W_OK)
        else:
            writable = os.access(_existing(path.parent), os.W_OK)
        if not writable:
            return Check("FAIL", "mlflow", f"{path} (or its folder) is not writable: fix its permissions or set "
                                           "MLFLOW_TRACKING_URI")
        return Check("OK", "mlflow", f"{uri} {'exists' if path.is_file() else 'will be created'}, writable")
    return Check("WARN", "mlflow", f"{uri}: not checked (only sqlite:/// and http(s):// stores are)")


def results_check(preset: Preset) -> Check:
    root = Path(preset.results_dir)
    existing = _existing(root)
    if not os.access(existing, os.W_OK):
        return Check("FAIL", "results", f"{existing} is not writable: fix its permissions or point results_dir "
                                        "elsewhere (params/presets.yaml)")
    return Check("OK", "results", f"{root} writable")


def packages_check(lock: Path = LOCK) -> Check:
    state = lock_state(lock)
    if state["lock_matches"]:
        return Check("OK", "packages", f"installed as {lock} pins them")
    return Check("WARN", "packages", f"not the versions {lock} pins ({'; '.join(state['lock_mismatches'][:3])}): "
                                     "`make .venv/.installed` installs them; runs record the difference")


def run_checks(params: Params, preset: str, tracking_uri: str, gpus_elsewhere: bool = False,
               seen: devices.Probe | None = None, progress: Callable[[Check], None] = lambda check: None,
               cells: list[str] | None = None, datasets: list[str] | None = None) -> list[Check]:
    """Every check of ``preset``, in order; ``progress`` sees each one as it is done. ``cells`` and
    ``datasets`` (a DAG's targets) limit the checks to those cells' runs and data and to further datasets
    without a cell; None: the whole preset. Without a cell nothing runs on a GPU: no GPU or plan check."""
    chosen = params.preset(preset)
    checks: list[Check] = []
    if cells is not None or datasets is not None:
        params = params.only(cells or [])
    data = sorted(set(datasets_of(params)) | set(datasets or []))

    def add(found: list[Check]) -> None:
        for check in found:
            checks.append(check)
            progress(check)
    if params.cells:
        gpu_lines, gpu = gpu_checks(params, preset, seen or devices.probe(), gpus_elsewhere)
        add(gpu_lines)
        add(plan_checks(params, preset, gpu) if not gpus_elsewhere else [])
    add([disk_check(params, chosen, data)])
    add(dataset_checks(params, chosen, data))
    add([mlflow_check(tracking_uri), results_check(chosen), packages_check()])
    return checks

