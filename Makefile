# The two commands of the README. Each bootstraps .venv on first use (and again when pyproject.toml changes).
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python

.PHONY: demo test

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	touch $@

# The main job on its embedded default: the smoke preset on CPU.
demo: $(VENV)/.installed
	$(PY) -m pipeline.selfcheck

test: $(VENV)/.installed
	$(PY) -m pytest
