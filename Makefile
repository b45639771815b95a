# Set-up and test entry points. Everything runs inside .venv.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
# The CPU build of PyTorch is installed first and pinned, so that no dependency can pull a CUDA build.
TORCH_PIN ?= torch==2.13.0

.PHONY: venv install dev demo test lint bench clean

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q "$(TORCH_PIN)"

install: $(BIN)/python
	$(BIN)/pip install -q -e . "$(TORCH_PIN)"

dev: $(BIN)/python
	$(BIN)/pip install -q -e ".[dev]" "$(TORCH_PIN)"

# the demo makes phantom data (nilearn's template) and writes a report with figures (matplotlib)
demo: $(BIN)/python
	$(BIN)/pip install -q -e ".[phantom,report]" "$(TORCH_PIN)"
	$(BIN)/attnseg demo

# ruff, then the package layers of pyproject.toml's [tool.importlinter] (docs/architecture.md)
lint: dev
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/lint-imports --no-cache

test: dev lint
	OMP_NUM_THREADS=2 $(BIN)/python -m pytest -q -n 2 --dist loadfile tests

bench: $(BIN)/python
	$(BIN)/pip install -q -e ".[bench]" "$(TORCH_PIN)"
	$(BIN)/python benchmarks/run_all.py

clean:
	rm -rf $(VENV) build *.egg-info src/*.egg-info
