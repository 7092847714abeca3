# tdkit developer entry points. Every target builds the virtual environment first if missing.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.tdkit-installed

.PHONY: demo test lint bench smoke-full clean

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 11), "tdkit needs Python >= 3.11"'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	@touch $(STAMP)

## Main job: compile, run and verify the built-in problems; print the comparison table.
demo: $(STAMP)
	$(BIN)/tdkit smoke --quick

## Test suite (lint + unit + IR + end-to-end tests).
test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/pytest -q

lint: $(STAMP)
	$(BIN)/ruff check .

## Benchmarks (not tests): the softmax strategy vs IREE's default and a memory copy.
bench: $(STAMP)
	$(BIN)/tdkit bench softmax --shape 512x1024
	$(BIN)/tdkit bench softmax --shape 4096x4096
	$(BIN)/tdkit bench softmax --shape 64x32768

smoke-full: $(STAMP)
	$(BIN)/tdkit smoke --full

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .ruff_cache
