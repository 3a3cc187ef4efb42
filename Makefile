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

.PHONY: setup test test-fast repro data lab device-check gpu-bundle

setup: $(STAMP)

# The artifact's environment: the package with its `artifact`, `sd` and `test` extras at the exact versions of constraints.txt.
$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q -U pip
	$(BIN)/pip install -q -c constraints.txt -e ".[artifact,sd,test]"
	touch $@

test: $(STAMP)
	$(BIN)/pytest -q

test-fast: $(STAMP)
	$(BIN)/pytest -q -m "not slow"

repro: $(STAMP)
	$(BIN)/dvc repro

data: $(STAMP)
	$(BIN)/dvc repro data@cifar10

lab: $(STAMP)
	$(BIN)/pip install -q -c constraints.txt -e ".[lab]"
	$(BIN)/jupyter lab notebooks/

# On a machine with an NVIDIA GPU: the CUDA tests, the assignment timing on CUDA (results/device/tables/
# assignment_timing_cuda.csv, the GPU named in each row) and the training-step overhead on the GPU.
device-check: $(STAMP)
	PYTHON=$(BIN)/python bash tools/device_check.sh results/device

# For a GPU machine without network that has a CUDA PyTorch but not this environment: wheels of what the check needs
# beyond PyTorch, and 8192 CIFAR-10 images, into .gpu-bundle/ (about 30 MB); there run `bash tools/device_check.sh`.
gpu-bundle: $(STAMP)
	$(BIN)/python tools/make_gpu_bundle.py
