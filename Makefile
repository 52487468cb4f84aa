# The README's commands. Every target installs what it needs first.
SHELL := /bin/bash
.DEFAULT_GOAL := help
PY_VERSION := 3.11
UV_VERSION := 0.13.8
TOOLS := .local/tools
UV := $(shell command -v uv 2>/dev/null || echo $(TOOLS)/bin/uv)
VENV := .venv
AIRBYTE_VENV := .venv-airbyte
PYTHON := $(VENV)/bin/python
# The interpreter both virtualenvs are made from: the system's python3.11 where there is one (Debian's
# is built with PGO and LTO, as are the images' and the official Docker ones), else the first 3.11 uv
# finds. A plain source build, such as pyenv's default, costs ~20% more CPU for the same Python work
# (benchmarks/interpreter_speed.py), and make test is CPU-bound. `make install PY_INTERPRETER=...`
# picks another; a virtualenv made from a different interpreter is made again.
PY_INTERPRETER ?= $(or $(wildcard /usr/bin/python$(PY_VERSION)),$(PY_VERSION))
# make test's parallel pytest workers: each module that needs a stack waits mostly on Airflow and
# Airbyte, so more workers than cores (tests/conftest.py gives each worker its own stack).
TEST_WORKERS ?= 3
DBT_DIR := $(or $(ELT_DBT_PROJECT_DIR),include/dbt)
DBT_MANIFEST := $(DBT_DIR)/target/manifest.json
DBT_SOURCES := $(shell find $(DBT_DIR) -path $(DBT_DIR)/target -prune -o -path $(DBT_DIR)/logs -prune -o -path $(DBT_DIR)/dbt_packages -prune -o -type f \( -name '*.sql' -o -name '*.yml' -o -name '*.yaml' -o -name '*.csv' \) -print 2>/dev/null)
export DO_NOT_TRACK := 1
export AIRFLOW__COSMOS__ENABLE_TELEMETRY := False
export SCARF_ANALYTICS := false

.PHONY: help install up down status demo test test-fast compose-test lint format lock lock-check dbt-manifest dbt-docs check new-pipeline clean browser

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-13s %s\n", $$1, $$2}'

$(TOOLS)/bin/uv:
	@echo "bootstrapping uv $(UV_VERSION) into $(TOOLS)"
	@python3 -m pip install --quiet --disable-pip-version-check --target $(TOOLS) uv==$(UV_VERSION)

# --compile-bytecode: every process (each Airflow service, task runner and dbt run) then loads
# .pyc files instead of compiling its imports, which it would do every time where
# PYTHONDONTWRITEBYTECODE is set (as on CI): a stack starts in 34 CPU-s, not 61.
# `other-interpreter` when the virtualenv $(1) exists but was made from another interpreter than
# PY_INTERPRETER (a path to one that exists): its .installed target then runs again, and makes it
# anew. A PY_INTERPRETER that names no file leaves an existing virtualenv alone (uv names it if
# there is none to keep).
other_interpreter = $(if $(and $(realpath $(PY_INTERPRETER)),$(wildcard $(1)/bin/python)),$(if $(filter $(realpath $(PY_INTERPRETER)),$(realpath $(1)/bin/python)),,other-interpreter))
make_venv = test -x $(1)/bin/python -a -z "$(call other_interpreter,$(1))" || { rm -rf $(1) && $(UV) venv --quiet --python $(PY_INTERPRETER) $(1); }

.PHONY: other-interpreter
other-interpreter: ;
$(VENV)/.installed: requirements.lock $(call other_interpreter,$(VENV)) | $(UV)
	@$(call make_venv,$(VENV))
	$(UV) pip install --quiet --compile-bytecode --python $(PYTHON) -r requirements.lock
	@touch $@

$(AIRBYTE_VENV)/.installed: dev/requirements-airbyte.lock $(call other_interpreter,$(AIRBYTE_VENV)) | $(UV)
	@$(call make_venv,$(AIRBYTE_VENV))
	$(UV) pip install --quiet --compile-bytecode --python $(AIRBYTE_VENV)/bin/python -r dev/requirements-airbyte.lock
	@touch $@

$(DBT_MANIFEST): $(VENV)/.installed $(DBT_SOURCES)
	PYTHONPATH=plugins $(PYTHON) -m elt.dbt

dbt-manifest: $(DBT_MANIFEST) ## dbt deps (if packages.yml) + compile the project's target/manifest.json (what Cosmos renders)

install: $(VENV)/.installed $(AIRBYTE_VENV)/.installed $(DBT_MANIFEST) ## create .venv and .venv-airbyte from the locks

