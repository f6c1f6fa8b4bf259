"""What a params edit reruns in the smoke DAG, under Snakemake (dry run) and DVC (`dvc status`), with every
output recorded as done (stand-in files; nothing trained): exactly the trainings and evaluations it changes."""
from __future__ import annotations

import json
import re
import subprocess
import sys
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tests.dag_fixtures import copy_checkout, run_tool, tool_env
from tests.folder_fixtures import declare, write_learnable_folder

pytestmark = pytest.mark.slow

# edit -> (file, pattern, replacement, trainings, evaluations) on the smoke preset (13 runs: 12 cells, one more
# seed). Files under params/ unless they name a folder; "\A" prepends a line. No edit re-prepares a dataset.
EDITS = {
    **{f"a comment line in {module}": (module, r"\A", "# a reworded comment\n", 0, 0)
       for module in ("deeplab/errors.py", "deeplab/paths.py", "deeplab/config.py", "deeplab/jobs.py")},
    "train.deterministic toggled": ("train.yaml", r"deterministic: false", "deterministic: true", 0, 0),
    # train.seed is the seed of the cells the preset lists none for: voc-r50-os16's runs are its seeds 0 and 1
    "train.seed: 1": ("train.yaml", r"^  seed: 0 ", "  seed: 1 ", 11, 11),
    "evaluate.precision: bf16": ("evaluate.yaml", r"precision: fp32", "precision: bf16", 0, 13),
    "evaluate.ms_ratios gains a scale": ("evaluate.yaml", r"ms_ratios: \[0.5,", "ms_ratios: [0.25, 0.5,", 0, 13),
    "a second seed for ade20k-r50-os8": ("presets.yaml", r"seeds: \{voc-r50-os16: \[0, 1\]\}",
                                         "seeds: {voc-r50-os16: [0, 1], ade20k-r50-os8: [0, 1]}", 1, 1),
    "experiment renamed": ("presets.yaml", r"experiment: deeplabv3plus-smoke", "experiment: renamed", 0, 0),
    "register_models toggled": ("presets.yaml", r"register_models: true( +# as deeplabv3plus-smoke)",
                                r"register_models: false\1", 0, 0),
    "VOC's train_arrays: true": ("datasets.yaml", r"train_arrays: false ", "train_arrays: true ", 0, 0),
    "train.workers (smoke's override)": ("presets.yaml", r"workers: 0", "workers: 6", 0, 0),
    "VOC's epochs (smoke's override)": ("presets.yaml", r"(voc: .*)epochs: 10", r"\1epochs: 12", 5, 5),
    "train.lr (smoke's override)": ("presets.yaml", r"lr: 0.05", "lr: 0.02", 13, 13),
    "VOC's crop (smoke's override)": ("presets.yaml", r"voc:        \{base_scale: \[64, 48\], crop_size: \[32, 32\]",
                                      "voc:        {base_scale: [64, 48], crop_size: [24, 24]", 5, 5),
}


