# The two commands of the README, and a few helpers. The work is done in scripts/setup.sh.

SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
HOST ?= 127.0.0.1
PORT ?= 8000

.PHONY: run test test-fast bench setup setup-dev lint format

## run: set up (venv, requirements, model, database, static files, demo login) and serve the site
run: setup
	@scripts/setup.sh site "http://$(HOST):$(PORT)/"
	@echo "==> Starting Daphne on http://$(HOST):$(PORT)/ (Ctrl+C stops it, letting replies finish)"
	@exec $(PY) manage.py serve --host $(HOST) --port $(PORT)

# Test worker processes (pytest-xdist): three on 2 cores. Tests often wait (for a server to start,
# a paced engine, a page), and a third worker's tests use those gaps: on this project's machine
# (2 cores, quiet, 2026-12-07) the whole suite took 6 min 3-28 s on two workers, 4 min 43 s to
# 5 min 33 s on three, 5 min 16 s on four. Each test module runs whole on one worker, in its order,
# the slow ones handed out first (tests/xdist_groups.py). TEST_WORKERS=0 runs everything in this
# one process.
TEST_WORKERS ?= 3

# Bytecode, and pytest's rewritten test modules, are kept in .data/pycache (ignored by git) even
# where PYTHONDONTWRITEBYTECODE is set: without a cache every pytest process (the controller, each
# worker) and every server a test starts compiles the project again, and pytest rewrites the asserts
# of ~400 modules again: seconds of each worker's start, before its first test.
#
# On PostgreSQL each test process's pool may hold 30 connections (the site's default is 10): Django's
# test clients leave a request's connection open (they disconnect close_old_connections from
# request_finished, to keep the test's own), and an async request runs its sync parts in a thread
# of its own that then ends, so its pooled connection is never given back. Over a whole run one
# test process lost ~9 that way, and the 10 ran out late in the run (tests waited 20 s for one).
TEST_ENV := PYTHONDONTWRITEBYTECODE= PYTHONPYCACHEPREFIX="$(CURDIR)/.data/pycache" CHAT_DB_POOL_SIZE=30

## test: set up (venv, dev requirements, model) and run the whole test suite (TEST_WORKERS processes)
test: setup-dev
	@$(TEST_ENV) $(PY) -m pytest -n $(TEST_WORKERS) --dist loadscope $(PYTEST_ARGS); status=$$?; \
	if [ $$status -eq 5 ]; then echo "make test: pytest collected no tests: that is a failure" >&2; fi; \
	exit $$status

## test-fast: the same, without the slow, real-model and browser tests (a quick check while working)
test-fast: setup-dev
	@$(MAKE) --no-print-directory test PYTEST_ARGS='-m "not slow and not model and not browser" $(PYTEST_ARGS)'

## bench: the benchmarks (run with nothing else on the machine); writes bench/results/latest.json
bench: setup
	@$(PY) -m bench.run $(BENCH_ARGS)

setup:
	@scripts/setup.sh deps runtime

setup-dev:
	@scripts/setup.sh deps dev

lint: setup-dev
	@$(VENV)/bin/ruff check .
	@$(VENV)/bin/ruff format --check .

format: setup-dev
	@$(VENV)/bin/ruff check --fix .
	@$(VENV)/bin/ruff format .
