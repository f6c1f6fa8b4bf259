"""MLflow mirror of a cell's files: one run per cell (named by the cell id) in the preset's experiment.

The files in the cell folder are the record; MLflow only mirrors them. So every MLflow call goes through
:class:`Tracker`, which warns once and turns itself off on the first failure (an unreachable server, a
locked database) instead of killing a training job. ``mlflow`` is imported lazily: the import alone takes
3-4 s. Metrics are logged asynchronously so the training loop never waits on the store.

Every call runs on one background thread, in order: the 3-4 s import and the store's start-up overlap
the job's own work instead of delaying it; :meth:`Tracker.end` waits for the queue to drain.

The run id is kept in the cell's ``run_id`` file (deeplab.paths): a resumed training job and the
evaluation stage reattach to that run rather than opening new ones.
"""
from __future__ import annotations

import json
import os
import time
import warnings
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any, Mapping

from deeplab import atomic
from deeplab.config import CellConfig
from deeplab.config import flatten as config_flatten
from deeplab.data.cityscapes_login import package_url
from deeplab.data.sources import ARCHIVES, CITYSCAPES_SERVER, ArchiveSpec
from deeplab.datasets import manifest_hash, read_split
from deeplab.paths import CellFiles
# The runs view that README's link opens (`...?viewStateShareKey=results`): MLflow's UI reads a shared view
# from the experiment tag `mlflow.sharedViewState.<key>` (JSON; columns are "<kind>.`<name>`"). Its runs
# table puts attribute columns before the metrics and sorts the metrics by name, and a fresh browser opens
# the assistant panel over the right third: with aAcc, mAcc, Dataset or Models selected too, mIoU is pushed
# out of a 1280 px window. So mIoU alone, best first; the rest is one click away (Columns, the Models tab).
VIEW_KEY = "results"
SHARED_VIEW = {"searchFilter": "", "orderByKey": "metrics.`mIoU`", "orderByAsc": False,
               "selectedColumns": ["metrics.`mIoU`"]}
EXPERIMENT_TAGS = {
    "mlflow.experimentKind": "custom_model_development",  # else MLflow 3 files them under "GenAI / Evaluation runs"
    f"mlflow.sharedViewState.{VIEW_KEY}": json.dumps(SHARED_VIEW)}
# The most characters MLflow's stores take as a dataset digest: a longer digest is cut to this prefix.
DATASET_DIGEST_CHARS = 36
# An unreachable HTTP server blocks ~245 s with MLflow's default retries: fail fast instead.
HTTP_DEFAULTS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": "5"}


def default_tracking_uri(project_root: str | Path) -> str:
    """``MLFLOW_TRACKING_URI`` if set, else an absolute SQLite file in the project root (four slashes)."""
    uri = os.environ.get("MLFLOW_TRACKING_URI")
    return uri if uri else f"sqlite:///{Path(project_root).resolve() / 'mlflow.db'}"


def artifact_root(uri: str, project_root: str | Path) -> str | None:
    """Absolute artifact location for local stores (``<root>/mlartifacts``); servers choose their own."""
    if uri.startswith(("http://", "https://", "databricks")):
        return None
    return (Path(project_root).resolve() / "mlartifacts").as_uri()


def flatten(config: Mapping[str, Any]) -> dict[str, str]:
    """Nested config -> ``{"train.lr": "0.01", ...}`` (MLflow params are strings)."""
    return {key: json.dumps(value) if isinstance(value, (list, dict)) else str(value)
            for key, value in config_flatten(config).items()}


def _mlflow() -> Any:
    for key, value in HTTP_DEFAULTS.items():
        os.environ.setdefault(key, value)
    import mlflow  # lazy: 3-4 s
    return mlflow


def init_store(uri: str, experiment: str, project_root: str | Path) -> str:
    """Create the store (schema migration) and the experiment once; return the experiment id. Raises
    on failure (see :func:`try_init_store`)."""
    client = _mlflow().MlflowClient(tracking_uri=uri)
    found = client.get_experiment_by_name(experiment)
    if found is not None:
        for key, value in EXPERIMENT_TAGS.items():
            if found.tags.get(key) != value:
                client.set_experiment_tag(found.experiment_id, key, value)
        return found.experiment_id
    return client.create_experiment(experiment, artifact_location=artifact_root(uri, project_root),
                                    tags=EXPERIMENT_TAGS)


