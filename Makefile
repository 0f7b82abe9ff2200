# Each target is self-contained: it creates .venv when missing and installs the package.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q --disable-pip-version-check -e ".[test]"
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/robustkit run experiments/quickstart.toml

test: $(STAMP)
	$(BIN)/ruff check robustkit tests benchmarks experiments
	$(BIN)/mypy
	$(BIN)/python -m pytest -q

lint: $(STAMP)
	$(BIN)/ruff check robustkit tests benchmarks experiments
	$(BIN)/mypy

bench: $(STAMP)
	$(BIN)/python benchmarks/train_targets.py

clean:
	rm -rf $(VENV) build *.egg-info
