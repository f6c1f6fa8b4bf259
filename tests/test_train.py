"""Training stage: a few iterations per output stride, bit-exact kill-and-resume, the folder lock,
refusal of a checkpoint from another config, the NaN stop, gradient accumulation, learning."""
from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch
import yaml

import pipeline.evaluate
import pipeline.train
from deeplab.checkpoint import FolderLock
from deeplab.config import load_params
from deeplab.errors import PipelineError
from deeplab.schedule import build_optimizer, build_scheduler
from deeplab.model import build_model
from deeplab.train import State, save_checkpoint
from tests.train_fixtures import PYTHON, ROOT, project, run_stage, shrink_params, write_prepared  # noqa: F401

CELL = "voc-r50-os16"  # the cheaper stride for the tests that are not about the stride


def log_rows(cell_dir: Path) -> list[dict[str, str]]:
    with (cell_dir / "train_log.csv").open() as f:
        return list(csv.DictReader(f))


@pytest.mark.parametrize("cell", ["voc-r50-os8", "voc-r50-os16"])
def test_a_few_iterations_per_output_stride(project: Path, monkeypatch: pytest.MonkeyPatch, cell: str) -> None:
    if cell.endswith("os8"):  # same 2x2 layer4 map as OS16 at 32 px, at a quarter of the cost
        shrink_params(project / "params", crop=16)
    monkeypatch.chdir(project)
    assert pipeline.train.main(["--cell", cell, "--preset", "smoke", "--params", "params"]) == 0
    cell_dir = project / "results" / "smoke" / cell
    rows = log_rows(cell_dir)
    assert [int(r["iteration"]) for r in rows] == [1, 2, 3, 4]  # epochs 1 x floor(8 / 2)
    assert all(int(r["images"]) == 2 for r in rows) and float(rows[0]["lr"]) == 0.01
    assert float(rows[-1]["lr"]) < float(rows[0]["lr"])
    saved = torch.load(cell_dir / "model.pt", weights_only=True)
    assert saved["iteration"] == 4 and saved["cell"] == cell
    assert yaml.safe_load((cell_dir / "config.yaml").read_text())["cell"]["id"] == cell
    assert not (cell_dir / "checkpoints" / "last.pt").exists()  # superseded by model.pt


@pytest.mark.integration
def test_kill_and_resume_is_bit_identical(tmp_path: Path, params_dir: Path) -> None:
    """SIGKILL mid-run, restart, SIGTERM, restart: the final weights equal an uninterrupted run's."""
    # 6 x 3 iterations: a signal sent when the poll sees an odd iteration still lands inside the loop when a
    # loaded machine lets the poll lag a few iterations behind (with 9, one run ended first: exit -15)
    shrink_params(params_dir, train={"checkpoint_every": 2}, dataset={"epochs": 6})
    roots = []
    for name in ("straight", "interrupted"):
        root = tmp_path / name
        (root / "params").parent.mkdir(parents=True, exist_ok=True)
        (root / "params").symlink_to(params_dir)
        write_prepared(root / "data" / "smoke" / "prepared" / "voc", n_train=6, grayscale_every=3)
        roots.append(root)
    run_stage("train", "--cell", CELL, "--preset", "smoke", cwd=roots[0])
    cell_dir = roots[1] / "results" / "smoke" / CELL
    for signum in (signal.SIGKILL, signal.SIGTERM):
        process = start_train(roots[1])
        wait_for_progress(cell_dir, process)
        process.send_signal(signum)
        code = process.wait(timeout=120)
        assert not (cell_dir / "model.pt").exists(), "the run ended before it could be interrupted"
        assert code == (-signal.SIGKILL if signum == signal.SIGKILL else 128 + signal.SIGTERM), process.stderr.read()
    run_stage("train", "--cell", CELL, "--preset", "smoke", cwd=roots[1])
    straight = torch.load(roots[0] / "results" / "smoke" / CELL / "model.pt", weights_only=True)["state_dict"]
    resumed = torch.load(cell_dir / "model.pt", weights_only=True)["state_dict"]
    assert straight.keys() == resumed.keys()
    assert [k for k in straight if not torch.equal(straight[k], resumed[k])] == []
    assert [int(r["iteration"]) for r in log_rows(cell_dir)] == list(range(1, 19))


