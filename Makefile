# Two entry points: `make demo` runs Governor, `make test` runs every test.
# Both create .venv on first use and install the project into it.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
STAMP_DEV := $(VENV)/.installed-dev

.PHONY: demo test lint typecheck bench system-deps clean

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

$(STAMP): pyproject.toml setup.py $(wildcard collector/_otlp*.[ch]) | $(BIN)/python
	$(BIN)/pip install --quiet -e .
	touch $@

$(STAMP_DEV): pyproject.toml setup.py $(wildcard collector/_otlp*.[ch]) | $(BIN)/python
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@ $(STAMP)

demo: $(STAMP)
	$(BIN)/governor demo $(DEMO_ARGS)

# System packages some tests compare against (promtool, prometheus, alertmanager).
# Installed when running as root (as CI does); elsewhere those tests skip and say why.
system-deps:
	@scripts/system-deps.sh

test: $(STAMP_DEV) system-deps
	$(BIN)/ruff check collector controlplane alerts dashboards tests bench
	$(BIN)/mypy
	$(BIN)/pytest

lint: $(STAMP_DEV)
	$(BIN)/ruff check collector controlplane alerts dashboards tests bench
	$(BIN)/ruff format --check collector controlplane alerts dashboards tests bench

typecheck: $(STAMP_DEV)
	$(BIN)/mypy

bench: $(STAMP_DEV)
	$(BIN)/python -m bench.store

clean:
	rm -rf $(VENV) governor-data .pytest_cache .mypy_cache .ruff_cache
