"""Auto-fit of the micro-batch and the out-of-memory retry, on CPU: a pretend GPU memory drives the same
code a GPU does (the plan's first guess, trial steps), and the weights equal a run configured by hand."""
from __future__ import annotations

import csv
from pathlib import Path

import pytest
import torch

import pipeline.train
from deeplab import train as engine
from deeplab.autofit import OutOfMemory, choose
from deeplab.config import load_params
from deeplab.memory import GIB, Line
from tests.train_fixtures import project, shrink_params  # noqa: F401  (fixture)

CELL = "voc-r50-os16"


class PretendMemory:
    """A GPU on which a micro-batch fits up to ``fits`` images; records the trials."""

    def __init__(self, fits: int, free_gib: float = 100.0) -> None:
        self.fits, self.free, self.trials = fits, free_gib, []

    def free_bytes(self) -> int:
        return int(self.free * GIB)

    def trial(self, micro_batch: int) -> bool:
        self.trials.append(micro_batch)
        return micro_batch <= self.fits


def test_the_plan_gives_the_first_guess_and_a_trial_confirms_it() -> None:
    line = Line(fixed=1 * GIB, per_image=1 * GIB)
    exact = PretendMemory(fits=4, free_gib=7.0)      # the plan's choice for 7 GiB free: 4 images (5 x 1.1 + 1.5)
    assert choose(16, exact, line, log=lambda _: None) == 4 and exact.trials == [4]  # one trial
    optimistic = PretendMemory(fits=2, free_gib=7.0)  # the real GPU holds less than planned: the next smaller
    assert choose(16, optimistic, line, log=lambda _: None) == 2 and optimistic.trials == [4, 2]
    assert choose(16, PretendMemory(fits=16), None, log=lambda _: None) == 16  # no plan: largest first
    with pytest.raises(OutOfMemory, match="not even a micro-batch of 2 images fits"):
        choose(16, PretendMemory(fits=1, free_gib=7.0), line, log=lambda _: None)


def _weights(project: Path) -> dict[str, torch.Tensor]:
    cfg = load_params(project / "params").resolve(CELL, "smoke")
    return torch.load(project / cfg.files.model, weights_only=True)["state_dict"]


def _log(project: Path) -> list[dict[str, str]]:
    cfg = load_params(project / "params").resolve(CELL, "smoke")
    with (project / cfg.files.train_log).open() as f:
        return list(csv.DictReader(f))


def _train(project: Path, monkeypatch: pytest.MonkeyPatch, max_micro_batch: object) -> dict[str, torch.Tensor]:
    shrink_params(project / "params", batch=4, train={"max_micro_batch": max_micro_batch})
    monkeypatch.chdir(project)
    assert pipeline.train.main(["--cell", CELL, "--preset", "smoke"]) == 0
    return _weights(project)


def test_auto_fit_under_a_memory_limit_equals_the_hand_configured_run(project: Path, tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch,
                                                                       capsys: pytest.CaptureFixture) -> None:
    memory = PretendMemory(fits=2)
    real = engine.micro_batch_for
    monkeypatch.setattr(engine, "micro_batch_for", lambda cfg, ctx, model, dtype, _=None: real(cfg, ctx, model, dtype, memory))
    auto = _train(project, monkeypatch, "auto")
    assert memory.trials == [4, 2] and "auto-fit: micro-batch 2 of 4 images per GPU (2 accumulation steps)" in \
        capsys.readouterr().out
    assert {row["micro_batch"] for row in _log(project)} == {"2"}
    monkeypatch.undo()
    import shutil
    shutil.rmtree(project / "results")
    by_hand = _train(project, monkeypatch, 2)
    assert all(torch.equal(auto[k], by_hand[k]) for k in by_hand)


def test_a_step_out_of_memory_is_retried_with_half_the_micro_batch(project: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Out of memory half-way through a step (after the forward pass moved BatchNorm's statistics): the step
    is retried with 2 images from the same state, a warning names the iteration and the size, and the run
    ends bit-identical to one configured with 2 from the start."""
    real, seen = engine.criterion, []

    def oom_on_the_first_full_batch(outputs, labels, **kwargs):  # noqa: ANN001, ANN202
        if len(labels) == 4 and not seen:
            seen.append(1)
            raise torch.OutOfMemoryError("CUDA out of memory (pretend)")
        return real(outputs, labels, **kwargs)
    monkeypatch.setattr(engine, "criterion", oom_on_the_first_full_batch)
    shrink_params(project / "params", batch=4, train={"max_micro_batch": 0})
    monkeypatch.chdir(project)
    with pytest.warns(RuntimeWarning, match="out of memory at iteration 1 with a micro-batch of 4 images; "
                                            "retrying it and going on with 2"):
        assert pipeline.train.main(["--cell", CELL, "--preset", "smoke"]) == 0
    assert seen and [row["micro_batch"] for row in _log(project)] == ["2", "2"]
    retried = _weights(project)
    monkeypatch.undo()
    import shutil
    shutil.rmtree(project / "results")
    by_hand = _train(project, monkeypatch, 2)
    assert all(torch.equal(retried[k], by_hand[k]) for k in by_hand)


def test_a_run_whose_batchnorm_sees_fewer_images_is_warned_recorded_and_footnoted(
        project: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """train.max_micro_batch 2 of a batch of 4: one warning before training, batchnorm_images 2 in the
    training log, metrics.json and the MLflow run, and the table's row carries † with its note."""
    import json

    import pipeline.evaluate
    import pipeline.table
    shrink_params(project / "params", batch=4, train={"max_micro_batch": 2})
    monkeypatch.chdir(project)
    with pytest.warns(RuntimeWarning, match=r"BatchNorm normalises over 2 images per statistic \(micro-batch 2 x 2 "
                                            r"accumulation steps\), the reference over 4") as seen:
        assert pipeline.train.main(["--cell", CELL, "--preset", "smoke"]) == 0
    assert len([w for w in seen if "BatchNorm normalises" in str(w.message)]) == 1
    assert {row["batchnorm_images"] for row in _log(project)} == {"2"}
    assert pipeline.evaluate.main(["--cell", CELL, "--preset", "smoke"]) == 0
    cfg = load_params("params").resolve(CELL, "smoke")
    doc = json.loads(Path(cfg.files.metrics).read_text())
    assert doc["batchnorm_images"] == 2 and doc["reference_batchnorm_images"] == 4
    from mlflow import MlflowClient
    assert MlflowClient().get_run(doc["provenance"]["mlflow_run_id"]).data.metrics["batchnorm_images"] == 2
    assert pipeline.table.main(["--preset", "smoke"]) == 0
    table = Path(cfg.preset.paths.table()).read_text()
    row = next(line for line in table.splitlines() if "OS=16" in line and "%" in line and "†" in line)
    assert "-" not in row.split("|")[5]  # a measured mIoU, marked
    assert "† BatchNorm normalised over fewer images per statistic than the reference's" in table
    assert f"{CELL} seed 0 2 (reference 4)" in table or f"{CELL} 2 (reference 4)" in table
