"""The reference's training log as a yardstick for a smoke cell: its learning rate must be ours at every
iteration it logged, its curve goes into the cell's MLflow run and learning-curve plot, and a loss that
stays above its band gives one warning. The log is written by the test in the reference's format."""
from __future__ import annotations

import os
import warnings
from pathlib import Path

import pytest

import pipeline.evaluate
import pipeline.train
from deeplab import plots, reference, reference_log
from deeplab.config import load_params
from deeplab.schedule import poly_lr
from tests.train_fixtures import project, shrink_params  # noqa: F401  (fixture)

CELL = "voc-r50-os16"
ROW = ("2023-03-0{day} 10:00:{second:02d} INFO  {{'cur_epoch': 1, 'max_epochs': 2, 'cur_iter': {it}, 'max_iters': {max_it}, "
       "'segmentor': 'Deeplabv3Plus', 'learning_rate': {lr!r}, 'ema': False, 'fp16': False, 'loss_cls': {cls!r}, "
       "'loss_aux': {aux!r}, 'loss_total': {total!r}, 'max_gpu_alloc_GB': 9.5}}")


def place_log(project: Path, losses: list[float], lr_at: dict[int, float] | None = None) -> list[dict[str, str]]:
    """A reference log for the project's smoke schedule, parsed into the place reference_eval writes it."""
    cfg = load_params(project / "params").resolve(CELL, "smoke")
    max_iters, train = len(losses), cfg.train
    lines = [ROW.format(day=1, second=2 * k, it=k, max_it=max_iters, cls=0.7 * loss, aux=0.75 * loss, total=loss,
                        lr=(lr_at or {}).get(k, poly_lr(k - 1, max_iters, lr=train.lr, min_lr=train.min_lr,
                                                        power=train.poly_power)))
             for k, loss in enumerate(losses, start=1)]
    raw = project / "ref.log"
    raw.write_text("2023-03-01 09:59:00 INFO  Config file path: deeplabv3plus_resnet50os16_voc.py\n" + "\n".join(lines) + "\n")
    target = project / cfg.preset.paths.reference_run(CELL).reference_log
    target.parent.mkdir(parents=True, exist_ok=True)
    reference.write_log(reference.parse_log(raw), target)
    return reference_log.read_log_csv(target)


