"""The DAG's shape in both tools (without running a stage), GPU slot exclusivity, and the README's tables.

Dry runs happen in a temporary copy of the tracked files, so results a user already has do not change
what the full preset's dry run must list.
"""
from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from deeplab.config import load_params
from deeplab.gpus import acquire, gpu_pool
from tests.dag_fixtures import ROOT, copy_checkout, run_tool

PARAMS = load_params(ROOT / "params")
pytestmark = pytest.mark.integration  # dry runs of both tools, DVC's status, GPU slots held by processes


@pytest.fixture(scope="module")
def checkout(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return copy_checkout(tmp_path_factory.mktemp("checkout"))


def _dry_run(checkout: Path, *args: str) -> str:
    return run_tool(["snakemake", "-n", "-p", *args], checkout, timeout=120).stdout


def _job_blocks(dry_run: str, rule: str) -> list[str]:
    """The text of each job of ``rule`` in a dry run's listing."""
    blocks = re.split(r"\n(?=\[[^\]]+\]\n|rule |localrule )", dry_run)
    return [b for b in blocks if re.match(rf"(\[[^\]]+\]\n)?(local)?rule {rule}:", b)]


def test_the_export_target_exports_every_run_and_only_when_asked(checkout: Path) -> None:
    """`snakemake export`: one export per run after its training (the table's DAG above has none)."""
    out = _dry_run(checkout, "export", "--config", "preset=smoke")
    exports = _job_blocks(out, "export_onnx")
    runs = {re.search(r"wildcards: run=(\S+)", b).group(1) for b in exports}  # type: ignore[union-attr]
    assert runs == {run.run_key for run in PARAMS.runs("smoke")}
    tuned = next(b for b in exports if "run=voc-r50-os16/seed1" in b)
    assert "-m pipeline.export --cell voc-r50-os16 --seed 1 --preset smoke" in tuned
    assert PARAMS.preset("smoke").paths.cell("voc-r50-os16", 1).onnx in tuned
    assert "evaluate_cell" not in Counter(re.findall(r"(?m)^(?:local)?rule (\w+):", out))


def test_full_dry_run_lists_12_train_jobs_with_one_gpu_and_12_evaluations(checkout: Path) -> None:
    out = _dry_run(checkout, "results/table.md")
    train, evaluate = _job_blocks(out, "train_cell"), _job_blocks(out, "evaluate_cell")
    cells = {re.search(r"wildcards: run=(\S+)", b).group(1) for b in train}  # type: ignore[union-attr]
    assert cells == set(PARAMS.cells) and len(train) == 12 and len(evaluate) == 12
    for block in train:
        assert re.search(r"resources: .*\bgpu=1\b", block), block
        assert re.search(r"\bmem_mb=\d+", block) and re.search(r"\bruntime=\d+", block), block
        assert "pipeline.gpu_slot --cell" in block and "-m pipeline.train --cell" in block, block
        cell = re.search(r"wildcards: run=(\S+)", block).group(1)  # type: ignore[union-attr]
        weights = PARAMS.preset("full").paths.weights_manifest(PARAMS.cells[cell].backbone)
        assert "--preset full" in block and weights in block, block
    counts = Counter(re.findall(r"(?m)^(?:local)?rule (\w+):", out))
    assert counts == {"download_dataset": 3, "download_weights": 2, "prepare_dataset": 3, "store_arrays": 3,
                      "download_reference_log": 12, "init_tracking": 1, "train_cell": 12, "evaluate_cell": 12,
                      "make_table": 1}
    for block in train:  # the yardstick's log is fetched before each cell trains
        cell = re.search(r"wildcards: run=(\S+)", block).group(1)  # type: ignore[union-attr]
        assert f"results/reference/{cell}/reference_log.json" in block, block


def test_the_reference_table_needs_the_data_but_no_training(checkout: Path) -> None:
    out = _dry_run(checkout, "results/reference.md")  # the profile's forced make_table stays out of it
    counts = Counter(re.findall(r"(?m)^(?:local)?rule (\w+):", out))
    assert counts == {"download_dataset": 3, "prepare_dataset": 3, "init_tracking": 1, "reference_eval": 12,
                      "download_reference_log": 12, "reference_table": 1}, counts
    (block,) = [b for b in _job_blocks(out, "reference_eval") if "cell=ade20k-r101-os8" in b]
    assert "-m pipeline.reference_eval --cell ade20k-r101-os8 --preset full" in block


def test_smoke_dry_run_stays_inside_the_smoke_folders(checkout: Path) -> None:
    out = _dry_run(checkout, "results/smoke/table.md", "--config", "preset=smoke")
    runs = {re.search(r"wildcards: run=(\S+)", b).group(1) for b in _job_blocks(out, "train_cell")}  # type: ignore[union-attr]
    assert runs == set(PARAMS.cells) | {"voc-r50-os16/seed1"} and len(_job_blocks(out, "download_weights")) == 2
    (seed1,) = [b for b in _job_blocks(out, "train_cell") if "run=voc-r50-os16/seed1" in b]
    assert "-m pipeline.train --cell voc-r50-os16 --seed 1 --preset smoke" in seed1
    paths = set(re.findall(r"(?<![\w/])(?:data|results|logs)/[\w./-]+", out)) - {"results/smoke"}  # make_table's wildcard
    assert paths and all(p.startswith(("data/smoke/", "results/smoke/", "logs/smoke/")) for p in paths), paths


def test_an_unknown_preset_is_refused_with_the_known_ones(checkout: Path) -> None:
    result = subprocess.run([str(Path(sys.executable).parent / "snakemake"), "-n", "--config", "preset=smok"],
                            cwd=checkout, capture_output=True, text=True, timeout=120)
    assert result.returncode != 0 and "unknown preset; known: full, smoke" in result.stdout + result.stderr


def _dvc_stages(checkout: Path) -> dict[str, object]:
    from dvc.repo import Repo
    with contextlib.chdir(checkout), Repo(str(checkout)) as repo:  # stage addresses are relative to the cwd
        return {stage.addressing: stage for stage in repo.index.stages}


def _params(stage: object) -> dict[str, list[str]]:
    return {dep.def_path: list(dep.params) for dep in stage.deps if type(dep).__name__ == "ParamsDependency"}


def test_dvc_has_the_same_stages_and_exact_params_keys(checkout: Path) -> None:
    stages = _dvc_stages(checkout)
    full = {name: s for name, s in stages.items() if "/" not in name.split(":")[0]}
    counts = Counter(name.split("@")[0] for name in full)
    assert counts == {"records": 1, "download_dataset": 3, "download_weights": 2, "prepare_dataset": 3,
                      "store_arrays": 3, "download_reference_log": 12, "init_tracking": 1, "train_cell": 12,
                      "evaluate_cell": 12, "make_table": 1}  # no dataset of your own: no prepare_folder stage
    # the reference's weights: a pipeline of their own (a plain `dvc repro` never downloads them), run from the root
    reference = {name.removeprefix("reference/dvc.yaml:"): s for name, s in stages.items()
                 if name.startswith("reference/")}
    assert Counter(name.split("@")[0] for name in reference) == {"reference_eval": 12, "reference_table": 1}
    assert all(s.wdir == str(checkout) for s in reference.values())
    assert "-m pipeline.reference_eval --cell ade20k-r101-os8 --preset full" in reference["reference_eval@ade20k-r101-os8"].cmd
    bookkeeping = {"deeplab/config.py", "deeplab/errors.py", "deeplab/paths.py", "deeplab/jobs.py"}
    for name, stage in full.items():
        if name.startswith(("train_cell@", "evaluate_cell@", "prepare_dataset@", "store_arrays@")):
            kind, key = {"train_cell": "train", "evaluate_cell": "evaluate", "prepare_dataset": "prepare",
                         "store_arrays": "arrays"}[name.split("@")[0]], name.split("@")[1]
            deps = {dep.def_path for dep in stage.deps}
            assert f"results/records/{kind}/{key}.json" in deps, name  # what decides its output: its record
            assert not _params(stage) and not deps & bookkeeping, name  # no params list, no bookkeeping code
        if name.startswith(("train_cell@", "evaluate_cell@")):
            cell = name.split("@")[1]
            assert f"--cell {cell} --preset full" in stage.cmd  # a first seed: train.seed edits keep the command
        if name.startswith("train_cell@"):
            assert {d.def_path for d in stage.deps} >= {"deeplab/model.py", "deeplab/train.py", "deeplab/losses.py"}
            assert {o.def_path for o in stage.outs} >= {f"results/{cell}/model.pt", f"results/{cell}/train_log.csv"}
            log = next(o for o in stage.outs if o.def_path.endswith("train_log.csv"))
            assert log.plot and log.persist and not log.use_cache  # kept for a resumed run, in git
        if name.startswith("evaluate_cell@"):
            kinds = {o.def_path: (bool(o.metric), bool(o.plot), o.use_cache) for o in stage.outs}
            assert kinds == {f"results/{cell}/metrics.json": (False, False, False),  # the record, in git
                             f"results/{cell}/scores.json": (True, False, False),    # DVC's metrics: 3 numbers
                             f"results/{cell}/class_iou.csv": (False, True, False)}, kinds
    assert len([d for d in full["make_table"].deps if d.def_path.endswith("metrics.json")]) == 12
    for stage in stages.values():  # every code dependency exists; a renamed module must be renamed here too
        for dep in stage.deps:
            if dep.def_path.endswith(".py"):
                assert (checkout / dep.def_path).is_file(), f"{stage.addressing}: missing {dep.def_path}"
        for key_list in _params(stage):
            assert not key_list.startswith("./"), stage.addressing  # ./ makes DVC see a change forever


def test_dvc_smoke_pipeline_is_generated_from_the_full_one(checkout: Path) -> None:
    """smoke/dvc.yaml is dvc.yaml on the smoke preset's folders, and the check catches a hand edit or a path
    of dvc.yaml that is not deeplab.paths'."""
    stages = _dvc_stages(checkout)
    smoke = {name.removeprefix("smoke/dvc.yaml:"): s for name, s in stages.items() if name.startswith("smoke/dvc.yaml:")}
    full = {name: s for name, s in stages.items() if "/" not in name.split(":")[0]}
    paths = PARAMS.preset("smoke").paths
    exports = {name: s for name, s in stages.items() if "export/dvc.yaml:" in name}  # asked for by name only
    assert not [name for name in full if "export" in name]
    assert set(exports) == {f"export/dvc.yaml:export_onnx@{r.run_key.replace('/', '-')}" for r in PARAMS.runs("full")} \
        | {f"smoke/export/dvc.yaml:export_onnx@{r.run_key.replace('/', '-')}" for r in PARAMS.runs("smoke")}
    tuned = exports["smoke/export/dvc.yaml:export_onnx@voc-r50-os16-seed1"]
    assert tuned.wdir == str(checkout) and "--cell voc-r50-os16 --seed 1 --preset smoke" in tuned.cmd
    assert {o.def_path for o in tuned.outs} == {paths.cell("voc-r50-os16", 1).onnx, paths.cell("voc-r50-os16", 1).onnx_check}
    for name, stage in ((n, s) for n, s in smoke.items() if n in full):
        assert stage.wdir == str(checkout), name  # runs from the project root like the full stages
        assert stage.cmd == full[name].cmd.replace("--preset full", "--preset smoke"), name
    # the smoke preset compares with no reference: it fetches no reference log
    assert set(smoke) == {name for name in full if not name.startswith("download_reference_log@")} \
        | {"train_cell@voc-r50-os16-seed1", "evaluate_cell@voc-r50-os16-seed1"}
    files = paths.cell("voc-r50-os8")
    assert {o.def_path for o in smoke["evaluate_cell@voc-r50-os8"].outs} == {files.metrics, files.scores, files.class_iou}
    files = paths.cell("voc-r50-os16", 1)
    assert {o.def_path for o in smoke["evaluate_cell@voc-r50-os16-seed1"].outs} == \
        {files.metrics, files.scores, files.class_iou}
    seeds = [o for o in smoke["make_table"].outs if o.metric]  # the cell with two seeds: their summary
    assert [o.def_path for o in seeds] == [paths.seeds_summary("voc-r50-os16")]
    assert "--cell voc-r50-os16 --seed 1 --preset smoke" in smoke["train_cell@voc-r50-os16-seed1"].cmd
    check = [sys.executable, "-m", "pipeline.dvc_presets", "--check"]
    assert subprocess.run(check, cwd=checkout, capture_output=True, env=_env()).returncode == 0
    generated = checkout / "smoke" / "dvc.yaml"
    generated.write_text(generated.read_text().replace("persist: true", "persist: false", 1))
    stale = subprocess.run(check, cwd=checkout, capture_output=True, text=True, env=_env())
    assert stale.returncode == 1 and "out of date: smoke/dvc.yaml" in stale.stderr
    subprocess.run([sys.executable, "-m", "pipeline.dvc_presets"], cwd=checkout, check=True, env=_env())
    pipeline = checkout / "dvc.yaml"
    original = pipeline.read_text()
    pipeline.write_text(original.replace("/metrics.json:", "/metric.json:", 1))
    wrong = subprocess.run(check, cwd=checkout, capture_output=True, text=True, env=_env())
    pipeline.write_text(original)
    assert wrong.returncode == 1 and "stage evaluate_cell" in wrong.stderr and "metric.json" in wrong.stderr
    reference = checkout / "reference" / "dvc.yaml"  # the reference's pipeline is checked the same way
    original = reference.read_text()
    reference.write_text(original.replace("/reference_log.csv   #", "/reference.csv   #", 1))
    wrong = subprocess.run(check, cwd=checkout, capture_output=True, text=True, env=_env())
    reference.write_text(original)
    assert wrong.returncode == 1 and "reference/dvc.yaml: stage reference_eval" in wrong.stderr


def test_code_deps_are_the_modules_each_stage_imports(tmp_path: Path) -> None:
    """A module a stage's command starts importing is missing from its deps: --check names the stage and the
    module; regenerating adds it there and nowhere else; a hand-removed dep is named too."""
    checkout = copy_checkout(tmp_path / "copy")
    check = [sys.executable, "-m", "pipeline.dvc_presets", "--check"]
    env = {**os.environ, "PYTHONPATH": str(checkout)}
    ok = subprocess.run(check, cwd=checkout, capture_output=True, text=True, env=env)
    assert ok.returncode == 0, ok.stderr
    schedule = checkout / "deeplab" / "schedule.py"  # training imports it, evaluation does not
    schedule.write_text(schedule.read_text() + "\n\ndef _later() -> None:\n    from deeplab import plots  # noqa\n")
    stale = subprocess.run(check, cwd=checkout, capture_output=True, text=True, env=env)
    assert stale.returncode == 1, stale.stderr
    assert "dvc.yaml: stage train_cell: code deps miss deeplab/plots.py" in stale.stderr
    assert "stage prepare_dataset" not in stale.stderr and "stage evaluate_cell" not in stale.stderr
    subprocess.run([sys.executable, "-m", "pipeline.dvc_presets"], cwd=checkout, check=True, env=env,
                   capture_output=True)
    stages = _dvc_stages(checkout)
    assert "deeplab/plots.py" in {d.def_path for d in stages["train_cell@voc-r50-os8"].deps}
    assert "deeplab/plots.py" in {d.def_path for d in stages["smoke/dvc.yaml:train_cell@voc-r50-os8"].deps}
    assert "deeplab/plots.py" not in {d.def_path for d in stages["prepare_dataset@voc"].deps}
    pipeline = checkout / "dvc.yaml"
    pipeline.write_text(pipeline.read_text().replace("        - deeplab/model.py\n", "", 1))
    removed = subprocess.run(check, cwd=checkout, capture_output=True, text=True, env=env)
    assert removed.returncode == 1 and "code deps miss deeplab/model.py" in removed.stderr, removed.stderr


def test_dvc_status_follows_the_code_each_stage_runs(tmp_path: Path) -> None:
    """With every smoke stage recorded (stand-in outputs, `dvc commit -f`; nothing trained), an edit of a
    numerics module marks the stages that run it; one of a bookkeeping module (params' validation, file names,
    error messages, a job's MLflow run) marks only the records stage and the table, no training, evaluation
    or preparation; an edit of the plotting code marks the evaluations alone."""
    checkout = copy_checkout(tmp_path / "copy")
    stages = {name: s for name, s in _dvc_stages(checkout).items() if name.startswith("smoke/")}
    subprocess.run([sys.executable, "-m", "pipeline.records", "--preset", "smoke"], cwd=checkout, check=True,
                   env=_env(), capture_output=True)  # the records stage's own output: the real records
    for stage in stages.values():
        for out in stage.outs:
            path = checkout / out.def_path
            if Path(out.def_path).suffix:  # a file
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text(f"stand-in for {out.def_path}\n")
            else:  # a folder: raw archives, a prepared dataset
                path.mkdir(parents=True, exist_ok=True)
                (path / "stand-in.txt").write_text("x\n")
    for stage in stages.values():  # a file inside an output folder (the arrays' source.json)
        for dep in stage.deps:
            path = checkout / dep.def_path
            if type(dep).__name__ != "ParamsDependency" and Path(dep.def_path).suffix and not path.exists():
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text(f"stand-in for {dep.def_path}\n")
    run_tool(["dvc", "commit", "-f", "smoke/dvc.yaml"], checkout, timeout=300)

    def changed_after(module: str) -> set[str]:
        path = checkout / module
        original = path.read_text()
        path.write_text(original + "\n# an edit\n")
        status = run_tool(["dvc", "status", "smoke/dvc.yaml", "--json"], checkout, timeout=300).stdout
        path.write_text(original)
        return {name.split(":")[-1].split("@")[0] for name in json.loads(status)}

    for module in ("deeplab/config.py", "deeplab/errors.py", "deeplab/paths.py", "deeplab/jobs.py"):
        assert changed_after(module) <= {"records", "make_table"}, module
    assert changed_after("deeplab/train.py") == {"train_cell"}
    assert changed_after("deeplab/data/convert.py") == {"prepare_dataset", "store_arrays", "make_table"}
    assert changed_after("deeplab/plots.py") == {"evaluate_cell"}
    assert changed_after("deeplab/tracking.py") == set()  # NOT_OUTPUT_CODE: the MLflow mirror


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT)}


