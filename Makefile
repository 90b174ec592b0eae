# Two commands on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH_VERSION ?= 2.13.0
SHARED ?= $(abspath ../shared)

.PHONY: venv demo test test-fast lint bench clean

# The venv is built once; torch goes in first so pip takes the local CPU build
# instead of resolving the CUDA wheels from the registry. The ray extra is there so
# the tests of `grid --executor ray` run (they skip where Ray is not installed).
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==$(TORCH_VERSION)
	$(PY) -m pip install -q -e ".[dev,ray]"
	touch $@

venv: $(VENV)/.installed

demo: venv
	$(VENV)/bin/ticketlab demo

# The real-data tier runs when ../shared is there (TICKETLAB_SHARED points at it).
test: venv
	@if [ -d "$(SHARED)" ]; then export TICKETLAB_SHARED="$(SHARED)"; fi; \
	$(PY) -m pytest -q -ra tests

lint: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/lint-imports

clean:
	rm -rf $(VENV) build *.egg-info src/*.egg-info .pytest_cache