def start_train(root: Path) -> subprocess.Popen:
    env = {"PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"}
    import os
    return subprocess.Popen([PYTHON, "-m", "pipeline.train", "--cell", CELL, "--preset", "smoke"], cwd=root,
                            env={**os.environ, **env}, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_for_progress(cell_dir: Path, process: subprocess.Popen) -> None:
    """Until this process wrote a checkpoint (every 2 iterations) and logged an odd iteration after it,
    i.e. it is mid-way between two checkpoints."""
    deadline, started = time.time() + 180, time.time()
    checkpoint = cell_dir / "checkpoints" / "last.pt"
    while time.time() < deadline and process.poll() is None:
        if checkpoint.is_file() and checkpoint.stat().st_mtime > started and (cell_dir / "train_log.csv").is_file():
            rows = log_rows(cell_dir)
            if rows and int(rows[-1]["iteration"]) % 2 == 1:
                return
        time.sleep(0.05)
    raise AssertionError(f"no progress seen; exit {process.poll()}: {process.stderr.read() if process.poll() else ''}")


def test_second_copy_refuses_to_run(project: Path, monkeypatch: pytest.MonkeyPatch,
                                    capsys: pytest.CaptureFixture) -> None:
    monkeypatch.chdir(project)
    with FolderLock(project / "results" / "smoke" / CELL / "checkpoints"):
        assert pipeline.train.main(["--cell", CELL, "--preset", "smoke"]) == 2
    assert "another training process" in capsys.readouterr().err


def test_checkpoint_of_another_config_is_refused(project: Path, monkeypatch: pytest.MonkeyPatch,
                                                 capsys: pytest.CaptureFixture) -> None:
    monkeypatch.chdir(project)
    cfg = load_params("params").resolve(CELL, "smoke")
    model = build_model(cfg, torch.device("cpu"))
    optimizer = build_optimizer(model, cfg.train)
    state = State(model, optimizer, build_scheduler(optimizer, 4, cfg.train), torch.amp.GradScaler("cpu", enabled=False), 2)
    save_checkpoint(state, cfg, project / "results" / "smoke" / CELL / "checkpoints" / "last.pt")
    doc = yaml.safe_load((project / "params" / "train.yaml").read_text())
    doc["train"]["lr"] = 0.02
    (project / "params" / "train.yaml").write_text(yaml.safe_dump(doc))
    assert pipeline.train.main(["--cell", CELL, "--preset", "smoke"]) == 2
    err = capsys.readouterr().err
    assert "different resolved config" in err and "train.lr: 0.01 -> 0.02" in err


def test_nan_loss_stops_naming_iteration_and_checkpoint(project: Path, monkeypatch: pytest.MonkeyPatch,
                                                        capsys: pytest.CaptureFixture) -> None:
    monkeypatch.chdir(project)
    from deeplab import train as engine
    real, calls = engine.criterion, []

    def poisoned(outputs, labels, **kwargs):  # noqa: ANN001, ANN003, ANN202
        calls.append(1)
        losses = real(outputs, labels, **kwargs)
        return {k: v * float("nan") for k, v in losses.items()} if len(calls) >= 3 else losses
    monkeypatch.setattr(engine, "criterion", poisoned)
    assert pipeline.train.main(["--cell", CELL, "--preset", "smoke"]) == 1
    err = capsys.readouterr().err
    assert "NaN/inf at iteration 3" in err and "last.pt (iteration 2)" in err
    assert not (project / "results" / "smoke" / CELL / "model.pt").exists()


def test_gradient_accumulation_keeps_the_global_batch(project: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    shrink_params(project / "params", batch=4, train={"max_micro_batch": 2})
    monkeypatch.chdir(project)
    from deeplab import train as engine
    sizes: list[list[int]] = []
    real = engine.train_iteration
    monkeypatch.setattr(engine, "train_iteration",
                        lambda model, micro, *a, **k: sizes.append([len(m["label"]) for m in micro]) or real(model, micro, *a, **k))
    assert pipeline.train.main(["--cell", "voc-r50-os16", "--preset", "smoke"]) == 0
    assert sizes == [[2, 2]] * 2
    assert [int(r["images"]) for r in log_rows(project / "results" / "smoke" / "voc-r50-os16")] == [4, 4]


@pytest.mark.slow
def test_learns_synthetic_data(tmp_path: Path, params_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """200 iterations on bright shapes on black beat chance (~35% mIoU for 2 classes) by a wide margin.
    From scratch at the recipe's lr, a network needs this many steps even for this task: minutes on
    2 cores, hence ``slow``. Images are drawn at the crop's scale (no random rescale) to spare compute.
    With the reference's per-image loss normalisation (groups of 1 image at this batch) it reached 51.5 after
    150 iterations and 57.0 after 200 (it was 61 after 150 with the batch-wide pixel mean); 50 keeps a margin
    for the run-to-run noise of non-deterministic kernels."""
    shrink_params(params_dir, crop=16, batch=8, epochs=100,
                  train={"checkpoint_every": 1000, "log_every": 25, "deterministic": False},
                  dataset={"num_classes": 2, "ratio_range": [1.0, 1.0]}, model={"backbone_width": 64})
    write_prepared(tmp_path / "data" / "smoke" / "prepared" / "voc", num_classes=2, n_train=16, n_val=4,
                   size=(24, 32))
    monkeypatch.chdir(tmp_path)
    assert pipeline.train.main(["--cell", "voc-r50-os16", "--preset", "smoke"]) == 0
    assert pipeline.evaluate.main(["--cell", "voc-r50-os16", "--preset", "smoke"]) == 0
    metrics = json.loads((tmp_path / "results" / "smoke" / "voc-r50-os16" / "metrics.json").read_text())
    assert metrics["mIoU"] > 50, metrics


def test_compiled_training_step_equals_eager(project: Path) -> None:
    """train.compile traces the training step in one graph (fullgraph=True fails on any graph break; aot_eager
    traces forward and backward as inductor would, whose C++ build takes minutes on 2 cores, so inductor runs
    only when asked: DEEPLAB_TEST_INDUCTOR=1): one step's loss and every gradient equal eager mode's within
    float tolerance, and the checkpointed model is the bare one. (Over several steps from scratch on 2-image
    batches, rounding differences grow chaotically, so a step is the unit compared; dropout is off: a traced
    graph draws masks from another random stream.)"""
    import copy
    import dataclasses

    from deeplab.distributed import Context
    from deeplab.model import build_model
    from deeplab.train import State, train_iteration
    from deeplab.transforms import Photometric
    shrink_params(project / "params")
    base = load_params(project / "params").resolve(CELL, "smoke")
    cfg = dataclasses.replace(base, model=dataclasses.replace(base.model, dropout=0.0))
    torch.manual_seed(0)
    eager = build_model(cfg, torch.device("cpu")).train()
    compiled_source = copy.deepcopy(eager)
    gen = torch.Generator().manual_seed(1)
    batch = {"image": torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8, generator=gen),
             "label": torch.randint(0, 5, (2, 32, 32), dtype=torch.uint8, generator=gen),
             "valid": torch.tensor([[0, 0, 32, 32]] * 2), "photometric": torch.stack([Photometric().as_tensor()] * 2)}
    ctx = Context(rank=0, world=1, local_rank=0, device=torch.device("cpu"))
    results = []
    backend = "inductor" if os.environ.get("DEEPLAB_TEST_INDUCTOR") == "1" else "aot_eager"
    for model in (eager, torch.compile(compiled_source, backend=backend, fullgraph=True)):
        optimizer = torch.optim.SGD(model.parameters(), lr=0.0)
        losses = train_iteration(model, [batch], optimizer, torch.amp.GradScaler("cpu", enabled=False), cfg, ctx, None)
        results.append((losses, {n: p.grad for n, p in model.named_parameters()}))
    (eager_losses, eager_grads), (compiled_losses, compiled_grads) = results
    torch.testing.assert_close(compiled_losses, eager_losses, rtol=1e-5, atol=1e-6)
    assert {n.removeprefix("_orig_mod.") for n in compiled_grads} == set(eager_grads)
    for name, grad in compiled_grads.items():  # relative to the gradient's norm: single elements near 0 vary more
        reference = eager_grads[name.removeprefix("_orig_mod.")]
        assert (grad - reference).norm() <= 1e-4 * reference.norm() + 1e-8, name
    state = State(torch.compile(copy.deepcopy(eager), backend="aot_eager"), optimizer, None, None)  # type: ignore[arg-type]
    assert set(state.bare_model().state_dict()) == set(eager.state_dict())  # checkpoints hold the bare model


def test_a_resume_under_other_versions_warns_naming_both(project: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Bit-equality across torch/CUDA versions is not promised: resuming a checkpoint written under another
    torch says so, naming both, and training still ends with its results written."""
    monkeypatch.chdir(project)
    cfg = load_params("params").resolve(CELL, "smoke")
    model = build_model(cfg, torch.device("cpu"))
    optimizer = build_optimizer(model, cfg.train)
    state = State(model, optimizer, build_scheduler(optimizer, 4, cfg.train), torch.amp.GradScaler("cpu", enabled=False), 2)
    checkpoint = project / cfg.files.checkpoint
    save_checkpoint(state, cfg, checkpoint)
    saved = torch.load(checkpoint, weights_only=True)
    saved["environment"] = {**saved["environment"], "torch": "2.9.0+cu126", "cuda": "12.6"}
    torch.save(saved, checkpoint)
    with pytest.warns(RuntimeWarning, match=r"'torch': '2\.9\.0\+cu126'.*resumed under .*'torch': '" +
                      torch.__version__.replace("+", r"\+")):
        assert pipeline.train.main(["--cell", CELL, "--preset", "smoke"]) == 0
    assert (project / cfg.files.model).is_file()



class Planted:
    """An object a results folder shared with others could carry in a checkpoint: unpickling it runs code."""

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (print, ("code ran while loading",))


def test_a_checkpoint_or_model_holding_a_pickled_object_is_refused(project: Path, monkeypatch: pytest.MonkeyPatch,
                                                                   capsys: pytest.CaptureFixture) -> None:
    """Every file the project writes loads with weights_only=True (the checkpoint's RNG states too); one that
    carries an object is refused by name before anything of it runs: on resume and where model.pt is read."""
    monkeypatch.chdir(project)
    cfg = load_params("params").resolve(CELL, "smoke")
    model = build_model(cfg, torch.device("cpu"))
    optimizer = build_optimizer(model, cfg.train)
    state = State(model, optimizer, build_scheduler(optimizer, 4, cfg.train), torch.amp.GradScaler("cpu", enabled=False), 2)
    checkpoint = project / cfg.files.checkpoint
    save_checkpoint(state, cfg, checkpoint)
    saved = torch.load(checkpoint, weights_only=True)  # what we write needs nothing else
    torch.save({**saved, "extra": Planted()}, checkpoint)
    assert pipeline.train.main(["--cell", CELL, "--preset", "smoke"]) == 2
    out = capsys.readouterr()
    assert "code ran" not in out.out and f"{cfg.files.checkpoint}: refused" in out.err
    checkpoint.unlink()
    torch.save({"state_dict": model.state_dict(), "extra": Planted()}, project / cfg.files.model)
    from deeplab.model import load_trained
    with pytest.raises(PipelineError, match="refused: it holds objects"):
        load_trained(cfg, project / cfg.files.model, torch.device("cpu"))
    assert "code ran" not in capsys.readouterr().out

# Modules of the training closure that hold declarations only (no function of theirs needs to run): their
# constants and classes are what training uses of them.
DECLARATIONS = {"deeplab/__init__.py", "deeplab/data/__init__.py", "pipeline/__init__.py",
                "deeplab/errors.py",        # the error classes a training job would raise
                "deeplab/data/labels.py",   # IGNORE_INDEX
                "deeplab/data/sources.py",  # the ImageNet checkpoints' file names
                "deeplab/flops.py"}         # the reference model's counts, which deeplab.model re-exports
# ... and those a training runs on a GPU only (this test trains on the CPU, which takes its whole share at once)
ON_GPU = {"deeplab/autofit.py", "deeplab/memory.py"}  # the micro-batch that fits the GPU's memory, and its plan


def test_the_training_closure_is_the_code_a_training_runs(project: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """DVC's training stages depend on the modules pipeline.train imports (pipeline.dvc_presets); each of
    them must be code a training run executes (a function of it called), so that an edit of code training
    never runs (evaluation protocols, the reference's checkpoints and cost table, the plots) retrains nothing.
    The import graph has no circle."""
    import sys
    import threading

    from deeplab.codedeps import code_closure, imported_modules, module_file
    from tests.test_reference_log import place_log
    monkeypatch.chdir(project)
    place_log(project, [3.0, 2.9, 2.8, 2.7])  # the reference's log of the cell, as the full preset fetches it
    called: set[str] = set()

    def profile(frame, event, arg):  # noqa: ANN001, ANN202
        if event == "call":
            called.add(frame.f_code.co_filename)
    sys.setprofile(profile)
    threading.setprofile(profile)
    try:
        assert pipeline.train.main(["--cell", CELL, "--preset", "smoke", "--params", "params"]) == 0
    finally:
        sys.setprofile(None)
        threading.setprofile(None)  # type: ignore[arg-type]
    executed = {str(Path(name).resolve().relative_to(ROOT)) for name in called
                if Path(name).resolve().is_relative_to(ROOT)}
    closure = set(code_closure(["pipeline.train"], ROOT))
    assert closure - executed - DECLARATIONS - ON_GPU == set()
    assert {"deeplab/evaluate.py", "deeplab/reference.py", "deeplab/plots.py"}.isdisjoint(closure)
    from deeplab.codedeps import BOOKKEEPING, stage_code
    numerics = set(stage_code(["pipeline.train"], ROOT))  # what the DAG retrains on: the closure less bookkeeping
    assert numerics == closure - set(BOOKKEEPING) and all((ROOT / path).is_file() for path in BOOKKEEPING)
    assert {"deeplab/model.py", "deeplab/backbone.py", "deeplab/losses.py", "deeplab/transforms.py",
            "deeplab/datasets.py", "deeplab/train.py", "deeplab/schedule.py", "deeplab/precision.py",
            "deeplab/distributed.py"} <= numerics
    assert {"deeplab/config.py", "deeplab/errors.py", "deeplab/paths.py", "deeplab/jobs.py"}.isdisjoint(numerics)
    for path in sorted(closure | {"deeplab/data/arrays.py", "deeplab/data/prepare.py"}):  # no import circle
        todo, seen = [path], set()
        while todo:
            module = todo.pop()
            for name in imported_modules(Path(module), ROOT):
                found = str(module_file(name, ROOT))
                assert found != path, f"{path} imports itself through {module}"
                if found not in seen and found.endswith(".py") and not found.endswith("__init__.py"):
                    seen.add(found)
                    todo.append(found)