# --- GPU slots ---------------------------------------------------------------------------------------------

HOLD = """
import os, sys, time
start = time.monotonic()
time.sleep(float(sys.argv[2]))
with open(sys.argv[1], "a") as f:
    f.write(f"{os.environ['CUDA_VISIBLE_DEVICES']} {start} {time.monotonic()}\\n")
"""


def _slot_job(lock_dir: Path, record: Path, gpus: int, hold_s: float) -> subprocess.Popen[bytes]:
    env = {**os.environ, "DEEPLAB_GPUS": "0,1,2", "PYTHONPATH": str(ROOT)}
    command = [sys.executable, "-m", "pipeline.gpu_slot", "--gpus", str(gpus), "--lock-dir", str(lock_dir),
               "--poll", "0.02", "--", sys.executable, "-c", HOLD, str(record), str(hold_s)]
    return subprocess.Popen(command, cwd=ROOT, env=env)


def test_concurrent_jobs_never_share_a_gpu(tmp_path: Path) -> None:
    """Ten jobs asking for 1 or 2 of 3 GPUs at once: no GPU ever serves two jobs at the same moment."""
    record = tmp_path / "record.txt"
    jobs = [_slot_job(tmp_path / "locks", record, gpus=1 + (i % 3 == 0), hold_s=0.3) for i in range(10)]
    assert all(job.wait(timeout=120) == 0 for job in jobs)
    held = [(line.split()[0].split(","), float(line.split()[1]), float(line.split()[2]))
            for line in record.read_text().splitlines()]
    assert len(held) == 10 and sorted(len(ids) for ids, _, _ in held) == [1] * 6 + [2] * 4
    for i, (ids_a, start_a, end_a) in enumerate(held):
        assert set(ids_a) <= {"0", "1", "2"} and len(set(ids_a)) == len(ids_a)
        for ids_b, start_b, end_b in held[i + 1:]:
            if set(ids_a) & set(ids_b):
                assert end_a <= start_b or end_b <= start_a, (ids_a, ids_b)


