# Two set-up-and-go commands: `make demo` and `make test`. Each creates .venv and installs
# what it needs on first use, so a fresh clone with Python 3.11+, make, node and npm works.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
PY := $(BIN)/python

.PHONY: demo test lint typecheck bench clean constraints layout dist soak

$(BIN)/activate:
	$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 11), "onceflow needs Python 3.11+"'
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip

# corelib/ and adapters/ install as `onceflow` and `onceflow.adapters` (pyproject.toml maps
# them). A strict editable install links that layout into build/__editable__.*, a plain
# folder on the path, which mypy can read (it cannot follow setuptools' import hooks); a
# link tree does not see new modules, so the install is redone whenever the set of package
# files or pyproject.toml (entry points, package data) changes (LAYOUT names them).
LAYOUT := $(shell (find corelib adapters -name '*.py' -o -name py.typed -o -name '*.json' | sort; cat pyproject.toml) | cksum | cut -d' ' -f1)
EDITABLE := $(PY) -m pip install --quiet --config-settings editable_mode=strict
STAMP_LAYOUT := rm -f $(VENV)/.layout-* && touch $(VENV)/.layout-$(LAYOUT)

$(VENV)/.layout-$(LAYOUT): | $(BIN)/activate
	$(EDITABLE) --no-deps -e .
	$(STAMP_LAYOUT)

# After adding or removing a module: relink the editable install (make test does it too).
layout: $(VENV)/.layout-$(LAYOUT)

# Runtime install for the demo: the core, the CLI's extras and parquet.
# constraints.txt pins every dependency to the versions the suite last passed with, so a
# fresh machine (and CI) installs exactly what was tested; `make constraints` refreshes it.
$(VENV)/.demo-installed: pyproject.toml constraints.txt | $(BIN)/activate
	$(EDITABLE) -c constraints.txt -e '.[cli,parquet]'
	$(STAMP_LAYOUT)
	touch $@

# Everything the tests need: every extra plus the npm emulators (Azurite, Cosmos DB server).
$(VENV)/.test-installed: pyproject.toml constraints.txt | $(BIN)/activate
	$(EDITABLE) -c constraints.txt -e '.[dev,cli,aws,azure,parquet,delta,iceberg]'
	$(STAMP_LAYOUT)
	touch $@

# aws-sam-cli pins old versions of boto3, pydantic and more: it gets a venv of its own,
# and the tests run `sam build` from there (tests/aws/test_runtime.py).
SAM_VENV := .venv-sam
$(SAM_VENV)/.installed: constraints-sam.txt
	$(PYTHON) -m venv $(SAM_VENV)
	$(SAM_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(SAM_VENV)/bin/python -m pip install --quiet -c constraints-sam.txt aws-sam-cli
	touch $@

node_modules/.installed: package.json package-lock.json
	bash scripts/install-emulators.sh
	touch $@

demo: $(VENV)/.demo-installed $(VENV)/.layout-$(LAYOUT)
	bash examples/orders/demo.sh

# Lint and types first, then the suite, whose summary stays the last line printed. Two
# pytest-xdist workers (CI's two cores), each with its own servers: run serially the suite
# keeps about one core busy and took 12.5 minutes on an idle two-core machine.
TEST_WORKERS ?= 2
test: $(VENV)/.test-installed $(VENV)/.layout-$(LAYOUT) node_modules/.installed $(SAM_VENV)/.installed
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(PY) -m pytest -n $(TEST_WORKERS)

lint: $(VENV)/.test-installed $(VENV)/.layout-$(LAYOUT)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(VENV)/.test-installed $(VENV)/.layout-$(LAYOUT)
	$(BIN)/mypy

# The long campaigns `make test` keeps small: delivery plans (crashes at every step,
# duplicates, reordering, racing workers, expiring leases) and shard-ordered lane plans
# (redelivery below the watermark, half-failed batches, splits and merges) on every store,
# a 20-kill chunked run, and 60 s outages in 10,000 events on DynamoDB (moto) and the
# Azurite Table store. Plan budgets are per backend, split over its contract tests (memory
# and SQLite: 2 x 5,000 delivery plans; DynamoDB: 4 store modes x 250; Table: 2 x 500),
# lane plans a fifth of that. Backends run side by side (SOAK_JOBS), each on two
# pytest-xdist workers, and each adds its plans to .soak/; the end prints one table.
SOAK_MEMORY ?= 5000
SOAK_SQLITE ?= 5000
SOAK_DYNAMODB ?= 250
SOAK_TABLE ?= 500
SOAK_COSMOS ?= 250
SOAK_LANES ?= 0.2
SOAK_JOBS ?= 3
SOAK_PIECES = memory sqlite dynamodb table cosmos kills outages
soak_pytest = ONCEFLOW_SOAK_REPORT=$(CURDIR)/.soak/$(1).json $(PY) -m pytest -q -p no:randomly -n 2
lanes = $(shell $(PY) -c 'print(max(4, int($(1) * $(SOAK_LANES))))')
soak: $(VENV)/.test-installed $(VENV)/.layout-$(LAYOUT) node_modules/.installed
	rm -rf .soak && mkdir -p .soak
	$(MAKE) --no-print-directory -j$(SOAK_JOBS) $(addprefix soak-,$(SOAK_PIECES))
	$(PY) -m tests.support.soak .soak

# backend, its budget, its contract file
define soak_plans
soak-$(1):
	ONCEFLOW_PLANS=$(2) $$(call soak_pytest,$(1)) -k any_delivery_plan $(3)
	ONCEFLOW_PLANS=$$(call lanes,$(2)) $$(call soak_pytest,$(1)) -k any_lane_plan $(3)
endef
$(eval $(call soak_plans,memory,$(SOAK_MEMORY),tests/test_memory_contracts.py))
$(eval $(call soak_plans,sqlite,$(SOAK_SQLITE),tests/local/test_sqlite_contracts.py))
$(eval $(call soak_plans,dynamodb,$(SOAK_DYNAMODB),tests/aws/test_dynamodb_contracts.py))
$(eval $(call soak_plans,table,$(SOAK_TABLE),tests/azure/test_table_store.py))
$(eval $(call soak_plans,cosmos,$(SOAK_COSMOS),tests/azure/test_cosmos_store.py))
soak-kills:
	ONCEFLOW_KILLS=20 $(PY) -m pytest -q -p no:randomly tests/local/test_chunk_kills.py
soak-outages:
	ONCEFLOW_OUTAGE_EVENTS=10000 $(PY) -m pytest -q -p no:randomly -n 2 \
		tests/aws/test_outages.py tests/azure/test_outages.py
.PHONY: soak $(addprefix soak-,$(SOAK_PIECES))

bench: $(VENV)/.test-installed $(VENV)/.layout-$(LAYOUT)
	$(PY) benchmarks/core_overhead.py

# The wheel and sdist a user installs (`pip install dist/onceflow-*.whl`), checked by twine.
dist: $(VENV)/.test-installed
	rm -rf dist
	$(PY) -m build --outdir dist .
	$(BIN)/twine check --strict dist/*

constraints: $(VENV)/.test-installed
	$(PY) -m pip freeze --all --exclude-editable | grep -v "^pip==" > constraints.txt

clean:
	rm -rf $(VENV) $(SAM_VENV) build dist node_modules .pytest_cache .mypy_cache .ruff_cache .hypothesis .demo .soak
