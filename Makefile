# Two commands do all the set-up: `make test` and `make demo`. Each creates .venv first.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp

BENCH_STAMP := $(VENV)/.bench-stamp
DOCS_STAMP := $(VENV)/.docs-stamp

.PHONY: install test lint pytest docs demo bench bench-quick soak clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

lint: $(STAMP)
	$(PY) -m ruff check demiarch_store migrations tests benchmarks examples
	$(PY) -m mypy

pytest: $(STAMP)
	$(PY) -m pytest -q

test: lint pytest docs

$(DOCS_STAMP): $(STAMP) pyproject.toml
	$(PY) -m pip install --quiet -e '.[dev,docs]'
	touch $(DOCS_STAMP)

# The documentation site (docs/, mkdocs.yml) into site/; --strict: a broken link or a
# docstring reference that does not resolve fails the build (not with --quiet, which hides the
# warnings that --strict counts). Its examples run in pytest (tests/test_docs_examples.py).
docs: $(DOCS_STAMP)
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict --site-dir site

# The same model, property and fault tests, longer and harder: many more Hypothesis examples
# and steps, and many more kill/damage rounds (see tests/conftest.py and tests/test_faults.py).
soak: $(STAMP)
	DEMIARCH_SOAK=1 $(PY) -m pytest -q -o timeout=3600 tests/test_model.py tests/test_properties.py tests/test_faults.py

demo: $(STAMP)
	$(PY) examples/agent_runtime.py

$(BENCH_STAMP): $(STAMP) pyproject.toml
	$(PY) -m pip install --quiet -e '.[dev,bench]'
	touch $(BENCH_STAMP)

# Throughput and latency against raw sqlite3, aiosqlite and SQLAlchemy, then DemiarchSaver against
# LangGraph's AsyncSqliteSaver, then the PostgreSQL engine against raw psycopg and SQLAlchemy on
# the local server (DEMIARCH_BENCH_DATABASE_URL); a few minutes each.
# Writes benchmarks/results/{results.json,results.md,throughput.png,langgraph.json,langgraph.md,
# postgres.json,postgres.md}.
bench: $(BENCH_STAMP)
	$(PY) -m benchmarks.run
	$(PY) -m benchmarks.langgraph
	$(PY) -m benchmarks.sessions
	$(PY) -m benchmarks.postgres
	$(PY) -m benchmarks.langgraph --engine postgresql
	$(PY) -m benchmarks.pg_projects

# A smoke run in seconds (results in benchmarks/results/quick/, not committed).
bench-quick: $(BENCH_STAMP)
	$(PY) -m benchmarks.run --quick --out benchmarks/results/quick
	$(PY) -m benchmarks.langgraph --quick --out benchmarks/results/quick
	$(PY) -m benchmarks.sessions --quick --out benchmarks/results/quick
	$(PY) -m benchmarks.postgres --quick --out benchmarks/results/quick

clean:
	rm -rf $(VENV) build dist site *.egg-info
