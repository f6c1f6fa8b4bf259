# The two commands of the README. Each bootstraps .venv on first use (and again when pyproject.toml changes).
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python

.PHONY: demo test test-fast gpu-check

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	touch $@

# The main job on its embedded default: the whole DAG (3 datasets, 12 cells, 12 MLflow runs, the table)
# on the smoke preset on CPU. Rerunning it redoes only what changed; its table is results/smoke/table.md.
demo: $(VENV)/.installed
	$(VENV)/bin/snakemake --cores all --config preset=smoke
	@echo "Smoke table: results/smoke/table.md; MLflow: $(VENV)/bin/mlflow ui --backend-store-uri sqlite:///mlflow.db"

test: $(VENV)/.installed
	$(PY) -m pytest

# Day-to-day: everything but the tests marked slow (the DAG end to end, the learning check); a few minutes.
test-fast: $(VENV)/.installed
	$(PY) -m pytest -m "not slow"

# What the GPU at hand gives the recipe (a benchmark, not a test): training step, memory, auto-fit, loader,
# evaluation, compile, DDP; under ten minutes. Without CUDA it runs tiny sizes on the CPU, labelled as such.
gpu-check: $(VENV)/.installed
	$(PY) benchmarks/gpu_check.py --out gpu_check.md
