PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: install test demo lint models clean conformance conformance-reference

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[dev,deploy,serve,crf,openvino,transformers,data]"  # the extras' tests run in CI too
	touch $@

install: $(VENV)/.installed

# One pytest-xdist worker per core (tests/conftest.py gives each one torch thread); --dist loadfile keeps a module's
# tests on one worker, so a module-scoped fixture is built once, and --no-loadscope-reorder hands the modules out
# longest first (the order tests/conftest.py gives them). `.venv/bin/python -m pytest` runs it in one process.
test: install
	$(BIN)/lint-imports
	$(BIN)/python -m pytest -n auto --dist loadfile --no-loadscope-reorder

demo: install
	$(BIN)/deeplab train --config configs/demo.yaml
	$(BIN)/deeplab eval --checkpoint runs/demo/best.pt --json runs/demo/metrics.json

lint: install
	$(BIN)/ruff check .

# Conformance with the authors' TensorFlow code (docs/conformance.md): not part of `make test`. It needs the
# reference in DEEPLAB_TF_REFERENCE (a tensorflow/models `research` folder) and a TensorFlow venv of its own
# (TensorFlow 2.15 wheels exist for Python 3.9-3.11; pick one with TF_PYTHON=python3.11).
TF_PYTHON ?= $(PYTHON)
TF_VENV := .venv-tf
CONFORMANCE_OUT := runs/conformance

$(TF_VENV)/.installed:
	$(TF_PYTHON) -m venv $(TF_VENV)
	$(TF_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(TF_VENV)/bin/python -m pip install --quiet "tensorflow-cpu==2.15.*" tf-slim
	touch $@

conformance-reference:
	@test -n "$(DEEPLAB_TF_REFERENCE)" || { echo "make conformance: set DEEPLAB_TF_REFERENCE to the" \
		"'research' folder of a tensorflow/models clone (see docs/conformance.md)" >&2; exit 2; }

conformance: conformance-reference install $(TF_VENV)/.installed
	rm -rf $(CONFORMANCE_OUT)
	DEEPLAB_TF_REFERENCE="$(DEEPLAB_TF_REFERENCE)" $(TF_VENV)/bin/python conformance/tf_reference.py $(CONFORMANCE_OUT)
	$(BIN)/python conformance/compare.py $(CONFORMANCE_OUT)

clean:
	rm -rf $(VENV) $(TF_VENV) runs .pytest_cache .ruff_cache
