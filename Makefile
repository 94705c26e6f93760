PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: install test demo lint models clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[dev,deploy,serve,crf]"  # the extras' tests run in CI too
	touch $@

install: $(VENV)/.installed

test: install
	$(BIN)/python -m pytest

demo: install
	$(BIN)/deeplab train --config configs/demo.yaml
	$(BIN)/deeplab eval --checkpoint runs/demo/best.pt --json runs/demo/metrics.json

lint: install
	$(BIN)/ruff check .

clean:
	rm -rf $(VENV) runs .pytest_cache .ruff_cache