def test_its_curve_goes_into_the_run_and_the_plot(project: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    shrink_params(project / "params", epochs=2, train={"lr": 0.01})  # 8 iterations, a log row each
    monkeypatch.chdir(project)
    rows = place_log(project, [3.0, 2.9, 2.8, 2.7, 2.6, 2.5, 2.4, 2.3])  # our loss stays below 110 % of these
    drawn = []
    real = plots.learning_curves
    monkeypatch.setattr(plots, "learning_curves", lambda *a, **k: drawn.append(k.get("reference")) or real(*a, **k))
    assert pipeline.train.main(["--cell", CELL, "--preset", "smoke"]) == 0
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        assert pipeline.evaluate.main(["--cell", CELL, "--preset", "smoke"]) == 0
    assert not [w for w in seen if "above the reference's" in str(w.message)]
    assert drawn == [rows]
    from mlflow import MlflowClient
    client = MlflowClient(os.environ["MLFLOW_TRACKING_URI"])
    run_id = (project / "results" / "smoke" / CELL / "mlflow_run_id").read_text()
    history = client.get_metric_history(run_id, "reference/loss_total")
    assert [(m.step, m.value) for m in history] == [(k, v) for k, v in enumerate([3.0, 2.9, 2.8, 2.7, 2.6, 2.5, 2.4, 2.3], 1)]
    assert [m.step for m in client.get_metric_history(run_id, "reference/learning_rate")] == list(range(1, 9))
    assert reference.spent(project / "results/smoke/reference" / CELL / "reference_log.csv", 8).seconds_per_iter == 2.0


def test_a_loss_above_its_band_warns_once_naming_the_iteration(project: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    shrink_params(project / "params", epochs=2, train={"lr": 0.01})
    monkeypatch.chdir(project)
    place_log(project, [0.01] * 8)  # a reference far below anything 8 steps reach
    assert pipeline.train.main(["--cell", CELL, "--preset", "smoke"]) == 0
    with pytest.warns(RuntimeWarning, match=r"from iteration 1 the training loss stayed more than 10% above") as seen:
        assert pipeline.evaluate.main(["--cell", CELL, "--preset", "smoke"]) == 0
    assert len([w for w in seen if "above the reference's" in str(w.message)]) == 1


def test_a_learning_rate_other_than_its_stops_training_before_it_starts(project: Path, monkeypatch: pytest.MonkeyPatch,
                                                                         capsys: pytest.CaptureFixture) -> None:
    shrink_params(project / "params", epochs=2, train={"lr": 0.01})
    monkeypatch.chdir(project)
    place_log(project, [3.0] * 8, lr_at={6: 0.0123})
    assert pipeline.train.main(["--cell", CELL, "--preset", "smoke"]) == 2
    err = capsys.readouterr().err
    assert "learning rate at iteration 6: ours" in err and "the reference's 0.0123" in err
    assert not (project / "results" / "smoke" / CELL / "train_log.csv").exists()


def test_what_its_log_says_it_spent_fills_readmes_cost_and_memory_columns(project: Path) -> None:
    from deeplab.budget import cost_frame
    place_log(project, [3.0] * 8)  # rows 2 s apart, 9.5 GB per GPU
    params = load_params(project / "params")
    spent = reference.spent_by_cell(params, "smoke", project)
    assert spent[CELL] == reference.Spent(seconds_per_iter=2.0, max_gpu_gb=9.5, max_iters=8, gpus=8) and spent["voc-r50-os8"] is None
    frame = cost_frame(params, "smoke", {}, spent).set_index("cell")["reference GPU-hours (its log)"]
    assert frame[CELL] == f"{2.0 * 8 * 8 / 3600:.1f} (2.00 s/it x 8)" and frame["voc-r50-os8"] == "-"


@pytest.mark.parametrize("stop", [False, True])
def test_training_itself_warns_and_stops_when_asked_at_the_window_the_band_says(
        stop: bool, project: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    """A reference far below us: at the 5th log window above its band (iteration 5 with a row per
    iteration) training warns once and tags its MLflow run; with train.stop_when_diverging it writes a
    checkpoint at that iteration and stops (exit 1) naming the reason, else it trains to the end."""
    shrink_params(project / "params", epochs=2, train={"lr": 0.01, "stop_when_diverging": stop, "checkpoint_every": 100})
    monkeypatch.chdir(project)
    place_log(project, [0.01] * 8)
    with pytest.warns(RuntimeWarning, match=r"from iteration 1 the training loss stayed more than 10% above the "
                                            r"reference's for 5 log windows \(up to iteration 5") as seen:
        code = pipeline.train.main(["--cell", CELL, "--preset", "smoke"])
    assert len([w for w in seen if "above the reference's" in str(w.message)]) == 1
    cfg = load_params(project / "params").resolve(CELL, "smoke")
    from mlflow import MlflowClient
    run_id = (project / cfg.files.run_id).read_text()
    run = MlflowClient(os.environ["MLFLOW_TRACKING_URI"]).get_run(run_id)
    assert "from iteration 1" in run.data.tags["diverging_from_reference"]
    if not stop:
        assert code == 0 and (project / cfg.files.model).is_file()
        return
    import torch
    assert code == 1 and "stopped at iteration 5 (train.stop_when_diverging)" in capsys.readouterr().err
    assert torch.load(project / cfg.files.checkpoint, weights_only=True)["iteration"] == 5
    assert not (project / cfg.files.model).exists() and run.info.status == "FAILED"


def test_the_dag_fetches_the_log_and_a_failed_fetch_only_turns_the_yardstick_off(
        project: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """pipeline.download --reference-log (the DAG's step before a cell trains, where the preset compares with
    the reference): a log it can fetch is parsed into reference_log.csv and pinned; one it cannot is a warning
    line, exit 0 and a header alone, and the training then warns once that its yardstick is off and how to
    fetch the log, and trains. reference_log.json, what training waits for, is the same either way."""
    import json
    import shutil

    import pipeline.download
    from tests.data_fixtures import Script, _FileHandler, _serve
    from tests.test_reference_eval import reference_log as log_text
    shrink_params(project / "params")
    monkeypatch.chdir(project)
    files = load_params(project / "params").preset("smoke").paths.reference_run(CELL)
    served = _serve(_FileHandler, "script", Script())
    url, script = next(served)
    try:
        script.files["/deeplabv3plus_resnet50os16_voc.log"] = log_text([50, 100, 150]).encode()
        args = ["--reference-log", CELL, "--preset", "smoke", "--source", url]
        assert pipeline.download.main(args) == 0
        assert [r["iteration"] for r in reference_log.read_log_csv(Path(files.reference_log))] == ["50", "100", "150"]
        asset = Path(files.reference_log_asset).read_text()
        assert json.loads(asset)["asset"] == "deeplabv3plus_resnet50os16_voc.log"
        pins = json.loads((project / "data/smoke/raw/reference/pins.json").read_text())
        assert "deeplabv3plus_resnet50os16_voc.log" in pins
        shutil.rmtree(files.dir)
        (project / "data/smoke/raw/reference/deeplabv3plus_resnet50os16_voc.log").unlink()
        del script.files["/deeplabv3plus_resnet50os16_voc.log"]  # the store answers 404
        capsys.readouterr()
        assert pipeline.download.main(args) == 0
        out = capsys.readouterr().out
        assert "warning: the reference's training log of voc-r50-os16 could not be fetched" in out
        assert f"python -m pipeline.download --reference-log {CELL} --preset smoke" in out
        assert reference_log.read_log_csv(Path(files.reference_log)) == [] and Path(files.reference_log_asset).read_text() == asset
    finally:
        next(served, None)
    presets = project / "params" / "presets.yaml"  # the smoke preset compares with the reference, as the full one
    presets.write_text(presets.read_text().replace("schedule_must_match_reference: false",
                                                   "schedule_must_match_reference: true", 1))
    with pytest.warns(RuntimeWarning, match=r"the yardstick is off: the reference's training log of voc-r50-os16 is not "
                                            r"in .*reference_log.csv .*python -m pipeline.download --reference-log") as seen:
        assert pipeline.train.main(["--cell", CELL, "--preset", "smoke"]) == 0
    assert len([w for w in seen if "yardstick is off" in str(w.message)]) == 1
