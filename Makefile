# Undertow — `make help` lists the targets.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PYTEST_WORKERS ?= 2
# dbt for the fixtures and the exposures test (never an undertow dependency): dbt-core 1.11
# downloads a binary while it installs, which our machines cannot do
DBT := 'dbt-core>=1.10,<1.11' 'dbt-duckdb>=1.9'
ORCH := .venv-orchestrators

.DEFAULT_GOAL := help

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*## "}; {printf "  \033[36m%-10s\033[0m %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	@touch $(STAMP)

install: $(STAMP) chromium ## create .venv and install undertow with its dev tools (and chromium)

demo: $(STAMP) ## generate a sample warehouse and sync it into a local fake HubSpot, twice
	$(BIN)/undertow demo --dir .demo
	@echo "Open the web UI on the demo project: $(BIN)/undertow demo --ui --dir .demo"

screenshots: $(STAMP) chromium ## the web UI's pages at 1280x800 into docs/ui/ (headless chromium)
	$(BIN)/python tests/e2e/ui_screenshots.py docs/ui

chromium: ## install Debian's headless chromium for the web UI tests, when missing
	@test -x /usr/bin/chromium || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; }

test: $(STAMP) chromium ## run the whole test suite (real services on this machine)
	$(BIN)/pytest -n $(PYTEST_WORKERS) --dist loadfile -m "not orchestrators and not warehouses"

$(ORCH)/bin/dbt: pyproject.toml Makefile
	test -x $(ORCH)/bin/pytest || $(PY) -m venv $(ORCH)
	$(ORCH)/bin/pip install -q -e '.[dev,airflow,dagster]' $(DBT)
	@touch $(ORCH)/bin/dbt

test-orchestrators: $(ORCH)/bin/dbt ## Airflow, Dagster and dbt (exposures parse) in their own venv (.venv-orchestrators)
	$(ORCH)/bin/pytest tests/orchestrators -m orchestrators -p no:cacheprovider

dbt-fixtures: $(ORCH)/bin/dbt ## rebuild the dbt projects' target/ artifacts under tests/fixtures with real dbt-duckdb
	$(ORCH)/bin/python tests/fixtures/dbt/build.py

test-warehouses: ## Snowflake (fakesnow: source and table destination) and ClickHouse (chDB) in their own venv (.venv-warehouses)
	test -x .venv-warehouses/bin/pytest || $(PY) -m venv .venv-warehouses
	.venv-warehouses/bin/pip install -q -e '.[dev,snowflake,clickhouse,warehouse-emulators]'
	.venv-warehouses/bin/pytest tests/unit/test_source_clickhouse.py tests/integration/test_source_snowflake.py tests/integration/test_snowflake_destination.py tests/integration/test_diff_engines.py tests/integration/test_access_emulators.py tests/integration/test_sync_logs.py -m warehouses -p no:cacheprovider -n $(PYTEST_WORKERS) --dist load

test-fast: $(STAMP) ## unit tests only
	$(BIN)/pytest tests/unit -q -m "not warehouses"

lint: $(STAMP) ## ruff lint + format check + mypy (strict on undertow/)
	$(BIN)/ruff check undertow tests bench
	$(BIN)/ruff format --check undertow tests bench
	$(BIN)/mypy

format: $(STAMP) ## apply ruff formatting and safe fixes
	$(BIN)/ruff check --fix undertow tests bench
	$(BIN)/ruff format undertow tests bench

bench: $(STAMP) ## print throughput and memory figures (never fails on timing)
	$(BIN)/python bench/run.py
	$(BIN)/python bench/extract.py
	$(BIN)/python bench/diff.py
	$(BIN)/python bench/side_by_side.py

bench-peers: $(STAMP) ## the side-by-side with dlt and drt-core, each in its own venv (.venv-bench-dlt, .venv-bench-drt)
	test -x .venv-bench-dlt/bin/python || $(PY) -m venv .venv-bench-dlt
	.venv-bench-dlt/bin/pip install -q "dlt==1.31.0" duckdb pyarrow
	test -x .venv-bench-drt/bin/python || $(PY) -m venv .venv-bench-drt
	.venv-bench-drt/bin/pip install -q "drt-core==1.2.1" duckdb
	$(BIN)/python bench/side_by_side.py --peers
	$(BIN)/python bench/sync_logs.py

bench-destinations: $(STAMP) ## each destination against its fake at the vendor's limits (records/s, share of the ceiling, slow-downs, p95); queues and databases on the real servers (records/s, ratio to file)
	$(BIN)/python bench/destinations.py
	$(BIN)/python bench/servers.py
	@if [ -x .venv-warehouses/bin/python ]; then .venv-warehouses/bin/python bench/servers.py snowflake; \
	else echo "snowflake (fakesnow): skipped, run make test-warehouses once to create .venv-warehouses"; fi

bench-cluster: $(STAMP) ## cluster figures: chaos across 3 workers (kill -9 for a minute), the shared rate budget
	$(BIN)/python bench/cluster_budget.py
	$(BIN)/python bench/cluster_chaos.py

clean: ## remove the virtualenv and generated files
	rm -rf $(VENV) .venv-orchestrators .venv-warehouses .venv-bench-dlt .venv-bench-drt .demo .pytest_cache .mypy_cache .ruff_cache

.PHONY: help install chromium screenshots demo test test-orchestrators dbt-fixtures test-warehouses test-fast lint format bench bench-destinations bench-cluster bench-peers clean
