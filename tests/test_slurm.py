"""The smoke DAG through profiles/slurm on a real one-node Slurm cluster that this module starts and stops.

Slurm (Debian's slurm-wlm with munge) is installed from the package archive when missing: root is needed,
as on CI. The cluster's state, spool, logs, munge socket and two placeholder GPU device files live in a
temporary folder; the configuration must be /etc/slurm/slurm.conf (and gres.conf), because the executor
plugin's job steps drop SLURM_CONF from their environment: files there are restored or removed afterwards.
Accounting is off, as on many small clusters, so Snakemake is told to ask squeue for job states.

Checked: train and evaluate jobs ask for a GPU (TresPerJob=gres:gpu:1) and finish; the table has a row per
cell and MLflow a finished run per cell; a training job cancelled with scancel (preemption, a time limit)
resumes from its checkpoint when submitted again (the profile's retry).
"""
from __future__ import annotations

import fcntl
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import Iterator

import pytest
import yaml

from tests.dag_fixtures import alive, copy_checkout, free_port, tool_env

pytestmark = [pytest.mark.slurm, pytest.mark.timeout(1500)]
CELLS = ("voc-r50-os8", "voc-r50-os16")
CANCELLED = "voc-r50-os8"  # trains long enough to be cancelled after its first checkpoint


def _install_slurm() -> None:
    if all(shutil.which(tool) for tool in ("slurmctld", "slurmd", "munged", "sbatch", "squeue", "scancel")):
        return
    if os.geteuid() != 0:
        pytest.skip("Slurm is not installed and installing it needs root (apt-get install slurm-wlm munge)")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for command in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", "slurm-wlm", "munge"]):
        result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=900)
        if result.returncode != 0:
            pytest.fail(f"could not install Slurm ({' '.join(command)}):\n{result.stderr[-2000:]}")


# The first line of each file this test writes into /etc/slurm. A file that starts with it is a leftover of a run
# killed before its teardown, not the machine's own: restoring it would leave Slurm's client pointed at a
# controller that is gone, and Snakemake's Slurm executor plugin runs `scontrol show config` whenever Snakemake
# starts, which then waits 10 s (every later `snakemake` call in the suite, about 60, paid it here).
WRITTEN_HERE = "# written by tests/test_slurm.py"


def _config(folder: Path) -> dict[str, str]:
    host = socket.gethostname()
    slurm = f"""{WRITTEN_HERE} for a one-node test cluster; removed when the test ends
ClusterName=deeplabtest
SlurmctldHost={host}(127.0.0.1)
SlurmUser=root
SlurmdUser=root
SlurmctldPort={free_port()}
SlurmdPort={free_port()}
AuthType=auth/munge
AuthInfo=socket={folder}/munge.socket
CredType=cred/munge
StateSaveLocation={folder}/state
SlurmdSpoolDir={folder}/spool
SlurmctldPidFile={folder}/slurmctld.pid
SlurmdPidFile={folder}/slurmd.pid
SlurmctldLogFile={folder}/slurmctld.log
SlurmdLogFile={folder}/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
ReturnToService=2
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
GresTypes=gpu
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
MinJobAge=3600
KillWait=20
NodeName={host} NodeAddr=127.0.0.1 CPUs={os.cpu_count()} RealMemory=16000 Gres=gpu:2 State=UNKNOWN
PartitionName=gpu Nodes=ALL Default=YES MaxTime=INFINITE State=UP
"""
    return {"slurm.conf": slurm, "gres.conf": f"{WRITTEN_HERE}\nAutoDetect=off\nName=gpu File={folder}/nvidia[0-1]\n"}


def _start(command: list[str], folder: Path) -> None:
    result = subprocess.run(command, capture_output=True, text=True, timeout=60)
    if result.returncode != 0:
        logs = "".join((folder / name).read_text()[-1500:] for name in ("slurmctld.log", "slurmd.log")
                       if (folder / name).is_file())
        pytest.fail(f"the test cluster did not start: {' '.join(command)} exited {result.returncode}:\n"
                    f"{result.stderr}\n{logs}")