def ui_link(ui_root: str, experiment_id: str) -> str:
    """The MLflow UI page of ``experiment_id`` in the model-training view with the saved results view."""
    return (f"{ui_root.rstrip('/')}/#/experiments/{experiment_id}/runs"
            f"?workflowType=machine_learning&viewStateShareKey={VIEW_KEY}")


def try_init_store(uri: str, experiment: str, project_root: str | Path) -> tuple[str | None, str | None]:
    """:func:`init_store`, except that a store that is down or refuses gives ``(None, reason)`` with one
    warning instead of an error: the files are the record, and every job retries the store itself."""
    try:
        return init_store(uri, experiment, project_root), None
    except Exception as exc:  # noqa: BLE001 (any failure of the store: tracking must never stop the DAG)
        reason = f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}"
        warnings.warn(f"MLflow store at {uri} is not available ({reason}); continuing without it: the "
                      "results' files are the record, and each job tries the store again", RuntimeWarning,
                      stacklevel=2)
        return None, reason


class Tracker:
    """Guarded MLflow run of one cell. With ``enabled=False`` (non-zero ranks) every call is a no-op."""

    def __init__(self, *, uri: str, experiment: str, cell_dir: str | Path, project_root: str | Path,
                 enabled: bool = True) -> None:
        self.uri, self.experiment, self.enabled = uri, experiment, enabled
        self.cell_dir, self.project_root = Path(cell_dir), Path(project_root)
        self.client: Any = None
        self.run_id: str | None = None
        self._queue = ThreadPoolExecutor(max_workers=1, thread_name_prefix="mlflow") if enabled else None
        self._started: Future | None = None
        self._monitor: Any = None

    def _submit(self, what: str, fn: Any, *args: Any) -> Future | None:
        """Queue ``fn`` on the tracking thread; calls run in submission order."""
        if self._queue is None or not self.enabled:
            return None
        return self._queue.submit(self._guard, what, fn, *args)

    def _guard(self, what: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
        if not self.enabled:
            return None
        try:
            return _retry_locked(fn, *args, **kwargs)
        except Exception as exc:  # tracking must never kill a job: warn once, go on with the files
            self.enabled = False
            warnings.warn(f"MLflow tracking at {self.uri} failed while trying to {what} ({type(exc).__name__}: "
                          f"{exc}); continuing without MLflow, the files in {self.cell_dir} are the record",
                          RuntimeWarning, stacklevel=3)
            return None

    def start(self, run_name: str, params: Mapping[str, Any] | None = None,
              tags: Mapping[str, str] | None = None) -> None:
        """Open (or reattach to) this cell's run in the background; log params when the run is new."""
        self._started = self._submit("start the run", self._start, run_name, params or {}, tags or {})

    def wait_run_id(self) -> str | None:
        """The run id once the run is open; None when tracking is off or failed."""
        if self._started is not None:
            self._started.result()
        return self.run_id

    def _start(self, run_name: str, params: Mapping[str, Any], tags: Mapping[str, str]) -> str:
        mlflow = _mlflow()
        self.client = mlflow.MlflowClient(tracking_uri=self.uri)
        id_file = Path(CellFiles(str(self.cell_dir)).run_id)
        if id_file.is_file() and self._reattach(id_file.read_text().strip()):
            pass
        else:
            experiment_id = init_store(self.uri, self.experiment, self.project_root)
            self.run_id = self.client.create_run(experiment_id, run_name=run_name).info.run_id
            atomic.write_text(id_file, self.run_id)
            params_list = [mlflow.entities.Param(k, v[:6000]) for k, v in flatten(params).items()]
            for i in range(0, len(params_list), 100):
                self.client.log_batch(self.run_id, params=params_list[i:i + 100])
        if tags:
            self.client.log_batch(self.run_id, tags=[mlflow.entities.RunTag(k, str(v)) for k, v in tags.items()])
        return self.run_id

    def _reattach(self, run_id: str) -> bool:
        """Reopen a stored run id; False when the store no longer knows it (e.g. a fresh database)."""
        from mlflow.exceptions import MlflowException
        try:
            self.client.get_run(run_id)
        except MlflowException as exc:
            if exc.error_code != "RESOURCE_DOES_NOT_EXIST":
                raise
            return False
        self.run_id = run_id
        self.client.update_run(run_id, status="RUNNING")
        return True

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        """Queued: never waits on the store."""
        self._submit("log metrics", self._log_metrics, dict(metrics), step)

    def _log_metrics(self, metrics: Mapping[str, float], step: int | None) -> None:
        if self.run_id is None:
            return
        from mlflow.entities import Metric
        now = int(time.time() * 1000)
        batch = [Metric(k, float(v), now, step or 0) for k, v in metrics.items()]
        self.client.log_batch(self.run_id, metrics=batch)  # synchronous on this thread: a failure is seen

    def set_tags(self, tags: Mapping[str, str]) -> None:
        """Queued: set (or overwrite) tags of the run."""
        self._submit("set tags", self._set_tags, {k: str(v) for k, v in tags.items()})

    def _set_tags(self, tags: Mapping[str, str]) -> None:
        if self.run_id is not None:
            from mlflow.entities import RunTag
            self.client.log_batch(self.run_id, tags=[RunTag(k, v) for k, v in tags.items()])

    def log_artifact(self, path: str | Path, folder: str | None = None) -> None:
        self._submit(f"upload {path}", self._log_artifact, str(path), folder)

    def _log_artifact(self, path: str, folder: str | None) -> None:
        if self.run_id is not None:
            self.client.log_artifact(self.run_id, path, folder)

    def log_dataset(self, name: str, digest: str, source: Mapping[str, Any], profile: Mapping[str, Any],
                    context: str) -> None:
        """Queued: a dataset input of the run (MLflow's Dataset column and the run page's Datasets): its
        ``name``, ``digest`` (cut to the store's DATASET_DIGEST_CHARS), where it came from (``source``) and
        its ``profile`` (shown as is), used for ``context`` ("training", "evaluation")."""
        self._submit(f"log dataset {name}", self._log_dataset, name, digest, dict(source), dict(profile), context)

    def _log_dataset(self, name: str, digest: str, source: dict[str, Any], profile: dict[str, Any],
                     context: str) -> None:
        if self.run_id is None:
            return
        from mlflow.entities import Dataset, DatasetInput, InputTag
        from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT
        dataset = Dataset(name=name, digest=digest[:DATASET_DIGEST_CHARS], source_type="archives",
                          source=json.dumps(source), profile=json.dumps(profile))
        self.client.log_inputs(self.run_id, [DatasetInput(dataset, [InputTag(MLFLOW_DATASET_CONTEXT, context)])])

    def monitor_system(self, interval_s: float) -> None:
        """Queued: log MLflow's system metrics (``system/...``) every ``interval_s`` until :meth:`end`
        (MLflow's MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL overrides it)."""
        self._submit("start logging system metrics", self._monitor_system, interval_s)

    def _monitor_system(self, interval_s: float) -> None:
        if self.run_id is None:
            return
        from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor
        self._monitor = SystemMetricsMonitor(self.run_id, sampling_interval=interval_s, resume_logging=True,
                                             tracking_uri=self.uri)  # resumed jobs go on at the next step
        self._monitor.start()

    def log_model(self, model: Any, example: Any, name: str, tags: Mapping[str, str],
                  registered_name: str | None = None) -> None:
        """Queued: ``model`` (a deeplab.serving.Segmenter) as the run's MLflow PyTorch model ``name``, with
        its signature, ``example`` and ``tags``; registered as a version of ``registered_name`` (with the
        same tags) when given, whose alias ``best`` then names the version with the highest mIoU."""
        self._submit("log the model", self._log_model, model, example, name, dict(tags), registered_name)

    def _log_model(self, model: Any, example: Any, name: str, tags: dict[str, str],
                   registered_name: str | None) -> None:
        if self.run_id is None:
            return
        mlflow = _mlflow()
        import mlflow.pytorch

        import deeplab
        from deeplab import serving
        mlflow.set_tracking_uri(self.uri)  # the logged model is created through the fluent API's store...
        mlflow.set_experiment(experiment_id=self.client.get_run(self.run_id).info.experiment_id)  # ...and experiment
        info = mlflow.pytorch.log_model(model, name=name, run_id=self.run_id, signature=serving.signature(),
                                        input_example=example, registered_model_name=registered_name, tags=tags,
                                        serialization_format="pickle", pip_requirements=serving.requirements(),
                                        code_paths=[str(Path(deeplab.__file__).parent)])
        if registered_name and info.registered_model_version is not None:
            for key, value in tags.items():
                self.client.set_model_version_tag(registered_name, str(info.registered_model_version), key, value)
            versions = self.client.search_model_versions(f"name='{registered_name}'")
            best = max(versions, key=lambda v: float(v.tags.get("mIoU", "-inf")))  # the cell's best seed so far
            self.client.set_registered_model_alias(registered_name, serving.BEST, str(best.version))

    def end(self, status: str = "FINISHED") -> None:
        """Mark the run ``FINISHED`` / ``FAILED`` / ``KILLED`` after everything queued, and wait for it."""
        if self._queue is None:
            return
        self._submit("finish the run", self._end, status)
        self._queue.shutdown(wait=True)
        self._queue = None

    def _end(self, status: str) -> None:
        if self._monitor is not None:
            self._monitor.finish()  # its last samples, before the run closes
        if self.run_id is None:
            return
        self.client.set_terminated(self.run_id, status=status)


LOCKED_RETRIES = 8        # SQLite "database is locked" (many jobs writing one file): tries before giving up
LOCKED_BACKOFF_S = 0.25   # first wait; doubled each try (about a minute in all)


def _retry_locked(fn: Any, *args: Any, **kwargs: Any) -> Any:
    """``fn(*args)``, retried with exponential backoff while SQLite says the database is locked (eight or
    more jobs of a multi-GPU host logging to one file); any other failure is raised at once."""
    for attempt in range(LOCKED_RETRIES + 1):
        try:
            return fn(*args, **kwargs)
        except Exception as exc:
            if "database is locked" not in str(exc) or attempt == LOCKED_RETRIES:
                raise
            time.sleep(LOCKED_BACKOFF_S * 2 ** attempt)
    raise AssertionError("unreachable")


def metric_key(name: str) -> str:
    """A class name as an MLflow metric key (letters, digits and ``_-. /`` only)."""
    return "".join(c if c.isalnum() or c in "_-. /" else "_" for c in name)


# ------------------------------------------------------------------------------------- dataset inputs
def log_split(tracker: Tracker, cfg: CellConfig, split: str, context: str) -> None:
    """The prepared ``split`` the run trains (``context`` "training") or is scored on ("evaluation") as an
    MLflow dataset input: named ``<dataset>/<split>``, the split's manifest hash as digest (the run's
    ``data_hash`` tag for the training split), the downloaded archives as source, and the number of images."""
    identity = manifest_hash(cfg.prepared_dir, split)
    tracker.log_dataset(f"{cfg.cell.dataset}/{split}", identity, archives_source(cfg),
                        {"images": len(read_split(cfg.prepared_dir, split)), "manifest_sha256": identity,
                         "prepared": cfg.prepared_dir}, context)


def official_url(spec: ArchiveSpec) -> str:
    """Where the catalogue fetches ``spec`` first: its first URL, or its Cityscapes login package's."""
    return spec.urls[0] if spec.urls else package_url(CITYSCAPES_SERVER, spec.cityscapes_package)


def archives_source(cfg: CellConfig) -> dict[str, object]:
    """Where the cell's dataset came from: each archive of its download manifest with its sha256 and
    where it was fetched (the catalogue's first URL for "catalogue"; a mirror, or "synthetic (seed 0)" for
    the smoke preset's), or the catalogue alone when the manifest is gone. A dataset of your own: its folder
    and the hash of its files that prepare recorded."""
    if cfg.data.folder:
        meta = Path(cfg.preset.paths.prepared_meta(cfg.cell.dataset))
        sources = json.loads(meta.read_text()).get("sources", {}) if meta.is_file() else {}
        return {"folder": cfg.data.source, "files_sha256": sources.get("files_sha256")}
    path = Path(cfg.preset.paths.dataset_manifest(cfg.cell.dataset))
    urls = {spec.filename: official_url(spec) for spec in ARCHIVES[cfg.cell.dataset]}
    if not path.is_file():
        return {"archives": [{"file": name, "url": url} for name, url in urls.items()]}
    entries = json.loads(path.read_text()).get("files", {})
    return {"archives": [{"file": name, "sha256": entry.get("sha256"),
                          "url": urls.get(name) if entry.get("source") == "catalogue" else entry.get("source")}
                         for name, entry in entries.items()]}
