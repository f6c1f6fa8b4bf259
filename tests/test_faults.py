"""Faults and bad input found by a hostile-input battery: each case failed before its fix.

A tracking store that is down never stops the DAG; a refused second copy of a cell touches nothing; a
damaged prepared file or an out-of-range label is named with the fix; temp files of killed writers are
removed; loader workers die with their job; many jobs logging to one SQLite store lose nothing.
"""
from __future__ import annotations

import json
import os
import signal
import socket
import stat
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

import pipeline.evaluate
import pipeline.init_tracking
import pipeline.train
from deeplab.checkpoint import FolderLock
from deeplab.config import load_params
from tests.dag_fixtures import alive
from tests.train_fixtures import ROOT, project, shrink_params  # noqa: F401  (fixture)

CELL = "voc-r50-os16"


@pytest.fixture
def silent_server() -> str:
    """An HTTP address that accepts connections and never answers."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    yield f"http://127.0.0.1:{listener.getsockname()[1]}"
    listener.close()


@pytest.mark.parametrize("kind", ["refused", "silent"])
def test_init_tracking_warns_and_succeeds_when_the_store_is_down(kind: str, project: Path, silent_server: str,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:9" if kind == "refused" else silent_server)
    monkeypatch.chdir(project)
    started = time.perf_counter()
    with pytest.warns(RuntimeWarning, match="not available"):
        assert pipeline.init_tracking.main(["--preset", "smoke"]) == 0
    marker = json.loads((project / load_params("params").preset("smoke").paths.tracking_marker()).read_text())
    assert marker["experiment_id"] is None and marker["problem"]
    assert time.perf_counter() - started < 60


def test_a_refused_second_copy_touches_nothing(project: Path, monkeypatch: pytest.MonkeyPatch,
                                               capsys: pytest.CaptureFixture) -> None:
    """The lock is taken before the config is written or the MLflow run is touched."""
    monkeypatch.chdir(project)
    files = load_params("params").preset("smoke").paths.cell(CELL)
    Path(files.config).parent.mkdir(parents=True)
    Path(files.config).write_text("the first copy's config\n")
    with FolderLock(Path(files.checkpoint).parent):
        assert pipeline.train.main(["--cell", CELL, "--preset", "smoke"]) == 2
    assert "another training process" in capsys.readouterr().err
    assert Path(files.config).read_text() == "the first copy's config\n"
    assert not Path(files.run_id).exists()  # no MLflow run opened or re-attached


def test_leftover_temp_files_are_removed_and_outputs_get_the_usual_mode(project: Path,
                                                                         monkeypatch: pytest.MonkeyPatch,
                                                                         capsys: pytest.CaptureFixture) -> None:
    monkeypatch.chdir(project)
    files = load_params("params").preset("smoke").paths.cell(CELL)
    checkpoint, model = Path(files.checkpoint), Path(files.model)
    checkpoint.parent.mkdir(parents=True)
    leftovers = [checkpoint.with_name(".last.pt.k2j3h4.tmp"), model.with_name(".model.pt.x8y9.tmp")]
    for path in leftovers:
        path.write_bytes(b"half a checkpoint")
    assert pipeline.train.main(["--cell", CELL, "--preset", "smoke"]) == 0
    assert not any(path.exists() for path in leftovers)
    assert "removed" in capsys.readouterr().err
    assert stat.S_IMODE(model.stat().st_mode) == 0o644


def _first_pair(project: Path, split: str) -> tuple[Path, Path]:
    prepared = project / load_params("params").preset("smoke").paths.prepared_dir("voc")
    image, label = (prepared / (prepared / "splits" / f"{split}.txt").read_text().split()[i] for i in (0, 1))
    return prepared / image, prepared / label


@pytest.mark.parametrize("workers", [0, 1])
def test_a_truncated_image_is_named_in_training(workers: int, project: Path, monkeypatch: pytest.MonkeyPatch,
                                                capsys: pytest.CaptureFixture) -> None:
    shrink_params(project / "params", train={"workers": workers})
    monkeypatch.chdir(project)
    image, _ = _first_pair(project, "train")
    image.write_bytes(image.read_bytes()[:200])
    assert pipeline.train.main(["--cell", CELL, "--preset", "smoke"]) == 2
    err = capsys.readouterr().err
    assert f"{image.name}: cannot be decoded" in err and "re-run the prepare stage" in err
    lines = [line for line in err.splitlines() if line.startswith("pipeline.train: error: ")]
    assert "Traceback" not in err and len(lines) == 1 and image.name in lines[0]


def test_a_garbage_label_is_named_in_evaluation(project: Path, monkeypatch: pytest.MonkeyPatch,
                                                capsys: pytest.CaptureFixture) -> None:
    monkeypatch.chdir(project)
    assert pipeline.train.main(["--cell", CELL, "--preset", "smoke"]) == 0
    _, label = _first_pair(project, "val")
    label.write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    assert pipeline.evaluate.main(["--cell", CELL, "--preset", "smoke"]) == 2
    err = capsys.readouterr().err
    assert f"{label.name}: cannot be decoded" in err and "Traceback" not in err


def test_training_checks_label_values_like_evaluation(project: Path, monkeypatch: pytest.MonkeyPatch,
                                                      capsys: pytest.CaptureFixture) -> None:
    """A value beyond the classes (5 here) in a corner no crop may ever see is refused all the same."""
    from PIL import Image
    import numpy as np
    monkeypatch.chdir(project)
    _, label = _first_pair(project, "train")
    values = np.asarray(Image.open(label)).copy()
    values[-1, -1] = 7
    Image.fromarray(values).save(label)
    assert pipeline.train.main(["--cell", CELL, "--preset", "smoke"]) == 2
    err = capsys.readouterr().err
    assert f"label {label.relative_to(project)} holds value 7" in err and "re-run the prepare stage" in err


WORKERS_SCRIPT = textwrap.dedent("""
    import os, sys, time
    import torch
    from torch.utils.data import DataLoader, Dataset
    from deeplab.datasets import worker_init

    class Slow(Dataset):
        def __len__(self): return 10**6
        def __getitem__(self, i):
            time.sleep(0.05)
            return os.getpid()

    pids = set()
    for pid in DataLoader(Slow(), batch_size=None, num_workers=2, worker_init_fn=worker_init):
        pids.add(int(pid))
        if len(pids) == 2:
            print(" ".join(map(str, sorted(pids))), flush=True)
            pids.add(-1)
