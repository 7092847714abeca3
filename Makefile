# tdkit developer entry points. Every target builds the virtual environment first if missing.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.tdkit-installed

.PHONY: demo test lint bench bench-softmax bench-attention bench-attention-1t bench-memory bench-tune bench-raise smoke-full clean

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

## Benchmarks (not tests). Softmax: strategy vs IREE's default and memory bandwidth.
## Attention: flash and config vs IREE's default, torch SDPA (bench extra), numpy, SGEMM;
## then peak memory of one call, flash vs the plain linalg chain.
bench: bench-softmax bench-attention bench-attention-1t bench-memory bench-tune bench-raise

bench-softmax: $(STAMP)
	$(BIN)/tdkit bench softmax --shape 512x1024 --rounds 7
	$(BIN)/tdkit bench softmax --shape 4096x4096 --rounds 7
	$(BIN)/tdkit bench softmax --shape 64x32768 --rounds 7

bench-attention: $(STAMP)
	$(BIN)/pip install --quiet -e '.[test,bench]'
	$(BIN)/tdkit bench attention --shape 8x1024x1024x64
	$(BIN)/tdkit bench attention --shape 2x4096x4096x64
	$(BIN)/tdkit bench attention --shape 4x1024x1024x128
	$(BIN)/tdkit bench attention --shape 8x1024x1024x64 --dtype bf16
	$(BIN)/tdkit bench attention --shape 8x1024x1024x64 --dtype f16

## The f32 attention shapes on one core each: IREE with one worker, torch and BLAS one thread.
bench-attention-1t: $(STAMP)
	$(BIN)/pip install --quiet -e '.[test,bench]'
	$(BIN)/tdkit bench attention --threads 1 --rounds 3 --shape 8x1024x1024x64
	$(BIN)/tdkit bench attention --threads 1 --rounds 3 --shape 2x4096x4096x64
	$(BIN)/tdkit bench attention --threads 1 --rounds 3 --shape 4x1024x1024x128

bench-memory: $(STAMP)
	$(BIN)/tdkit bench attention --memory --strategy flash --shape 1x16384x16384x64
	$(BIN)/tdkit bench attention --memory --strategy flash --shape 1x32768x32768x64

## A 60-candidate TPE sweep of the flash strategy (fresh database each time), then its report.
bench-tune: $(STAMP)
	rm -f build/bench-tune.db
	$(BIN)/tdkit tune attention --shape 4x1024x1024x64 --strategy flash --budget 60 \
		--db build/bench-tune.db --artifacts build/bench-tune
	$(BIN)/tdkit report --db build/bench-tune.db -o build/bench-tune-report

## Exporter-style ONNX attention blocks (GPT-2, BERT, ViT, cross, GQA): raised + flash vs IREE's
## default build of the same model: numerics vs onnxruntime, dispatches, time, peak memory.
bench-raise: $(STAMP)
	$(BIN)/python -m tdkit.tools.blocks build/blocks
	for b in gpt2 bert vit cross gqa; do \
		$(BIN)/tdkit run build/blocks/$$b.onnx --memory --rounds 5 --artifacts build/blocks/art || exit 1; \
	done

smoke-full: $(STAMP)
	$(BIN)/tdkit smoke --full

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .ruff_cache
