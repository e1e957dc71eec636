# Two set-up-and-go commands: `make demo` and `make test`. Each creates .venv and installs
# what it needs on first use, so a fresh clone with Python 3.11+, make, node and npm works.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
PY := $(BIN)/python

.PHONY: demo test lint typecheck bench clean constraints

$(BIN)/activate:
	$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 11), "onceflow needs Python 3.11+"'
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip

# Runtime install for the demo: the core, the CLI's extras and parquet.
# constraints.txt pins every dependency to the versions the suite last passed with, so a
# fresh machine (and CI) installs exactly what was tested; `make constraints` refreshes it.
$(VENV)/.demo-installed: pyproject.toml constraints.txt | $(BIN)/activate
	$(PY) -m pip install --quiet -c constraints.txt -e '.[cli,parquet]'
	touch $@

# Everything the tests need: every extra plus the npm emulators (Azurite, Cosmos DB server).
$(VENV)/.test-installed: pyproject.toml constraints.txt | $(BIN)/activate
	$(PY) -m pip install --quiet -c constraints.txt -e '.[dev,cli,aws,azure,parquet,delta]'
	touch $@

node_modules/.installed: package.json package-lock.json
	bash scripts/install-emulators.sh
	touch $@

demo: $(VENV)/.demo-installed
	bash examples/orders/demo.sh

# Lint and types first, then the suite, whose summary stays the last line printed.
test: $(VENV)/.test-installed node_modules/.installed
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(PY) -m pytest

lint: $(VENV)/.test-installed
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(VENV)/.test-installed
	$(BIN)/mypy

bench: $(VENV)/.test-installed
	$(PY) benchmarks/core_overhead.py

constraints: $(VENV)/.test-installed
	$(PY) -m pip freeze --exclude-editable > constraints.txt

clean:
	rm -rf $(VENV) node_modules .pytest_cache .mypy_cache .ruff_cache .hypothesis .demo
