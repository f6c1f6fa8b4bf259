# The two commands of the README. Each bootstraps .venv on first use (and again when the lock changes): uv
# from the package registry, then exactly the locked versions (requirements.lock), then this project.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
UV     := $(VENV)/bin/uv
LOCK_FOR := --python-version 3.11 --python-platform x86_64-manylinux_2_28

.PHONY: demo test test-fast gpu-check lock

$(VENV)/.installed: requirements.lock pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	test -x $(UV) || $(PY) -m pip install -q "uv>=0.13,<0.14"
	$(UV) pip sync --python $(PY) -q requirements.lock
	# compiled once here (uv does not; about 30 s of CPU), not by the first start of each tool: mlflow ui, the
	# DAG's first jobs and the tests' first imports start faster
	$(PY) -m compileall -q -j 0 $(VENV)/lib > /dev/null || true  # a few packages ship files that are not Python 3
	$(UV) pip install --python $(PY) -q --no-deps -e .
	touch $@

# `dvc plots show`'s page with Vega inlined, so it renders offline (.dvc/config names it; never committed)
.dvc/plots_offline.html: $(VENV)/.installed pipeline/plots_template.py
	$(PY) -m pipeline.plots_template

# After editing pyproject.toml's dependencies: resolve the whole environment again (Linux x86_64, Python 3.11;
# existing pins are kept where they still satisfy pyproject.toml). Commit requirements.lock with the change.
# TORCH_INDEX: a PyTorch wheel index whose builds win (an older driver: TORCH_INDEX=https://download.pytorch.org/whl/cu128;
# the registry's torch 2.14.1 is the CUDA 13.0 build, which needs an r580+ driver). The lock then names the
# indexes it was resolved from (--emit-index-url), so `uv pip sync` (make test, make demo) installs from them.
TORCH_INDEX ?=
lock:
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	test -x $(UV) || $(PY) -m pip install -q "uv>=0.13,<0.14"
	$(UV) pip compile pyproject.toml --extra dev --generate-hashes $(LOCK_FOR) \
		$(if $(TORCH_INDEX),--extra-index-url $(TORCH_INDEX) --emit-index-url) -o requirements.lock

# The main job on its embedded default: the whole DAG (3 datasets, 12 cells, 12 MLflow runs, the table)
# on the smoke preset on CPU. Rerunning it redoes only what changed; its table is results/smoke/table.md.
demo: $(VENV)/.installed .dvc/plots_offline.html
	$(VENV)/bin/snakemake --cores all --config preset=smoke
	@echo "Smoke table: results/smoke/table.md; report: $(VENV)/bin/snakemake --report report.html --config preset=smoke"
	@$(PY) -m pipeline.init_tracking --preset smoke --ui

# Everything (what CI runs): two workers, a test module each at a time (its shared DAG run stays in one worker),
# the longest modules first (LONGEST_FIRST in tests/conftest.py; xdist would otherwise reorder by test count).
test: $(VENV)/.installed .dvc/plots_offline.html
	$(PY) -m pytest -n 2 --dist loadfile --no-loadscope-reorder

# Day-to-day, under two minutes: the unit tests, on both cores. Not the tests that run Snakemake or DVC, start a
# server or wait on several processes (integration), the DAG end to end and the learning check (slow), or Slurm.
# worksteal: a worker that runs dry takes half of the other's queue, so a few 10-second tests do not end the run
# on one core.
test-fast: $(VENV)/.installed .dvc/plots_offline.html
	$(PY) -m pytest -n 2 --dist worksteal -m "not slow and not integration and not slurm"

# What the GPU at hand gives the recipe (a benchmark, not a test): training step, memory, auto-fit, loader,
# evaluation, compile, DDP; under ten minutes. Without CUDA it runs tiny sizes on the CPU, labelled as such.
gpu-check: $(VENV)/.installed
	$(PY) benchmarks/gpu_check.py --out gpu_check.md
