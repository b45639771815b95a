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

demo: install
	$(BIN)/attnseg demo

lint: dev
	$(BIN)/ruff check src tests benchmarks

test: dev lint
	OMP_NUM_THREADS=2 $(BIN)/python -m pytest -q -n 2 --dist loadfile tests

bench: install
	$(BIN)/python benchmarks/run_all.py

clean:
	rm -rf $(VENV) build *.egg-info src/*.egg-info
