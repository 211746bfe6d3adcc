# Two entry points for newcomers: `make demo` and `make test`. Both create .venv on first use.
PY ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test check lint typecheck unit bench dashboards clean deps

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/stepscope demo

# System tools the tests drive for real (promtool and prometheus for rules and dashboard queries).
deps:
	@command -v prometheus >/dev/null && command -v promtool >/dev/null || \
	  { (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq prometheus >/dev/null) || \
	    (sudo apt-get update -qq && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq prometheus >/dev/null); }

lint: $(STAMP)
	$(BIN)/ruff format --check stepscope tests
	$(BIN)/ruff check stepscope tests

typecheck: $(STAMP)
	$(BIN)/mypy

test: $(STAMP) deps lint typecheck
	$(BIN)/pytest -n 2 -q

bench: $(STAMP)
	$(BIN)/python -m tests.benchmarks

dashboards: $(STAMP)
	$(BIN)/stepscope dashboards --write grafana/dashboards

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .coverage
