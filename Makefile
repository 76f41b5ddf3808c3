# The two commands of the README: `make demo` and `make test`. Both install first.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
# Two install levels: `make demo` needs the runtime and the caption metrics; `make test` adds
# the reference implementations (torch, transformers, torchscale: several GB). Each has a stamp,
# so `make test` after `make demo` tops the venv up and `make demo` after `make test` is a no-op.
DEMO_STAMP := $(VENV)/.installed-demo
TEST_STAMP := $(VENV)/.installed-test
DEMO_DIR ?= demo_run
PYTEST_ARGS ?=
# Two pytest-xdist workers: compile-bound tests overlap well on 2 cores (about 4 min vs 10).
PYTEST_WORKERS ?= 2
# A whole test file at a time to whichever worker is free, in collection order (the longest
# files first, tests/conftest.py): module fixtures are built once and the run does not end
# with one worker on a 5-minute test while the other idles.
PYTEST_DIST ?= --dist loadfile --no-loadscope-reorder

.PHONY: install install-demo lint test test-all demo clean

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip

install-demo: $(DEMO_STAMP)

$(DEMO_STAMP): setup.py | $(VENV)/bin/python
	$(PIP) install -q -e '.[demo]'
	touch $(DEMO_STAMP)

install: $(TEST_STAMP)

$(TEST_STAMP): setup.py | $(VENV)/bin/python
	$(PIP) install -q -e '.[test,demo,tpu]'
	# torchscale is the xPos/MAGNETO reference for tests; its declared deps (timm ->
	# torchvision) are not needed for the decoder, so it goes in without them.
	$(PIP) install -q --no-deps torchscale==0.3.0
	touch $(TEST_STAMP) $(DEMO_STAMP)

lint: install
	$(VENV)/bin/ruff check .

test: lint
	$(PY) -m pytest -q -n $(PYTEST_WORKERS) $(PYTEST_DIST) $(PYTEST_ARGS) tests

test-all: install
	$(PY) -m pytest -q -n $(PYTEST_WORKERS) $(PYTEST_DIST) --runslow $(PYTEST_ARGS) tests

demo: install-demo
	$(PY) -m kosmos_jax.demo --model_dir=$(DEMO_DIR)

clean:
	rm -rf $(DEMO_DIR) .pytest_cache