@pytest.fixture(scope="module")
def recorded(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A clean checkout whose smoke DAG is recorded as done under both engines: a stand-in file for every
    output, `snakemake --touch` (params and inputs on record) and `dvc commit -f` of smoke/dvc.yaml."""
    checkout = copy_checkout(tmp_path_factory.mktemp("reruns"))
    summary = run_tool(["snakemake", "--summary", "--config", "preset=smoke"], checkout, timeout=300).stdout
    for line in summary.splitlines()[1:]:
        path = checkout / line.split("\t")[0]
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("stand-in\n")
    run_tool(["snakemake", "--touch", "--cores", "1", "--config", "preset=smoke", "doctor=skip"], checkout, timeout=300)
    from dvc.repo import Repo
    with Repo(str(checkout)) as repo:  # DVC's outputs of the smoke pipeline, the prepared folders among them
        for stage in repo.index.stages:
            if stage.path_in_repo.startswith("smoke/"):
                for out in stage.outs:
                    path = checkout / out.def_path
                    if not path.exists():
                        path.mkdir(parents=True, exist_ok=True) if not Path(out.def_path).suffix else \
                            (path.parent.mkdir(parents=True, exist_ok=True), path.write_text("stand-in\n"))
    run_tool(["dvc", "commit", "-f", "smoke/dvc.yaml"], checkout, timeout=300)
    return checkout


def snakemake_jobs(checkout: Path) -> Counter[str]:
    out = run_tool(["snakemake", "-n", "--config", "preset=smoke"], checkout, timeout=300).stdout
    return Counter(re.findall(r"^rule (\w+):", out, flags=re.MULTILINE))


def dvc_records(checkout: Path) -> None:
    """DVC's part before it is asked: the one generating command (a seed or cell added to params/ reaches the
    pipeline through it) and the records stage (seconds: it rewrites the record files whose content changed,
    removing them first, so Snakemake must not be reading the same files meanwhile)."""
    subprocess.run([sys.executable, "-m", "pipeline.dvc_presets"], cwd=checkout, check=True, env=tool_env(),
                   capture_output=True)
    run_tool(["dvc", "repro", "--single-item", "smoke/dvc.yaml:records"], checkout, timeout=300)


def dvc_status(checkout: Path) -> Counter[str]:
    """The stages `dvc status` names (it only reads the workspace)."""
    status = json.loads(run_tool(["dvc", "status", "smoke/dvc.yaml", "--json"], checkout, timeout=300).stdout)
    return Counter(name.split(":")[-1].split("@")[0] for name in status)


def dvc_stages(checkout: Path) -> Counter[str]:
    """What DVC reruns: the stages `dvc status` names after dvc_records."""
    dvc_records(checkout)
    return dvc_status(checkout)


def both_engines(checkout: Path) -> tuple[Counter[str], Counter[str]]:
    """Snakemake's jobs and DVC's stages for the checkout as it is: DVC's records first (Snakemake's dry run
    reads the modification times of the files that stage rewrites), then the two questions at once (two
    processes, two cores)."""
    dvc_records(checkout)
    with ThreadPoolExecutor(2) as pool:
        jobs, stages = pool.submit(snakemake_jobs, checkout), pool.submit(dvc_status, checkout)
        return jobs.result(), stages.result()


def test_recorded_dag_reruns_nothing(recorded: Path) -> None:
    assert snakemake_jobs(recorded)["train_cell"] == 0 and dvc_stages(recorded) == Counter()


@pytest.mark.parametrize("edit", list(EDITS))
def test_an_edit_reruns_exactly_what_it_changes_under_both_engines(edit: str, recorded: Path) -> None:
    file, pattern, replacement, trainings, evaluations = EDITS[edit]
    path = recorded / (file if "/" in file else f"params/{file}")
    original = path.read_text()
    path.write_text(re.sub(pattern, replacement, original, count=1, flags=re.MULTILINE))
    assert path.read_text() != original
    try:
        jobs, stages = both_engines(recorded)
    finally:  # the next edit's dvc_stages regenerates the pipeline and reruns the records stage from these
        path.write_text(original)
    assert (jobs["train_cell"], jobs["evaluate_cell"], jobs["prepare_dataset"]) == (trainings, evaluations, 0), jobs
    assert (stages["train_cell"], stages["evaluate_cell"], stages["prepare_dataset"]) == \
        (trainings, evaluations, 0), stages


def test_a_new_cell_trains_alone_under_both_engines(recorded: Path) -> None:
    """A dataset of your own and its cell added to params/: one preparation, one training, one evaluation under
    Snakemake in the same command; under DVC after the one generating command, which --check names before."""
    write_learnable_folder(recorded / "mydata" / "pets", n=6)
    saved = {name: (recorded / "params" / name).read_text() for name in ("datasets.yaml", "cells.yaml")}
    declare(recorded / "params", "pets", {"layout": "folder", "source": "mydata/pets", "num_classes": 3},
            {"pets-r50-os16": {"dataset": "pets", "backbone": "r50", "output_stride": 16}})
    try:
        check = subprocess.run([sys.executable, "-m", "pipeline.dvc_presets", "--check"], cwd=recorded,
                               env=tool_env(), capture_output=True, text=True)
        assert check.returncode == 1 and "smoke/dvc.yaml" in check.stderr
        jobs, stages = both_engines(recorded)
    finally:
        for name, text in saved.items():
            (recorded / "params" / name).write_text(text)
    assert (jobs["prepare_folder"], jobs["train_cell"], jobs["evaluate_cell"]) == (1, 1, 1), jobs
    assert (stages["prepare_folder"], stages["train_cell"], stages["evaluate_cell"]) == (1, 1, 1), stages
