# Two commands do all the set-up: `make test` and `make demo`. Each creates .venv first.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp

.PHONY: install test lint pytest demo bench soak clean

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

test: lint pytest

# The same model, property and fault tests, longer and harder: many more Hypothesis examples
# and steps, and many more kill/damage rounds (see tests/conftest.py and tests/test_faults.py).
soak: $(STAMP)
	DEMIARCH_SOAK=1 $(PY) -m pytest -q -o timeout=3600 tests/test_model.py tests/test_properties.py tests/test_faults.py

demo: $(STAMP)
	$(PY) examples/agent_runtime.py

clean:
	rm -rf $(VENV) build *.egg-info
