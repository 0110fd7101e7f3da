# Two entry points (README top): `make demo` runs the main job, `make test` runs lint + the whole suite.
# Each creates .venv on first use. torch is pinned to the CPU-installable 2.13 line.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin

$(BIN)/.installed: pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q "torch==2.13.*"
	$(BIN)/pip install -q -e ".[train,dev]"
	touch $@

.PHONY: install demo test lint bench-quick clean
install: $(BIN)/.installed

demo: install
	$(BIN)/defectgen demo --out demo_out

lint: install
	$(BIN)/ruff check defectgen tests benchmarks

test: lint
	$(BIN)/pytest -q tests

bench-quick: install
	$(BIN)/python benchmarks/throughput.py --quick

clean:
	rm -rf $(VENV) demo_out
