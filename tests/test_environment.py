"""The environment on record: the lock file agrees with pyproject.toml, and a run's environment fields."""
from __future__ import annotations

import hashlib
import http.server
import json
from pathlib import Path

import pytest
import torch

from deeplab.environment import describe, freeze, lock_drift, lock_state, summary
from tests.train_fixtures import ROOT

REFRESH = "make lock (uv pip compile ...) and commit requirements.lock"


def test_the_lock_satisfies_every_requirement_of_pyproject() -> None:
    """Drift check, offline: each direct dependency (and the dev extra) is pinned in requirements.lock to a
    version its specifier allows. Editing pyproject.toml without refreshing the lock fails here."""
    problems = lock_drift((ROOT / "pyproject.toml").read_text(), (ROOT / "requirements.lock").read_text())
    assert not problems, f"requirements.lock disagrees with pyproject.toml: {problems}; run {REFRESH}"


def test_the_drift_check_catches_a_stale_lock() -> None:
    pyproject, lock = (ROOT / "pyproject.toml").read_text(), (ROOT / "requirements.lock").read_text()
    assert lock_drift(pyproject.replace('"mlflow==3.17.2"', '"mlflow==3.18.0"'), lock) == \
        ["mlflow==3.18.0 (locked: 3.17.2)"]
    assert lock_drift(pyproject.replace('"pandas>=2",', '"pandas>=2",\n    "no-such-package>=1",'), lock) == \
        ["no-such-package>=1 (locked: absent)"]


def test_installed_packages_are_compared_with_the_lock(tmp_path: Path) -> None:
    lock = tmp_path / "requirements.lock"
    lock.write_text(f"torch=={torch.__version__.split('+')[0]} \\\n    --hash=sha256:00\nnot-installed-pkg==1.0\n")
    state = lock_state(lock)
    assert state["lock_matches"] is False and state["lock_mismatches"] == [
        "not-installed-pkg: locked 1.0, installed none"]
    lock.write_text(f"torch=={torch.__version__.split('+')[0]}\n")
    assert lock_state(lock)["lock_matches"] is True and len(lock_state(lock)["lock_sha256"]) == 64
    assert f"\ntorch=={torch.__version__.split('+')[0]}" in freeze()


def test_a_cpu_run_names_every_field_and_says_there_is_no_gpu() -> None:
    env = describe(torch.device("cpu"), ROOT / "requirements.lock")
    assert {"python", "torch", "torchvision", "cuda", "cudnn", "nccl", "device", "device_count", "gpu_name",
            "gpu_memory_gib", "gpu_driver", "cpu", "cpu_cores", "lock_sha256", "lock_matches"} <= set(env)
    assert env["device"] == "cpu" and env["device_count"] == 0
    assert env["gpu_name"] is None and env["gpu_driver"] is None and env["cudnn"] is None  # explicit, not missing
    assert env["torch"] == torch.__version__ and env["cpu_cores"] > 0
    assert summary(env).startswith(f"{env['cpu_cores']}-core CPU") and f"torch {torch.__version__}" in summary(env)
    json.dumps(env)  # JSON-ready


@pytest.mark.slow
def test_a_lock_made_with_an_extra_index_installs_from_it(tmp_path: Path) -> None:
    """`make lock TORCH_INDEX=<index>` then the install step of `make test`/`make demo`: a wheel that only
    that index has (a local one on 127.0.0.1, as a PyTorch CUDA index would serve torch+cu128) is locked and
    installed from there. The lock names the index; without it `uv pip sync` finds no such package."""
    import functools
    import shutil
    import subprocess
    import threading
    index = tmp_path / "index" / "simple"
    wheel = build_probe_wheel(index / "deeplab-index-probe")
    digest = hashlib.sha256(wheel.read_bytes()).hexdigest()
    (index / "deeplab-index-probe" / "index.html").write_text(f'<a href="{wheel.name}#sha256={digest}">{wheel.name}</a>')
    (index / "index.html").write_text('<a href="deeplab-index-probe/">deeplab-index-probe</a>')
    handler = functools.partial(QuietHandler, directory=str(tmp_path / "index"))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    project = tmp_path / "project"
    project.mkdir()
    shutil.copy(ROOT / "Makefile", project / "Makefile")
    (project / "pyproject.toml").write_text(
        '[project]\nname = "probe-project"\nversion = "0"\ndependencies = ["deeplab-index-probe==0.1"]\n'
        '[project.optional-dependencies]\ndev = []\n[build-system]\nrequires = ["setuptools>=61"]\n'
        'build-backend = "setuptools.build_meta"\n[tool.setuptools]\npy-modules = []\n')
    url = f"http://127.0.0.1:{server.server_address[1]}/simple"
    try:
        def make(*args: str) -> subprocess.CompletedProcess[str]:
            return subprocess.run(["make", *args], cwd=project, capture_output=True, text=True, timeout=600)
        locked = make("lock", f"TORCH_INDEX={url}")
        assert locked.returncode == 0, locked.stdout + locked.stderr
        assert f"--extra-index-url {url}" in (project / "requirements.lock").read_text().splitlines()
        installed = make(".venv/.installed")
        assert installed.returncode == 0, installed.stdout + installed.stderr
        probe = subprocess.run([str(project / ".venv/bin/python"), "-c", "import deeplab_index_probe as p; print(p.WHERE)"],
                               capture_output=True, text=True)
        assert probe.stdout.strip() == "the local index"
        assert lock_drift((project / "pyproject.toml").read_text(), (project / "requirements.lock").read_text()) == []
    finally:
        server.shutdown()


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args: object) -> None:
        pass


def build_probe_wheel(folder: Path) -> Path:
    """A pure-Python wheel, deeplab-index-probe 0.1, that no registry has."""
    import base64
    import zipfile
    name, version = "deeplab_index_probe", "0.1"
    files = {f"{name}/__init__.py": b"WHERE = 'the local index'\n",
             f"{name}-{version}.dist-info/METADATA": f"Metadata-Version: 2.1\nName: deeplab-index-probe\nVersion: {version}\n".encode(),
             f"{name}-{version}.dist-info/WHEEL": b"Wheel-Version: 1.0\nGenerator: tests\nRoot-Is-Purelib: true\nTag: py3-none-any\n"}
    record = "".join(f"{path},sha256={base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b'=').decode()},"
                     f"{len(data)}\n" for path, data in files.items()) + f"{name}-{version}.dist-info/RECORD,,\n"
    folder.mkdir(parents=True, exist_ok=True)
    wheel = folder / f"{name}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        for path, data in files.items():
            archive.writestr(path, data)
        archive.writestr(f"{name}-{version}.dist-info/RECORD", record)
    return wheel
