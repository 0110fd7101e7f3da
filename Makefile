# `make demo` runs the main job on the runtime install alone (no torch); `make test` runs lint + the whole suite
# (what CI runs), `make test-fast` the suite without the tests marked slow. Each creates its venv on first use.
# torch is pinned to the CPU-installable 2.13 line.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
RUN_VENV := .venv-runtime
# two workers, a test file per worker: module fixtures (a trained toy model, a bundle) are built once
PYTEST := $(BIN)/pytest -q -n 2 --dist loadfile

$(BIN)/.installed: pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q "torch==2.13.*"
	$(BIN)/pip install -q -e ".[train,dev]"
	touch $@

$(RUN_VENV)/bin/.installed: pyproject.toml
	$(PY) -m venv $(RUN_VENV)
	$(RUN_VENV)/bin/pip install -q --upgrade pip
	$(RUN_VENV)/bin/pip install -q -e .
	touch $@

.PHONY: install demo test test-fast lint bench-quick clean
install: $(BIN)/.installed

demo: $(RUN_VENV)/bin/.installed
	$(RUN_VENV)/bin/defectgen demo --out demo_out

lint: install
	$(BIN)/ruff check defectgen tests benchmarks

test: lint
	$(PYTEST) tests

test-fast: lint
	$(PYTEST) -m "not slow" tests

bench-quick: install
	$(BIN)/python benchmarks/throughput.py --quick

clean:
	rm -rf $(VENV) $(RUN_VENV) demo_out
