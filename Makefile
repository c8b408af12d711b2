# One entry point for humans and CI. `make up` then `make test` on a fresh machine.
SHELL := /bin/bash
PY := .venv/bin/python
STACK := $(PY) deploy/local/stack.py
# uv from PATH if the machine has it, else a private copy bootstrapped from PyPI into .local/uv (no system change).
UV := $(shell command -v uv 2>/dev/null || echo .local/uv/bin/uv)
# Copies of every service (`make up REPLICAS=2`): copy k of order is order-k on port 8080 + 100*(k-1).
REPLICAS ?= 1
# FerretDB's storage for `make up`: sqlite (default) or postgresql (a private PostgreSQL on 127.0.0.1:5433).
FULFIL_STORE_BACKEND ?= sqlite
export REPLICAS FULFIL_STORE_BACKEND

.PHONY: bench help venv up down seed services-restart infra-up infra-down infra-status status test test-unit lint typecheck fmt clean docs chaos

help:  ## list targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-14s %s\n", $$1, $$2}'

venv: .venv/.synced  ## install Python dependencies from uv.lock (bootstraps uv if the machine lacks it)
.venv/.synced: pyproject.toml uv.lock | $(UV)
	$(UV) sync --frozen --quiet
	@touch $@

.local/uv/bin/uv:
	@command -v python3 >/dev/null || { echo "python3 (3.11+) not found"; exit 1; }
	@echo "uv not on PATH: installing a private copy into .local/uv"
	python3 -m venv .local/uv
	.local/uv/bin/pip install --quiet --disable-pip-version-check uv

infra-up: venv  ## start Kafka, FerretDB, Jaeger and the SMTP sink on 127.0.0.1
	$(STACK) infra-up

infra-down: venv  ## stop the infrastructure (and the services)
	$(STACK) down

infra-status: venv  ## show which servers answer
	$(STACK) status

up: venv  ## the whole system: infrastructure, topics, the services (REPLICAS=N copies), seeded stock
	$(STACK) up

down: venv  ## stop everything `make up` started
	$(STACK) down

seed: venv  ## re-seed the documented stock catalogue
	$(PY) -m tools.fulfil.cli stock seed --yes

services-restart: venv  ## restart the services, REPLICAS copies of each (after a code change)
	$(STACK) services-down && $(STACK) services-up

status: venv  ## which servers and services (replicas included) answer, with their pids
	$(STACK) status

test: venv  ## lint, typecheck and every test (brings the local stack up if it is not running)
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	$(PY) -m mypy .
	$(STACK) up
	$(PY) -m pytest -q -ra

test-unit: venv  ## fast tests that need no server (the fuzzers run in make test)
	$(PY) -m pytest -q -m "not infra and not e2e and not fuzz"

lint: venv
	$(PY) -m ruff check . && $(PY) -m ruff format --check .

typecheck: venv
	$(PY) -m mypy .

fmt: venv
	$(PY) -m ruff format . && $(PY) -m ruff check --fix .

docs: venv  ## regenerate docs/schemas/ and docs/asyncapi*.json from the event models
	$(PY) -m tools.drills.schemas

bench: venv  ## highest sustained orders/s, latency, and the broker ceiling (RATE=n DURATION=s: one fixed run; OVERLOAD=4: then 4x that rate; SMOKE=1)
	$(PY) -m tools.fulfil.cli bench --yes $(if $(SMOKE),--smoke) $(if $(RATE),--rate $(RATE)) $(if $(DURATION),--duration $(DURATION)) $(if $(OVERLOAD),--overload $(OVERLOAD))

chaos: venv  ## chaos drill on the running stack: kills, restarts, then `fulfil verify` (SEED=n repeats a run)
	$(PY) -m tools.fulfil.cli chaos --yes $(if $(SEED),--seed $(SEED))

clean: down  ## stop everything and delete local data (.local/)
	rm -rf .local
