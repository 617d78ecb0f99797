# Two commands do all the set-up on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(VENV)/bin/pip

.PHONY: venv demo test test-all wheel-check runtime-check extras-check clean distclean

# A CPU-only machine skips PyPI's ~6 GB CUDA build of torch with the CPU build installed first:
#   make demo TORCH_INDEX=https://download.pytorch.org/whl/cpu
TORCH_INDEX ?=

$(VENV)/.installed: setup.py
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --upgrade pip
	$(if $(TORCH_INDEX),$(PIP) install torch torchvision --index-url $(TORCH_INDEX))
	$(PIP) install -e ".[dev]"
	touch $@

venv: $(VENV)/.installed

# Trains SSDLite on the built-in shapes dataset (generated on first use) and evaluates it with pycocotools, into
# $(DEMO_OUT). Run again, it replaces the previous demo run there (--overwrite; the tool lists what it removed);
# `make demo DEMO_OUT=runs/demo2` keeps it. DEMO_ARGS adds arguments, e.g. DEMO_ARGS="--set trainer.max_epochs=1".
DEMO_OUT  ?= runs/ssdlite_shapes
DEMO_ARGS ?=
demo: venv
	@echo "make demo: training into $(DEMO_OUT), replacing an earlier demo run there (keep one: DEMO_OUT=runs/other)"
	$(PY) tools/train_det.py --cfg ssdlite_shapes --out $(DEMO_OUT) --overwrite $(DEMO_ARGS)

# The README's test command; `.ci/run` calls this from a clean clone. Real-data training checks that take minutes
# are marked `slow` and run with `make test-all`.
test: venv
	$(PY) -m pytest -q -m "not slow" tests

test-all: venv
	$(PY) -m pytest -q tests

# The README's install lines as a new user runs them: a git clone of HEAD, a fresh venv, `pip install .`, then the
# wheel (`pip wheel --no-deps -w dist .`, installed); each result used from outside the clone (console commands, a
# tiny training run, a predictor call). Needs no .venv of its own. `.ci/run` runs it before the tests.
wheel-check:
	bash .ci/check_wheel.sh

# The runtime without PyTorch (runtime/): `pip install ./runtime` into a fresh venv where `import torch` must fail,
# then that venv's predictions from a model.onnx equal the PyTorch predictor's (.ci/runtime_check.py; real coco128
# images when $$MNV2_REAL_DATA holds them), and both installs' sizes. `.ci/run` runs it.
RUNTIME_VENV ?= build/runtime-venv
runtime-check: venv
	rm -rf $(RUNTIME_VENV)
	$(PYTHON) -m venv $(RUNTIME_VENV)
	$(RUNTIME_VENV)/bin/pip install -q ./runtime
	@if $(RUNTIME_VENV)/bin/python -c "import torch" 2>/dev/null; then echo "torch imports in $(RUNTIME_VENV)"; exit 1; fi
	@echo "import torch fails in $(RUNTIME_VENV), as it should"
	$(PY) .ci/runtime_check.py --runtime-python $(RUNTIME_VENV)/bin/python
	@echo "installed: mnv2_runtime $$(du -sh $(RUNTIME_VENV)/lib/python3*/site-packages | cut -f1) (numpy, Pillow," \
	     "ONNX Runtime, pip); mnv2_vision[dev] $$(du -sh $(VENV)/lib/python3*/site-packages | cut -f1) (PyTorch, ...)"

# The export formats whose converters dev leaves out (litert: litert-torch is ~0.9 GB; openvino: see setup.py) in a
# venv of their own, built from scratch like .venv, each test file in its own pytest process: a process that ran
# OpenVINO segfaulted when it later forked DataLoader workers, so OpenVINO never shares one with the main suite.
# `.ci/run` runs it; about 6 minutes of installing and 4 of tests on 2 cores.
EXTRAS_VENV ?= build/extras-venv
extras-check:
	rm -rf $(EXTRAS_VENV)
	$(PYTHON) -m venv $(EXTRAS_VENV)
	$(EXTRAS_VENV)/bin/pip install -q --upgrade pip
	$(if $(TORCH_INDEX),$(EXTRAS_VENV)/bin/pip install -q torch torchvision --index-url $(TORCH_INDEX))
	$(EXTRAS_VENV)/bin/pip install -q -e ".[dev,litert,openvino]"
	$(EXTRAS_VENV)/bin/python -m pytest -q -m "not slow" -p no:cacheprovider tests/test_litert.py
	$(EXTRAS_VENV)/bin/python -m pytest -q -m "not slow" -p no:cacheprovider tests/test_openvino.py

# The docs site (MkDocs, Material theme, API pages from the docstrings) into site/; --strict fails the build on any
# warning: a broken link or anchor, a page left out of the nav, a docstring griffe cannot read. `.ci/run` builds it.
.PHONY: docs
$(VENV)/.docs-installed: $(VENV)/.installed
	$(PIP) install -e ".[docs]"
	touch $@

docs: $(VENV)/.docs-installed
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict --site-dir site

# `clean` removes what the tools and builds wrote (runs, wheels, build folders) and keeps the venv; `distclean` also
# removes the venv and the CI cache, back to a fresh clone.
clean:
	rm -rf runs build dist wheelhouse *.egg-info

distclean: clean
	rm -rf $(VENV) .cache
