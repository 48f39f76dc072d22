# Two commands do everything on a fresh machine: `make demo` and `make test`.
# The first run builds .venv (Python 3.11, the locked stack in requirements/lock.txt);
# later runs reuse it and start in seconds.

SHELL := /bin/bash
PYTHON_BOOT ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.layerforge-installed
LOCK := requirements/lock.txt

# JIT-built kernels (ours, gsplat's, nerfacc's) live inside the build folder, never in $HOME.
export TORCH_EXTENSIONS_DIR := $(CURDIR)/build/torch_extensions
# anny (gala's open body) builds its model once (~50-90 s, 2.2 GB peak) into this cache; Warp,
# which anny imports only for its optional kernels, keeps its cache there too (never in $HOME).
export ANNY_CACHE_DIR ?= $(CURDIR)/build/anny
export WARP_CACHE_PATH ?= $(CURDIR)/build/warp
ANNY_STAMP := build/anny/.built
# Our CUDA kernel builds without a GPU; torch needs the toolkit root and target archs spelled out.
ifneq ($(wildcard /usr/local/cuda/bin/nvcc),)
export CUDA_HOME ?= /usr/local/cuda
endif
export TORCH_CUDA_ARCH_LIST ?= 8.0;9.0
export HF_HUB_OFFLINE ?= 1
export PYTHONHASHSEED := 0

.PHONY: demo test setup lock clean-venv bench gpu-check gpu-wheels

setup: $(STAMP)

$(STAMP): $(LOCK) pyproject.toml
	@command -v $(PYTHON_BOOT) >/dev/null || { echo "error: $(PYTHON_BOOT) not found; install Python 3.11 (e.g. pyenv install 3.11) or set PYTHON_BOOT=/path/to/python3.11"; exit 2; }
	@if ! ldconfig -p 2>/dev/null | grep -q 'libusb-1.0.so.0'; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    echo "installing Debian's libusb-1.0-0 (open3d needs it)"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq libusb-1.0-0 >/dev/null; \
	  else echo "warning: libusb-1.0-0 is missing and we are not root; open3d may not import (apt-get install libusb-1.0-0)"; fi; \
	fi
	@[ -x $(PY) ] || $(PYTHON_BOOT) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip wheel setuptools
	$(PY) -m pip install -q -r $(LOCK)
	$(PY) -m pip install -q --no-deps --no-build-isolation -e .
	@mkdir -p build/torch_extensions
	@touch $@

demo: $(STAMP)
	$(PY) -m layerforge.cli run bsp run=demo

test: $(STAMP) $(ANNY_STAMP)
	$(PY) -m pytest -q tests

# anny's first build writes ~790 MB; only its compact model data (~50 MB) is read afterwards.
$(ANNY_STAMP): $(STAMP)
	$(PY) -c "from layerforge.models.body.anny import build_anny; build_anny()"
	rm -f build/anny/v*/load_data_*.safetensors build/anny/v*/build_model_data_*.safetensors
	@touch $@

bench: $(STAMP)
	$(PY) benchmarks/renderers.py
	$(PY) benchmarks/bsp.py
	$(PY) benchmarks/guidance.py
	$(PY) benchmarks/decomp_nerf.py
	$(PY) benchmarks/dp_recon.py --quick
	$(PY) benchmarks/gala.py --quick
	$(PY) benchmarks/layerpano3d.py --quick
	$(PY) benchmarks/batch.py --items 8

# Regenerate the lock from requirements/base.in in a scratch venv.
lock:
	rm -rf build/lockenv && $(PYTHON_BOOT) -m venv build/lockenv
	build/lockenv/bin/pip install -q --upgrade pip && build/lockenv/bin/pip install -q -r requirements/base.in
	build/lockenv/bin/pip freeze --exclude-editable | grep -v '^layerforge' > $(LOCK)

clean-venv:
	rm -rf $(VENV)

# On a machine with an NVIDIA GPU: build the CUDA kernels (ours, gsplat's), run the GPU-marked
# tests and the renderer/guidance benchmarks, and write their rows into benchmarks/RESULTS.md
# ("## GPU rows (<device>, <date>)", replaced on a re-run). Needs no .venv: GPU_PYTHON is any
# Python with a CUDA build of torch; what it lacks comes from the wheels of `make gpu-wheels`.
GPU_PYTHON ?= $(if $(wildcard $(PY)),$(PY),python3)
GPU_WHEELS ?= build/gpu_wheels
GPU_CHECK_ARGS ?=
gpu-check:
	$(GPU_PYTHON) scripts/gpu_check.py --wheels $(GPU_WHEELS) $(GPU_CHECK_ARGS)

# The pure-Python wheels (versions from the lock) that a GPU machine's own Python 3.12 lacks,
# for the imports of layerforge.renderers, layerforge.models.guidance and the benchmarks
# (about 14 MiB; carry build/gpu_wheels with the tree), and the built-in decomp_nerf scene
# prepared for benchmarks/decomp_nerf.py (data/decomp_nerf.pt: the GPU machine has no Blender/OpenCV). antlr4 4.9.3 has no wheel on PyPI: built.
GPU_WHEEL_PKGS := gsplat diffusers omegaconf hydra-core trimesh plyfile
gpu-wheels: $(STAMP)
	rm -rf $(GPU_WHEELS) && mkdir -p $(GPU_WHEELS)
	$(GPU_PYTHON) -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 -d $(GPU_WHEELS) \
	  $$(for p in $(GPU_WHEEL_PKGS); do grep -i -m1 "^$$p==" $(LOCK) || echo "$$p==not-in-$(LOCK)"; done)
	$(GPU_PYTHON) -m pip wheel -q --no-deps -w $(GPU_WHEELS) $$(grep -i -m1 '^antlr4-python3-runtime==' $(LOCK))
	$(PY) benchmarks/decomp_nerf.py --save-data $(GPU_WHEELS)/data/decomp_nerf.pt
	$(PY) benchmarks/gala.py --prepare $(GPU_WHEELS)/data/gala
	@ls $(GPU_WHEELS) && du -ch $(GPU_WHEELS)/*.whl $(GPU_WHEELS)/data/* | tail -1
