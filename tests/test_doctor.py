"""pipeline.doctor: one line per check, FAIL where the preset's run would stop or waste GPU time, and an
exit code that says whether anything blocks; here (no GPU, no data, no Cityscapes account) the full preset
fails on the GPU and on Cityscapes, the smoke preset passes."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from deeplab import doctor
from deeplab.config import load_params
from tests.train_fixtures import ROOT

PARAMS = load_params(ROOT / "params")


def run_doctor(preset: str, cwd: Path, *args: str, **env: str) -> subprocess.CompletedProcess:
    shutil.copytree(ROOT / "params", cwd / "params", dirs_exist_ok=True)
    shutil.copy(ROOT / "requirements.lock", cwd / "requirements.lock")
    clean = {k: v for k, v in os.environ.items() if not k.startswith("CITYSCAPES_")}
    full_env = {**clean, "PYTHONPATH": str(ROOT), "CUDA_VISIBLE_DEVICES": "", "XDG_DATA_HOME": str(cwd / "xdg"),
                "MLFLOW_TRACKING_URI": f"sqlite:///{cwd / 'mlflow.db'}", **env}
    return subprocess.run([sys.executable, "-m", "pipeline.doctor", "--preset", preset, *args], cwd=cwd, env=full_env,
                          capture_output=True, text=True, timeout=120)


def lines(result: subprocess.CompletedProcess) -> dict[str, str]:
    """check name -> status, from the one-line-per-check screen."""
    found = {}
    for line in result.stdout.splitlines():
        status, _, rest = line.partition("  ")
        if status.strip() in ("OK", "WARN", "FAIL"):
            found[rest.strip().split("  ")[0].strip()] = status.strip()
    return found


def test_the_full_preset_here_fails_on_the_gpu_and_cityscapes_and_writes_nothing(tmp_path: Path) -> None:
    result = run_doctor("full", tmp_path)
    assert result.returncode == 1, result.stdout + result.stderr
    status = lines(result)
    assert status["gpu"] == "FAIL" and status["data cityscapes"] == "FAIL", result.stdout
    assert status["data voc"] == status["data ade20k"] == status["mlflow"] == status["results"] == "OK"
    assert "CUDA_VISIBLE_DEVICES is ''" in result.stdout and "CITYSCAPES_USERNAME" in result.stdout
    # the disk line depends on this machine's free space (72 GiB still to come): named only when short
    blocking = "gpu, disk, data cityscapes" if status["disk"] == "FAIL" else "gpu, data cityscapes"
    assert f"problem(s) block preset full ({blocking})" in result.stdout, result.stdout
    assert sorted(p.name for p in tmp_path.iterdir()) == ["params", "requirements.lock"]  # nothing created


@pytest.mark.integration
def test_the_doctor_checks_the_cells_and_data_a_dag_will_run(tmp_path: Path) -> None:
    """A DAG for one VOC cell is not stopped by Cityscapes' credentials (it still needs a GPU); one that only
    prepares data checks no GPU at all; an unknown cell is named."""
    one = run_doctor("full", tmp_path, "--cells", "voc-r50-os8", "--datasets", "")
    status = lines(one)
    assert status["gpu"] == "FAIL" and "data cityscapes" not in status and status["data voc"] == "OK", one.stdout
    assert "(cells: voc-r50-os8; further data: none)" in one.stdout and "plan voc-r101-os8" not in one.stdout
    data = run_doctor("full", tmp_path, "--cells", "", "--datasets", "voc,ade20k")
    assert data.returncode == 0 and "gpu" not in lines(data) and set(lines(data)) >= {"data voc", "data ade20k"}, data.stdout
    wrong = run_doctor("full", tmp_path, "--cells", "voc-r50-os9")
    assert wrong.returncode == 2 and "unknown cell 'voc-r50-os9'" in wrong.stderr


def test_the_smoke_preset_passes_here(tmp_path: Path) -> None:
    result = run_doctor("smoke", tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert set(lines(result).values()) <= {"OK", "WARN"} and "nothing blocks preset smoke" in result.stdout


def test_cityscapes_placed_by_hand_or_credentials_pass(tmp_path: Path) -> None:
    raw = tmp_path / "raw"
    assert doctor.cityscapes_access(raw).status == "FAIL"
    os.environ["CITYSCAPES_USERNAME"], os.environ["CITYSCAPES_PASSWORD"] = "someone", "secret"
    try:
        check = doctor.cityscapes_access(raw)
        assert check.status == "OK" and "secret" not in check.text
    finally:
        del os.environ["CITYSCAPES_USERNAME"], os.environ["CITYSCAPES_PASSWORD"]
    raw.mkdir()
    for name in ("gtFine_trainvaltest.zip", "leftImg8bit_trainvaltest.zip"):
        (raw / name).write_bytes(b"x")
    assert doctor.cityscapes_access(raw).status == "OK"


def test_a_download_whose_files_changed_fails(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    preset = PARAMS.preset("full")
    raw = Path(preset.paths.raw_dir("voc"))
    raw.mkdir(parents=True)
    (raw / "VOCtrainval_11-May-2012.tar").write_bytes(b"short")
    Path(preset.paths.dataset_manifest("voc")).write_text(json.dumps(
        {"files": {"VOCtrainval_11-May-2012.tar": {"size": 1_999_639_040}}}))
    checks = {c.name: c for c in doctor.dataset_checks(PARAMS, preset, doctor.datasets_of(PARAMS))}
    assert checks["data voc"].status == "FAIL" and "of another size" in checks["data voc"].text


def test_the_plan_on_a_24_gb_gpu_names_the_cells_whose_batchnorm_sees_fewer_images() -> None:
    """From the stored plan (README's): on 24 GB, voc-r101-os8 in bf16 runs 8 x 2, BatchNorm over 8 images
    where the reference has 16, and 2 such GPUs keep them; voc-r50-os16 runs its whole batch."""
    checks = {c.name: c for c in doctor.plan_checks(PARAMS, "full", doctor.Gpu(1, "some 24 GB GPU", 24.0, True))}
    assert len(checks) == len(PARAMS.cells)
    tight = checks["plan voc-r101-os8"]
    assert tight.status == "WARN" and "bf16 8 x 2 on 1 GPU(s), BatchNorm over 8 images (reference 16)" in tight.text
    assert "2 such GPUs (params/cells.yaml gpus: 2)" in tight.text
    assert checks["plan voc-r50-os16"].status == "OK" and "bf16 16 on 1 GPU(s)" in checks["plan voc-r50-os16"].text
    assert "evaluation peak" in tight.text


def test_the_mlflow_store_must_answer() -> None:
    assert doctor.mlflow_check("http://127.0.0.1:9/").status == "FAIL"  # the discard port: nobody answers
    assert doctor.mlflow_check("sqlite:///" + str(ROOT / "no-such-dir" / "mlflow.db")).status == "OK"  # created later


def test_readme_disk_figures_are_the_doctors() -> None:
    """README's disk paragraph gives the figures the doctor adds up (deeplab/data/sources.py), not others."""
    import re

    from deeplab.data.sources import DISK_GIB, PREPARED_SHARE, RUN_GIB, arrays_gib
    text = " ".join((ROOT / "README.md").read_text().split())
    found = re.search(r"Disk: about ([\d.]+) GiB of archives \(VOC ([\d.]+), ADE20k ([\d.]+), Cityscapes ([\d.]+)\), "
                      r"at most as much again prepared, ([\d.]+) GiB more for Cityscapes' training pairs stored as "
                      r"arrays \(below\), and about ([\d.]+) GiB per run \((\d+) GiB for the (\d+)\): some (\d+) GiB in all",
                      text)
    assert found, "README.md's disk paragraph is gone or reworded; keep it in step with deeplab/data/sources.py"
    archives, voc, ade, city, arrays, run, runs, count, total = (float(v) for v in found.groups())
    assert (voc, ade, city) == (DISK_GIB["voc"], DISK_GIB["ade20k"], DISK_GIB["cityscapes"])
    assert archives == round(sum(DISK_GIB.values()), 1) and PREPARED_SHARE == 1.0
    assert arrays == round(arrays_gib("cityscapes", PARAMS.datasets["cityscapes"].expected_counts["train"]), 1)
    assert run == RUN_GIB and count == len(PARAMS.cells) and runs == RUN_GIB * count
    assert total == round(archives * (1 + PREPARED_SHARE) + arrays + runs)
