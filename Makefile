# photofield-ai: `make run` serves with the real default models, `make test` runs every check.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
MODELS ?= models/generated

.PHONY: setup run test test-deps lint format typecheck pytest try models bench bench-gpu clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml deploy/install.sh deploy/install-system-deps.sh
	PYTHON=$(PYTHON) sh deploy/install.sh --dev $(VENV)
	touch $@

run: setup
	$(BIN)/photofield-ai serve

test: setup test-deps lint typecheck pytest

test-deps:
	sh deploy/install-test-deps.sh

lint: setup
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks

format: setup
	$(BIN)/ruff check --fix src tests benchmarks
	$(BIN)/ruff format src tests benchmarks

typecheck: setup
	$(BIN)/mypy

pytest: setup
	$(BIN)/pytest

# Offline try-out: generated ViT-B/32-shaped models (random weights, real cost), no download.
models: setup
	$(BIN)/python -m photofield_ai.testing.generate --preset vit-b-32 --dtype float32 --out $(MODELS)

try: models
	PHOTOFIELD_AI_VISUAL_MODEL=$(MODELS)/clip-vit-b-32-visual-float32.onnx \
	PHOTOFIELD_AI_TEXTUAL_MODEL=$(MODELS)/clip-vit-b-32-textual-float32.onnx \
	$(BIN)/photofield-ai serve

bench: setup
	$(BIN)/python -m benchmarks.run --out BENCHMARKS.md

bench-gpu: setup
	$(BIN)/python -m benchmarks.run --gpu --out BENCHMARKS-gpu.md

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache src/*.egg-info