def _stop(pid_file: Path) -> None:
    """SIGTERM the daemon named by pid_file and wait until it has exited (SIGKILL after 60 s), so that the next
    suite's cluster, waiting on the machine-wide lock, never starts beside a daemon that is still shutting down."""
    if not pid_file.is_file():
        return
    pid = int(pid_file.read_text().strip())
    for sig, wait in ((signal.SIGTERM, 60), (signal.SIGKILL, 10)):
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + wait
        while alive(pid) and time.monotonic() < deadline:
            time.sleep(0.2)
        if not alive(pid):
            return


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A running one-node cluster with two placeholder GPUs; stopped, and /etc/slurm restored, afterwards."""
    _install_slurm()
    if os.geteuid() != 0:
        pytest.skip("starting Slurm's daemons and writing /etc/slurm needs root")
    folder = tmp_path_factory.mktemp("slurm")
    for name in ("state", "spool"):
        (folder / name).mkdir()
    for name in ("nvidia0", "nvidia1"):
        (folder / name).touch()
    (folder / "munge.key").write_bytes(os.urandom(1024))
    (folder / "munge.key").chmod(0o400)
    etc = Path("/etc/slurm")
    etc.mkdir(parents=True, exist_ok=True)
    # /etc/slurm and the daemons are the machine's: a second suite on this machine (another clone) waits here
    # for the first one's cluster to stop instead of rewriting its configuration under it
    machine_lock = open("/tmp/deeplab-test-slurm.lock", "a")  # noqa: SIM115 (held until the cluster stops)
    fcntl.flock(machine_lock, fcntl.LOCK_EX)
    saved = {name: (etc / name).read_bytes() for name in ("slurm.conf", "gres.conf") if (etc / name).is_file()}
    saved = {name: text for name, text in saved.items() if not text.startswith(WRITTEN_HERE.encode())}
    try:
        for name, text in _config(folder).items():
            (etc / name).write_text(text)
        _start(["munged", "--force", f"--socket={folder}/munge.socket", f"--key-file={folder}/munge.key",
                f"--pid-file={folder}/munged.pid", f"--log-file={folder}/munged.log",
                f"--seed-file={folder}/munge.seed"], folder)
        _start(["slurmctld"], folder)
        _start(["slurmd"], folder)
        deadline = time.monotonic() + 180  # a loaded machine (another suite beside this one) registers slowly
        while "idle" not in subprocess.run(["sinfo", "-h", "-o", "%t"], capture_output=True, text=True).stdout:
            if time.monotonic() > deadline:
                nodes = subprocess.run(["sinfo", "-N", "-l"], capture_output=True, text=True)
                logs = "".join(f"--- {name}:\n{(folder / name).read_text()[-2000:]}\n"
                               for name in ("slurmctld.log", "slurmd.log") if (folder / name).is_file())
                pytest.fail(f"the test cluster's node never became idle:\n{nodes.stdout}{nodes.stderr}\n{logs}")
            time.sleep(1)
        yield folder
    finally:
        for name in ("slurmd.pid", "slurmctld.pid", "munged.pid"):
            _stop(folder / name)
        for name in ("slurm.conf", "gres.conf"):
            if name in saved:
                (etc / name).write_bytes(saved[name])
            else:
                (etc / name).unlink(missing_ok=True)
        machine_lock.close()  # the next suite's cluster may start


def _reduced_checkout(dest: Path) -> Path:
    """Two VOC cells of the smoke preset, trained for 30 iterations with a checkpoint every 4."""
    checkout = copy_checkout(dest)
    cells = checkout / "params" / "cells.yaml"
    cells.write_text("".join(line for line in cells.read_text().splitlines(keepends=True)
                             if not re.match(r"\s+(ade20k|cityscapes)-|\s+voc-r101", line)))
    presets = checkout / "params" / "presets.yaml"
    doc = yaml.safe_load(presets.read_text())
    smoke = doc["presets"]["smoke"]
    smoke["seeds"] = {}
    smoke["overrides"]["datasets"]["voc"]["epochs"] = 2  # 15 iterations per epoch: 30 ...
    smoke["overrides"]["train"]["checkpoint_every"] = 4  # ... with a checkpoint every 4
    presets.write_text(yaml.safe_dump(doc, sort_keys=False))
    return checkout


def _jobs() -> list[dict[str, str]]:
    """Every job the controller knows: id, state, the rule (from the plugin's comment) and GPU request."""
    out = subprocess.run(["scontrol", "show", "job", "-o"], capture_output=True, text=True).stdout
    return [dict(re.findall(r"(\w+)=(\S*)", line)) for line in out.splitlines() if line.startswith("JobId=")]


def test_the_smoke_dag_runs_through_the_slurm_profile_and_resumes_a_cancelled_job(
        cluster: Path, tmp_path_factory: pytest.TempPathFactory) -> None:
    checkout = _reduced_checkout(tmp_path_factory.mktemp("checkout"))
    uri = f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}"
    env = tool_env(DEEPLAB_SLURM_PARTITION="gpu", MLFLOW_TRACKING_URI=uri)
    command = [str(Path(env["PATH"].split(os.pathsep)[0]) / "snakemake"), "--profile", "profiles/slurm",
               "--config", "preset=smoke", "--slurm-status-command", "squeue",
               "--slurm-init-seconds-before-status-checks", "2"]
    run = subprocess.Popen(command, cwd=checkout, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    checkpoint = checkout / "results" / "smoke" / CANCELLED / "checkpoints" / "last.pt"
    deadline = time.monotonic() + 900
    while not checkpoint.is_file() and run.poll() is None and time.monotonic() < deadline:
        time.sleep(0.5)
    running = [j for j in _jobs() if f"rule_train_cell_wildcards_{CANCELLED}" in j.get("Comment", "")
               and j["JobState"] == "RUNNING"]
    assert checkpoint.is_file() and running, "the training job never reached its first checkpoint"
    subprocess.run(["scancel", running[0]["JobId"]], check=True)
    output, _ = run.communicate(timeout=1200)
    assert run.returncode == 0, output[-5000:]

    jobs = _jobs()
    for rule in ("train_cell", "evaluate_cell"):
        for cell in CELLS:
            mine = [j for j in jobs if f"rule_{rule}_wildcards_{cell}" in j.get("Comment", "")]
            assert mine and all(j.get("TresPerJob") == "gres:gpu:1" for j in mine), (rule, cell, mine)
            assert mine[-1]["JobState"] == "COMPLETED", (rule, cell, mine)
    cancelled = [j for j in jobs if f"rule_train_cell_wildcards_{CANCELLED}" in j.get("Comment", "")]
    assert [j["JobState"] for j in cancelled] == ["CANCELLED", "COMPLETED"], cancelled
    log = (checkout / "logs" / "smoke" / "train_cell" / f"{CANCELLED}.log").read_text()
    assert re.search(r"resuming from \S+last\.pt at iteration [1-9]\d* of \d+", log), log[-3000:]

    table = (checkout / "results" / "smoke" / "table.md").read_text()
    assert len(re.findall(r"\|\s*\d+\.\d\d%\s*\|\s*\d+\.\d\d%\s*\|", table)) == 2, table
    from mlflow import MlflowClient
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("deeplabv3plus-smoke")
    runs = client.search_runs([experiment.experiment_id])
    assert sorted(r.info.run_name for r in runs) == sorted(CELLS)
    assert all(r.info.status == "FINISHED" for r in runs)
    metrics = json.loads((checkout / "results" / "smoke" / CANCELLED / "metrics.json").read_text())
    assert metrics["mIoU"] >= 0
