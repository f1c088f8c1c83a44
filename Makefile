# ae-jax developer targets. Everything runs inside .venv, created on first use.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install test test-slow bench demo clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -n 2 --timeout=600 -q

test-slow: $(STAMP)
	$(PY) -m pytest -n 2 --timeout=1800 -q -m slow

bench: $(STAMP)
	$(PY) -m experiments.bench

clean:
	rm -rf $(VENV) .pytest_cache
