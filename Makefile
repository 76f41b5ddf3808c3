# The two commands of the README: `make demo` and `make test`. Both install first.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.installed
DEMO_DIR ?= demo_run
PYTEST_ARGS ?=
# Two pytest-xdist workers: compile-bound tests overlap well on 2 cores (about 4 min vs 10).
PYTEST_WORKERS ?= 2

.PHONY: install lint test test-all demo clean

install: $(STAMP)

$(STAMP): setup.py
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q -e '.[test]'
	# torchscale is the xPos/MAGNETO reference for tests; its declared deps (timm ->
	# torchvision) are not needed for the decoder, so it goes in without them.
	$(PIP) install -q --no-deps torchscale==0.3.0
	touch $(STAMP)

lint: install
	$(VENV)/bin/ruff check .

test: lint
	$(PY) -m pytest -q -n $(PYTEST_WORKERS) $(PYTEST_ARGS) tests

test-all: install
	$(PY) -m pytest -q -n $(PYTEST_WORKERS) --runslow $(PYTEST_ARGS) tests

demo: install
	$(PY) -m kosmos_jax.demo --model_dir=$(DEMO_DIR)

clean:
	rm -rf $(DEMO_DIR) .pytest_cache
