# Two commands do everything: `make reproduce` and `make test`.
# Each creates .venv/ on first use and installs exactly the versions in uv.lock into it
# (uv itself is bootstrapped with pip at the version the lock records).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
UV := $(VENV)/bin/uv
STAMP := $(VENV)/.installed
OUT ?= results
LATEST := .venv-latest
UV_VERSION := $(shell sed -n '/^name = "uv"$$/{n;s/^version = "\(.*\)"$$/\1/p;}' uv.lock)
export UV_PROJECT_ENVIRONMENT := $(VENV)
export UV_PYTHON_DOWNLOADS := never

.PHONY: reproduce test test-latest lock lint format bench clean

$(STAMP): pyproject.toml uv.lock
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	test -x $(UV) || $(PY) -m pip install --quiet "uv==$(UV_VERSION)"
	$(UV) sync --locked --extra dev --extra torch --extra onnx --python $(PY)
	touch $(STAMP)

reproduce: $(STAMP)
	$(PY) -m experiments reproduce --out $(OUT)

test: $(STAMP)
	$(VENV)/bin/ruff check --quiet .
	$(VENV)/bin/ruff format --check --quiet .
	$(PY) -m pytest -q -n 2 --dist loadfile

# The suite against the newest versions the ranges in pyproject.toml admit (not the lock),
# in a fresh .venv-latest/ on LATEST_PYTHON (e.g. `make test-latest LATEST_PYTHON=python3.12`:
# the newest jax releases need a newer Python than 3.11).
LATEST_PYTHON ?= $(PYTHON)
test-latest: $(STAMP)
	rm -rf $(LATEST)
	$(UV) venv --python $(LATEST_PYTHON) $(LATEST)
	$(UV) pip install --python $(LATEST)/bin/python --upgrade --resolution highest -e '.[dev]'
	$(LATEST)/bin/python -m pytest -q -n 2 --dist loadfile

# Refresh uv.lock to the newest versions the ranges admit; then run `make test`.
lock: $(STAMP)
	$(UV) lock --upgrade

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: $(STAMP)
	$(VENV)/bin/ruff format .

bench: $(STAMP)
	$(PY) -m benchmarks.throughput

clean:
	rm -rf $(VENV) $(LATEST) $(OUT)