def test_a_killed_job_frees_its_gpu(tmp_path: Path) -> None:
    env = {**os.environ, "DEEPLAB_GPUS": "0", "PYTHONPATH": str(ROOT)}
    holder = subprocess.Popen([sys.executable, "-m", "pipeline.gpu_slot", "--gpus", "1", "--lock-dir",
                               str(tmp_path), "--", "sleep", "60"], cwd=ROOT, env=env)
    try:
        slot, deadline = tmp_path / "gpu-0.lock", time.monotonic() + 30
        while not (slot.exists() and "sleep 60" in slot.read_text(errors="ignore")):  # the owner note
            assert time.monotonic() < deadline, "the holder never took its slot"
            time.sleep(0.05)
        with pytest.raises(TimeoutError, match="no 1 free GPU slots"):
            acquire(1, ["0"], tmp_path, poll_s=0.05, timeout_s=0.3)
        holder.send_signal(signal.SIGKILL)  # the exec'd command itself, holding the lock
        holder.wait(timeout=30)
        with acquire(1, ["0"], tmp_path, poll_s=0.05, timeout_s=10) as slots:
            assert slots.ids == ["0"]
    finally:
        holder.kill()


def test_without_gpus_or_inside_slurm_the_command_runs_as_is(tmp_path: Path) -> None:
    show = [sys.executable, "-m", "pipeline.gpu_slot", "--gpus", "1", "--lock-dir", str(tmp_path), "--",
            sys.executable, "-c", "import os; print(os.environ.get('CUDA_VISIBLE_DEVICES', 'unset'))"]
    base = {k: v for k, v in os.environ.items() if k not in ("CUDA_VISIBLE_DEVICES", "DEEPLAB_GPUS")}
    cpu = subprocess.run(show, cwd=ROOT, env={**base, "DEEPLAB_GPUS": ""}, capture_output=True, text=True)
    slurm = subprocess.run(show, cwd=ROOT, env={**base, "SLURM_JOB_ID": "1", "CUDA_VISIBLE_DEVICES": "5"},
                           capture_output=True, text=True)
    assert cpu.stdout.strip() == "unset" and slurm.stdout.strip() == "5"
    assert gpu_pool({"CUDA_VISIBLE_DEVICES": "2,3"}) == ["2", "3"] and gpu_pool({"DEEPLAB_GPUS": "-1"}) == []


