# Two entry points for newcomers: `make demo` and `make test`. Both create .venv on first use.
PY ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test unit lint typecheck bench dashboards rules clean deps

$(STAMP): pyproject.toml
	@$(PY) -c 'import ensurepip, venv' 2>/dev/null || { echo "Python's venv module is missing: apt-get install python3-venv"; exit 1; }
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/stepscope demo

# System tools the tests drive for real: prometheus/promtool (rules, dashboard queries), amtool (Alertmanager
# config) and docker-compose v1 (`config -q` validates the demo stack without a Docker engine).
APT_PACKAGES := prometheus prometheus-alertmanager docker-compose
deps:
	@command -v prometheus >/dev/null && command -v promtool >/dev/null && command -v amtool >/dev/null && \
	  command -v docker-compose >/dev/null || { \
	    SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	    $$SUDO apt-get update -qq && \
	    DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq --no-install-recommends $(APT_PACKAGES) >/dev/null; }

lint: $(STAMP)
	$(BIN)/ruff format --check stepscope tests
	$(BIN)/ruff check stepscope tests
	$(BIN)/lint-imports

typecheck: $(STAMP)
	$(BIN)/mypy

# Coverage is gated where correctness is pure logic, so a gap there is a real gap: mapping, records, config, store,
# retry policy.
COVERED := --cov=stepscope.mapping --cov=stepscope.protocols.assistants.records --cov=stepscope.config --cov=stepscope.core.store \
	--cov=stepscope.client.retry --cov-report=term-missing:skip-covered --cov-fail-under=95

test: $(STAMP) deps lint typecheck
	$(BIN)/pytest -n 2 -q $(COVERED)

# The fast tier: tests/unit only (in-process, no subprocess, no system tools), well under 30 s on 2 cores.
unit: $(STAMP)
	$(BIN)/pytest -n 2 -q tests/unit

bench: $(STAMP)
	$(BIN)/python -m tests.benchmarks

dashboards: $(STAMP)
	$(BIN)/stepscope dashboards --write grafana/dashboards

# The Prometheus rules file and the PrometheusRule manifest, from stepscope/contract/rules.py.
rules: $(STAMP)
	$(BIN)/stepscope rules --write deploy

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .coverage
