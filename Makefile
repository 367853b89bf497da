# reconciler: run `make help` for the targets.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.DEFAULT_GOAL := help
.PHONY: help install test unit lint format check run docs install-systemd clean crash hostile load faults reliability soak bench multinode

help: ## list the targets
	@grep -hE '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	@touch $(STAMP)

install: $(STAMP) ## create .venv and install reconciler with its dev tools

test: $(STAMP) ## run the whole test suite (installs first if needed)
	$(BIN)/pytest -q --durations=25 $(PYTEST_ARGS)

unit: $(STAMP) ## the unit suite alone (pure plans, stores, the API in-process: about half a minute)
	$(BIN)/pytest -q tests/unit $(PYTEST_ARGS)

crash: $(STAMP) ## crash injection, full: 200 daemon SIGKILLs (process), 50 (Docker), 50 edge and 50 API faults (~40 min)
	CRASH_RUNS=$${CRASH_RUNS:-200} CRASH_DOCKER_RUNS=$${CRASH_DOCKER_RUNS:-50} CRASH_PART_RUNS=$${CRASH_PART_RUNS:-50} \
	  $(BIN)/pytest -q -s tests/suites/test_crash_injection.py tests/suites/test_crash_parts.py

hostile: $(STAMP) ## hostile input, full: schemathesis and hypothesis 500 examples each, every daemonizing app, files cut at every line
	HOSTILE_EXAMPLES=$${HOSTILE_EXAMPLES:-500} HOSTILE_FULL=1 $(BIN)/pytest -q -s tests/suites/test_hostile_input.py tests/suites/test_hostile_apps.py tests/suites/test_hostile_files.py

load: $(STAMP) ## load, full: 50 projects, 200 API clients 30 s, 100 writes, 1,000 deploys, an editor vs 4 clients, 40 sites under keep-alive
	LOAD_PROJECTS=50 LOAD_CLIENTS=200 LOAD_SECONDS=30 LOAD_CALLS=100 LOAD_DEPLOYS=1000 LOAD_EDITOR_SAVES=200 LOAD_EDGE_CHANGES=40 $(BIN)/pytest -q -s tests/suites/test_load.py

faults: $(STAMP) ## engine faults: a disk full at each stage of a deploy, dockerd stopped and started (restarts it!)
	ENGINE_FAULTS=1 $(BIN)/pytest -q -s tests/suites/test_engine_faults.py

soak: $(STAMP) ## two processes writing the state database at once for 5 minutes (make test: 15 s)
	RECONCILER_SOAK_SECONDS=$${RECONCILER_SOAK_SECONDS:-300} $(BIN)/pytest -q -s tests/suites/test_store_concurrency.py -k concurrently

reliability: crash hostile load faults soak ## every reliability suite at full size (see RELIABILITY.md)

multinode: $(STAMP) ## (root) the swarm runtime on a real three-node swarm made on this machine (~2 min)
	@command -v docker-registry >/dev/null || { \
	  echo "multinode: installing docker-registry"; apt-get install -y -qq docker-registry >/dev/null; }
	MULTINODE=1 $(BIN)/pytest -q -s tests/multinode

bench: $(STAMP) ## every benchmark figure (~20 min), the table into BENCHMARKS.md, JSON into benchmarks/results/
	@command -v wrk >/dev/null && command -v curl >/dev/null || { \
	  echo "bench: installing wrk and curl"; apt-get install -y -qq wrk curl >/dev/null; }
	$(BIN)/python -m benchmarks.run --write-md $(BENCH_ARGS)

lint: $(STAMP) ## ruff check, ruff format --check, mypy --strict, the import layering contracts
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/lint-imports

format: $(STAMP) ## apply ruff's fixes and formatting
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

check: lint test ## lint, then test

docs: $(STAMP) ## the documentation (docs/) as a site in build/site; a broken link fails it
	$(BIN)/mkdocs build --strict --quiet

run: $(STAMP) ## quickstart: the daemon on ./desired and ./data (process runtime, no Docker)
	$(BIN)/reconciler run --desired ./desired --data ./data

install-systemd: ## (root) system user (lingering), dirs, /opt/reconciler venv, units
	systemd/install.sh

clean: ## remove the venv and caches (keeps ./data)
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