up: install ## start the local stack in the background and print its URLs and login
	@$(PYTHON) -m dev.stack up

down: ## stop everything `make up` started
	@test -x $(PYTHON) && $(PYTHON) -m dev.stack down || echo "nothing to stop (no .venv)"

status: ## show which services of the stack are running
	@$(PYTHON) -m dev.stack status

demo: install ## start the stack, run every pipeline once through the scheduler, print a summary, stop
	@$(PYTHON) -m dev.demo

test: install lock-check browser ## the whole test suite (what CI runs), then compose-test
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/pytest -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder
	@$(MAKE) --no-print-directory compose-test

compose-test: $(VENV)/.installed | $(UV) ## build the images, run both pipelines on the compose deployment (private dockerd), tear down
	@UV=$(UV) $(PYTHON) tests/deploy/compose_test.py

test-fast: $(VENV)/.installed $(DBT_MANIFEST) ## lint + unit and DAG tests: no services, under 2 minutes (run on every change)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/pytest -q tests/unit tests/dags -m "not stack"
	PYTHONPATH=plugins $(PYTHON) -m elt check

STACK_ENV := $(or $(STACK_HOME),.local)/stack.env
ENV_FROM_STACK := if [ -f $(STACK_ENV) ]; then set -a; . $(STACK_ENV); set +a; fi;

check: $(VENV)/.installed $(DBT_MANIFEST) ## specs vs dbt sources; AIRBYTE=1 also vs the live Airbyte (`make up`)
	@$(ENV_FROM_STACK) PYTHONPATH=plugins $(PYTHON) -m elt check $(if $(AIRBYTE),--airbyte)

dbt-docs: $(VENV)/.installed ## dbt docs generate into the dir the UI serves (Browse → dbt docs); needs `make up`
	@$(ENV_FROM_STACK) PYTHONPATH=plugins $(PYTHON) -m elt.dbt_docs $(if $(DIR),--target-dir $(DIR))

new-pipeline: $(VENV)/.installed ## scaffold a pipeline: make new-pipeline NAME=books CONNECTION=<airbyte connection id>
	@test -n "$(NAME)" -a -n "$(CONNECTION)" || { echo "usage: make new-pipeline NAME=<name> CONNECTION=<id>"; exit 2; }
	@$(ENV_FROM_STACK) PYTHONPATH=plugins $(PYTHON) -m elt new-pipeline $(NAME) --connection $(CONNECTION)

lint: install ## ruff check and format check
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: install ## apply ruff's formatting and safe fixes
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

lock: | $(UV) ## re-resolve requirements.lock and dev/requirements-airbyte.lock from their inputs
	$(UV) pip compile --quiet --no-header --python-version $(PY_VERSION) requirements-dev.txt -o requirements.lock
	$(UV) pip compile --quiet --no-header --python-version $(PY_VERSION) dev/requirements-airbyte.txt -o dev/requirements-airbyte.lock

# Compiles onto a copy of each lock, whose pins uv keeps where the inputs allow: a release upstream
# since the lock was made is no difference, a changed input is.
lock-check: | $(UV) ## fail if a lock is out of date with its inputs
	@tmp=$$(mktemp -d); cp requirements.lock $$tmp/main.lock; cp dev/requirements-airbyte.lock $$tmp/airbyte.lock; \
	$(UV) pip compile --quiet --no-header --python-version $(PY_VERSION) requirements-dev.txt -o $$tmp/main.lock && \
	$(UV) pip compile --quiet --no-header --python-version $(PY_VERSION) dev/requirements-airbyte.txt -o $$tmp/airbyte.lock && \
	diff -u requirements.lock $$tmp/main.lock && diff -u dev/requirements-airbyte.lock $$tmp/airbyte.lock \
	  || { echo "a lock is out of date with its inputs: run 'make lock' and commit the result"; exit 1; }

browser: ## install Debian's chromium for the browser test (Playwright drives it; no browser download)
	@command -v chromium >/dev/null || { echo "installing Debian's chromium"; \
	  $$( [ "$$(id -u)" = 0 ] || echo sudo ) apt-get update -qq && \
	  $$( [ "$$(id -u)" = 0 ] || echo sudo ) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; }

clean: down ## stop the stack and delete local state, generated files and caches (keeps the virtualenvs)
	@ELT_DOCKER_DIR=$(CURDIR)/.local-docker dev/docker/dockerd.sh stop >/dev/null 2>&1 || true
	rm -rf .local .local-pytest .local-docker $(DBT_DIR)/target $(DBT_DIR)/logs .pytest_cache .ruff_cache
	find . -name __pycache__ -type d -not -path './.venv*' -prune -exec rm -rf {} +