""")


@pytest.mark.integration
def test_loader_workers_die_with_a_killed_job() -> None:
    """A job killed with SIGKILL must not leave workers holding its GPU slot (they used to linger 5-30 s)."""
    job = subprocess.Popen([sys.executable, "-c", WORKERS_SCRIPT], stdout=subprocess.PIPE, text=True,
                           env={**os.environ, "PYTHONPATH": str(ROOT)})
    workers = [int(pid) for pid in job.stdout.readline().split()]
    assert len(workers) == 2
    job.send_signal(signal.SIGKILL)
    job.wait()
    deadline = time.monotonic() + 2
    while time.monotonic() < deadline and any(alive(pid) for pid in workers):
        time.sleep(0.05)
    assert not any(alive(pid) for pid in workers)


CONCURRENT_LOGGER = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from deeplab.tracking import Tracker
    uri, experiment, folder, name, points = sys.argv[1], sys.argv[2], Path(sys.argv[3]), sys.argv[4], int(sys.argv[5])
    tracker = Tracker(uri=uri, experiment=experiment, cell_dir=folder / name, project_root=folder)
    tracker.start(name, params={"cell": name})
    tracker.wait_run_id()
    started = time.perf_counter()
    for step in range(points):
        tracker.log_metrics({"loss": float(step), "lr": 0.01}, step=step)
    tracker.end("FINISHED")
    print(time.perf_counter() - started)
""")


@pytest.mark.slow
def test_eight_jobs_logging_to_one_sqlite_store_lose_nothing(tmp_path: Path) -> None:
    """As on an 8-GPU host: 8 processes log at once to one SQLite file through the project's tracker;
    "database is locked" is retried with backoff, so every run and every point arrives."""
    from mlflow import MlflowClient
    from deeplab.tracking import init_store
    uri, experiment, jobs, points = f"sqlite:///{tmp_path / 'mlflow.db'}", "load", 8, 60
    experiment_id = init_store(uri, experiment, tmp_path)
    procs = [subprocess.Popen([sys.executable, "-c", CONCURRENT_LOGGER, uri, experiment, str(tmp_path), f"job{k}",
                               str(points)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              env={**os.environ, "PYTHONPATH": str(ROOT)}) for k in range(jobs)]
    outputs = [proc.communicate(timeout=600) for proc in procs]
    assert all("continuing without MLflow" not in err for _, err in outputs), [err for _, err in outputs]
    client = MlflowClient(uri)
    runs = client.search_runs([experiment_id])
    assert sorted(run.info.run_name for run in runs) == [f"job{k}" for k in range(jobs)]
    for run in runs:
        assert run.info.status == "FINISHED"
        assert [m.step for m in client.get_metric_history(run.info.run_id, "loss")] == list(range(points))
    seconds = max(float(out.strip().splitlines()[-1]) for out, _ in outputs)
    print(f"\n{jobs} jobs x {points} log calls (2 metrics each) into one SQLite store: "
          f"{jobs * points * 2 / seconds:.0f} metric points/s sustained")


def test_a_locked_database_is_retried_not_dropped(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """SQLite's "database is locked" is waited out (exponential backoff); the point arrives, no warning."""
    import warnings

    from mlflow.exceptions import MlflowException

    from deeplab import tracking
    monkeypatch.setattr(tracking, "LOCKED_BACKOFF_S", 0.001)
    tracker = tracking.Tracker(uri=os.environ["MLFLOW_TRACKING_URI"], experiment="exp", cell_dir=tmp_path / "c",
                               project_root=tmp_path)
    tracker.start("c")
    run_id = tracker.wait_run_id()
    real, failures = tracker.client.log_batch, [3]

    def locked_three_times(*args: object, **kwargs: object) -> object:
        if failures[0]:
            failures[0] -= 1
            raise MlflowException("(sqlite3.OperationalError) database is locked")
        return real(*args, **kwargs)
    tracker.client.log_batch = locked_three_times
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        tracker.log_metrics({"loss": 0.5}, step=7)
        tracker.end()
    assert not [w for w in caught if "continuing without MLflow" in str(w.message)] and failures == [0]
    history = tracker.client.get_metric_history(run_id, "loss")
    assert [(m.step, m.value) for m in history] == [(7, 0.5)]
