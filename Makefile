# pgops developer entry points. `make test` is the full suite CI runs; `make test-fast` is the inner loop.
SHELL := /bin/bash
.SHELLFLAGS := -euo pipefail -c
VENV ?= .venv
BIN := $(VENV)/bin
# promtool comes with Debian's prometheus package (scripts/bootstrap.sh installs it).
PROMTOOL ?= promtool
export CONTAINERS_CONF := $(CURDIR)/molecule/containers.conf

.PHONY: setup lint lint-only lint-python lint-ansible test test-fast test-integration test-molecule demo bench wheel lock clean

setup:
	./scripts/bootstrap.sh

lint: setup lint-only

# The linters alone (scripts/test-all.sh runs them as its first timed stage, after setup). The Python linters and
# the Ansible/YAML/Prometheus linters are two independent targets, so `make -j2 lint-only` runs them on both cores.
lint-only: lint-python lint-ansible

lint-python:
	$(BIN)/ruff check src tests bench molecule roles/postgresql/files
	$(BIN)/ruff format --check src tests bench molecule roles/postgresql/files
	$(BIN)/mypy
	@# Each scenario's testinfra suite has its own conftest module, so each is its own mypy run.
	for d in molecule/*/tests; do $(BIN)/mypy --strict "$$d"; done

lint-ansible:
	$(BIN)/yamllint -s .
	$(PROMTOOL) check rules monitoring/alerts/*.rules.yml
	$(PROMTOOL) test rules monitoring/alerts/tests/*.yml
	@if [ -d roles ]; then $(BIN)/ansible-lint --profile production; fi

# pytest on four workers: each test module runs whole on one worker (--dist loadfile), so module fixtures (the
# compose stack, the clusters) are built once; every test takes its own ports and directories. Four, not two, on
# 2 cores: the tests spend about 40 % of their time waiting on servers, emulators and containers (826 tests: 521 s
# with -n 2, 360 s with -n 4). Modules start in collection order (--no-loadscope-reorder), so tests/compose, the
# longest module (about 170 s), starts first instead of last.
PYTEST_PARALLEL ?= -n 4 --dist loadfile --no-loadscope-reorder
# Molecule scenarios two at a time (each has its own containers, network and subnet; see scripts/molecule-all.sh).
export MOLECULE_JOBS ?= 2

## The full suite: lint, unit and integration tests against real PostgreSQL, S3 and GCS APIs, then Molecule;
## it ends with the time of each stage and each Molecule scenario (scripts/test-all.sh).
test:
	PYTEST_PARALLEL="$(PYTEST_PARALLEL)" VENV="$(VENV)" ./scripts/test-all.sh

## Inner loop: no lint, no Molecule, no slow tests.
test-fast: setup
	$(BIN)/pytest -x -q -m "not slow" tests

demo: setup
	./scripts/demo.sh

bench: setup
	$(BIN)/python bench/run.py $(BENCH_ARGS)

## The offline wheelhouse for hosts: dist/pgops (pgops + pinned deps + constraints.txt), dist/objectstore.
wheel: setup
	./scripts/build-wheels.sh

lock:
	$(BIN)/pip freeze --exclude-editable | grep -v '^pgops' > requirements/dev.txt.new && mv requirements/dev.txt.new requirements/dev.txt

clean:
	rm -rf $(VENV) dist build .mypy_cache .pytest_cache .ruff_cache