def test_a_job_asking_for_more_gpus_than_the_host_has_says_what_to_change(tmp_path: Path) -> None:
    result = subprocess.run([sys.executable, "-m", "pipeline.gpu_slot", "--gpus", "4", "--lock-dir",
                             str(tmp_path), "--", "true"], cwd=ROOT, capture_output=True, text=True,
                            env={**os.environ, "DEEPLAB_GPUS": "0,1"})
    assert result.returncode == 1 and "asks for 4 GPUs but this host offers 2" in result.stderr
    assert "params/cells.yaml" in result.stderr


def test_several_gpus_run_under_torchrun() -> None:
    from deeplab.gpus import module_command
    assert module_command("pipeline.train", ["--cell", "c"], 1, "py") == ["py", "-m", "pipeline.train", "--cell", "c"]
    assert module_command("pipeline.train", ["--cell", "c"], 4, "py") == [
        "py", "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=4", "-m", "pipeline.train", "--cell", "c"]


# --- README tables ------------------------------------------------------------------------------------------

def test_readme_and_results_table_are_up_to_date() -> None:
    """CI's staleness check: README.md's block and results/table.md match params and metrics."""
    result = subprocess.run([sys.executable, "-m", "pipeline.table", "--preset", "full", "--check"], cwd=ROOT,
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_table_check_fails_on_a_stale_readme(checkout: Path, tmp_path: Path) -> None:
    readme = checkout / "README.md"
    original = readme.read_text()
    try:
        readme.write_text(original.replace("77.43%", "77.44%", 1))
        result = subprocess.run([sys.executable, "-m", "pipeline.table", "--preset", "full", "--check"],
                                cwd=checkout, capture_output=True, text=True, env=_env())
        assert result.returncode == 1 and "out of date: README.md" in result.stderr
        assert "python -m pipeline.table --preset full" in result.stderr
    finally:
        readme.write_text(original)


# --- job sizes ----------------------------------------------------------------------------------------------

def test_compute_budget_matches_the_recipe() -> None:
    """docs/recipe.md: VOC shows 634,560 images; the whole table is about 1.69e19 FLOPs as the model trains
    (1.56e19 without the auxiliary head)."""
    from deeplab.budget import estimated_gpu_hours, training_flops, training_images
    assert training_images(PARAMS.resolve("voc-r50-os8")) == 634_560
    assert training_images(PARAMS.resolve("cityscapes-r101-os16")) == 654_720
    total = sum(training_flops(PARAMS.resolve(cell)) for cell in PARAMS.cells)
    assert total == pytest.approx(1.692e19, rel=0.002)
    voc = PARAMS.resolve("voc-r50-os8")  # 634,560 images x 3 x (352.4 + 38.7) GFLOP at 512x512
    assert training_flops(voc) == pytest.approx(634_560 * 3 * (352.4 + 38.7) * 1e9)
    assert estimated_gpu_hours(PARAMS.resolve("ade20k-r101-os8"), "A100") > estimated_gpu_hours(PARAMS.resolve("ade20k-r101-os8"))


# --- profiles -----------------------------------------------------------------------------------------------

def _profile(name: str, monkeypatch: pytest.MonkeyPatch, **env: str) -> dict[str, object]:
    """A profile as Snakemake reads it (yte templating evaluated in this environment)."""
    import yte
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    with (ROOT / "profiles" / name / "config.yaml").open() as stream:
        return yte.process_yaml(stream, require_use_yte=True)


@pytest.mark.parametrize("name", ["local", "workstation"])
def test_host_profiles_cap_gpu_jobs_at_the_gpu_pool(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    profile = _profile(name, monkeypatch, DEEPLAB_GPUS="0,1,2")
    assert profile["resources"] == {"gpu": 3} and profile["rerun-incomplete"] is True
    if name == "workstation":  # every GPU job gets an equal share of the cores
        assert profile["set-threads"]["train_cell"] == max(1, os.cpu_count() // 3)
    assert _profile(name, monkeypatch, DEEPLAB_GPUS="")["resources"] == {"gpu": 1}  # CPU host: still runs


def test_slurm_profile_requests_gpus_as_resources(checkout: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    profile = _profile("slurm", monkeypatch, DEEPLAB_SLURM_PARTITION="gpuq", DEEPLAB_SLURM_ACCOUNT="proj")
    assert profile["executor"] == "slurm" and "slurm_extra" not in str(profile)
    out = run_tool(["snakemake", "-n", "--profile", "profiles/slurm", "results/table.md"], checkout, timeout=120,
                   DEEPLAB_SLURM_PARTITION="gpuq", DEEPLAB_SLURM_ACCOUNT="proj").stdout
    train = _job_blocks(out, "train_cell")
    assert len(train) == 12
    for block in train:
        resources = re.search(r"resources: (.*)", block).group(1)  # type: ignore[union-attr]
        for expected in (r"\bgpu=1\b", r"\bslurm_partition=gpuq\b", r"\bslurm_account=proj\b", r"\bruntime=\d+"):
            assert re.search(expected, resources), (expected, resources)


def test_a_seed_added_without_regenerating_is_named_by_the_doctor_and_the_records_stage(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Like a lockfile: params/ gains a seed, dvc.yaml's generated parts do not; the doctor warns with the one
    command to run, and DVC's records stage stops before any job (DVC had read the stale file)."""
    from pipeline.doctor import dvc_check
    checkout = copy_checkout(tmp_path / "copy")
    monkeypatch.chdir(checkout)
    assert dvc_check(load_params("params"), "smoke").status == "OK"
    presets = checkout / "params" / "presets.yaml"
    presets.write_text(presets.read_text().replace("seeds: {voc-r50-os16: [0, 1]}",
                                                   "seeds: {voc-r50-os16: [0, 1], ade20k-r50-os8: [3, 4]}"))
    check = dvc_check(load_params("params"), "smoke")
    assert check.status == "WARN" and "run `python -m pipeline.dvc_presets` before `dvc repro`" in check.text
    records = subprocess.run([sys.executable, "-m", "pipeline.records", "--preset", "smoke", "--pipeline"],
                             cwd=checkout, capture_output=True, text=True, env=_env())
    assert records.returncode == 1 and "smoke/dvc.yaml is out of date with params/" in records.stderr
    assert not (checkout / "results" / "smoke" / "records").exists()  # stopped before writing a record
    subprocess.run([sys.executable, "-m", "pipeline.dvc_presets"], cwd=checkout, check=True, env=_env(),
                   capture_output=True)
    assert dvc_check(load_params("params"), "smoke").status == "OK"
    stages = _dvc_stages(checkout)
    assert "--cell ade20k-r50-os8 --seed 4 --preset smoke" in stages["smoke/dvc.yaml:train_cell@ade20k-r50-os8-seed4"].cmd
    assert "--cell ade20k-r50-os8 --preset smoke" in stages["smoke/dvc.yaml:train_cell@ade20k-r50-os8"].cmd
