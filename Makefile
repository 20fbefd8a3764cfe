# Build plumbing for ec2-run-supervisor. Every recipe calls the venv's binaries by path,
# so nothing depends on the caller's PATH; only `python3` is needed to bootstrap.

PYTHON      ?= python3
VENV        := .venv
BIN         := $(VENV)/bin
STAMP       := $(VENV)/.installed
# Test processes (pytest-xdist): both cores of the reference machine. TEST_WORKERS=0 runs
# everything in this process (easier to debug).
TEST_WORKERS ?= 2
PYTEST_ARGS ?=

.DEFAULT_GOAL := test
.PHONY: install lint format test system-tools bench soak demo clean
.PHONY: postgresql-server

install: $(STAMP)

# Re-runs only when pyproject.toml or constraints.txt is newer than the stamp.
$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -c constraints.txt -e '.[dev]'
	touch $@

# Runs every checker, then fails if any of them failed.
lint: $(STAMP)
	@rc=0; \
	echo '+ ruff check'; $(BIN)/ruff check . || rc=1; \
	echo '+ ruff format --check'; $(BIN)/ruff format --check . || rc=1; \
	echo '+ mypy (strict, from pyproject.toml)'; $(BIN)/mypy || rc=1; \
	echo '+ lint-imports'; $(BIN)/lint-imports || rc=1; \
	exit $$rc

format: $(STAMP)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

# Programs some tests run that pip cannot bring, installed from Debian when missing:
# systemd-analyze rates deploy/supervisord.service (tests/deploy/test_service.py), and
# PostgreSQL's server binaries (postgresql-server, below): the tests start a throwaway server
# from them (tests/pg_server.py).
# Issue 15: Debian's chromium and chromedriver, which the dashboard's browser tests drive
# (tests/e2e/test_dashboard.py); a test tool's own browser download cannot work here.
system-tools: postgresql-server
	@command -v systemd-analyze >/dev/null || \
		{ apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq systemd; }
	@{ test -x /usr/bin/chromium && test -x /usr/bin/chromedriver; } || \
		{ apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver; }

test: $(STAMP) system-tools
	$(BIN)/pytest -q --timeout=300 -n $(TEST_WORKERS) $(PYTEST_ARGS)

# Issue 6's figures: AWS calls against a naive poller and reaction time (a fleet against a
# moto server), the daemon's CPU and memory at 1,000 and 10,000 runs, restart, store, the CLI,
# idle instance-seconds after a job's end (issue 13); about 13 minutes on 2 cores. Prints a
# table and writes bench-results.json (see BENCHMARKS.md).
bench: $(STAMP)
	$(BIN)/python -m tests.bench $(BENCH_ARGS)

# 200 runs under AWS faults, duplicated SQS messages and 20 SIGKILLs of the daemon, checked
# end to end; about 5 minutes, at most 9. Exits 1 on any violation (see BENCHMARKS.md).
# SOAK_ARGS='--replicas 3': three replicas on a throwaway PostgreSQL server (postgresql-server
# brings its binaries), SIGKILLed and SIGSTOPped; about 4 minutes, at most 7.
soak: $(STAMP) postgresql-server
	$(BIN)/python -m tests.soak $(SOAK_ARGS)

# PostgreSQL's server binaries (initdb, pg_ctl), installed from Debian when
# /usr/lib/postgresql/*/bin has none: for the tests (system-tools) and the replicated soak
# (which needs neither systemd nor a browser).
postgresql-server:
	@ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || \
		{ apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql; }

# The demo's extra only (moto), on top of the venv; `make install` has it already.
DEMO_STAMP  := $(VENV)/.demo-installed

$(DEMO_STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -c constraints.txt -e '.[demo]'
	touch $@

demo: $(DEMO_STAMP)
	$(BIN)/python -m supervisor.demo

clean:
	rm -rf $(VENV) build dist *.egg-info .mypy_cache .ruff_cache .pytest_cache .import_linter_cache
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
