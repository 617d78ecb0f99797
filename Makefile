# Two commands do all the set-up on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(VENV)/bin/pip

.PHONY: venv demo test test-all wheel-check clean

$(VENV)/.installed: setup.py
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --upgrade pip
	$(PIP) install -e ".[dev]"
	touch $@

venv: $(VENV)/.installed

# Trains SSDLite on the built-in shapes dataset (generated on first use) and evaluates it with pycocotools.
demo: venv
	$(PY) tools/train_det.py --cfg ssdlite_shapes

# The README's test command; `.ci/run` calls this from a clean clone. Real-data training checks that take minutes
# are marked `slow` and run with `make test-all`.
test: venv
	$(PY) -m pytest -q -m "not slow" tests

test-all: venv
	$(PY) -m pytest -q tests

# The wheel as users get it: built, installed into a fresh venv outside the source tree, then a console command
# (a named config from the wheel), a tiny training run and a predictor call. `.ci/run` runs it after the tests.
wheel-check: venv
	bash .ci/check_wheel.sh

# The docs site (MkDocs, Material theme, API pages from the docstrings) into site/; --strict fails the build on any
# warning: a broken link or anchor, a page left out of the nav, a docstring griffe cannot read. `.ci/run` builds it.
.PHONY: docs
$(VENV)/.docs-installed: $(VENV)/.installed
	$(PIP) install -e ".[docs]"
	touch $@

docs: $(VENV)/.docs-installed
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict --site-dir site

clean:
	rm -rf $(VENV) runs
