# Thin wrappers: `make test` and `make repro` create the pinned environment (.venv) themselves.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

# Offline machines: CIFAR-10 from a local archive. Defaults to the shared copy when it exists; override with
# `make repro CIFAR10_ARCHIVE=/path/to/cifar10.tar.gz`. Empty: the official release is downloaded.
CIFAR10_ARCHIVE ?= $(wildcard $(CURDIR)/../shared/data/cifar10-jpeg.tar.gz)
export CIFAR10_ARCHIVE
export DVC_NO_ANALYTICS := 1
export DVC_SITE_CACHE_DIR := $(CURDIR)/.dvc/tmp/site-cache
export PATH := $(CURDIR)/$(BIN):$(PATH)

.PHONY: setup test test-fast repro data lab notebooks device-check

setup: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q -U pip
	$(BIN)/pip install -q -e ".[test]"
	touch $@

test: $(STAMP)
	$(BIN)/pytest -q

test-fast: $(STAMP)
	$(BIN)/pytest -q -m "not slow"

repro: $(STAMP)
	$(BIN)/dvc repro

data: $(STAMP)
	$(BIN)/dvc repro data

lab: $(STAMP)
	$(BIN)/pip install -q -e ".[lab]"
	$(BIN)/jupyter lab notebooks/

notebooks: $(STAMP)
	$(BIN)/python tools/make_notebooks.py

# On a machine with an NVIDIA GPU: CUDA tests, then the timing notebook on CUDA
# (writes results/tables/assignment_timing_cuda.csv with the hardware named in each row).
device-check: $(STAMP)
	$(BIN)/pytest -q -m cuda -rs
	$(BIN)/python -m immiscible.pipeline assignment_timing --group assignment_timing_cuda
