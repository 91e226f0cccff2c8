# Undertow — `make help` lists the targets.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PYTEST_WORKERS ?= 2

.DEFAULT_GOAL := help

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*## "}; {printf "  \033[36m%-10s\033[0m %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	@touch $(STAMP)

install: $(STAMP) ## create .venv and install undertow with its dev tools

demo: $(STAMP) ## generate a sample warehouse and sync it into a local fake HubSpot, twice
	$(BIN)/undertow demo --dir .demo

test: $(STAMP) ## run the whole test suite (real services on this machine)
	$(BIN)/pytest -n $(PYTEST_WORKERS) --dist loadfile

test-fast: $(STAMP) ## unit tests only
	$(BIN)/pytest tests/unit -q

lint: $(STAMP) ## ruff lint + format check + mypy (strict on undertow/)
	$(BIN)/ruff check undertow tests bench
	$(BIN)/ruff format --check undertow tests bench
	$(BIN)/mypy

format: $(STAMP) ## apply ruff formatting and safe fixes
	$(BIN)/ruff check --fix undertow tests bench
	$(BIN)/ruff format undertow tests bench

bench: $(STAMP) ## print throughput and memory figures (never fails on timing)
	$(BIN)/python bench/run.py

clean: ## remove the virtualenv and generated files
	rm -rf $(VENV) .demo .pytest_cache .mypy_cache .ruff_cache

.PHONY: help install demo test test-fast lint format bench clean
