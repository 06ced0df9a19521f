# Two commands on a fresh machine: `make demo` and `make test`. Each creates .venv when missing.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test test-fast bench clean-venv

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	# torch 2.13.0 first: the local CPU build; any other spec pulls GBs of CUDA wheels
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/r3p demo --out out/demo

# the suite runs in TEST_WORKERS processes (pytest-xdist), a test file's tests in one process (its
# module fixtures are built once); most tests use one core, so 2 workers halve the wall time here
TEST_WORKERS ?= 2

test: $(STAMP)
	$(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder

test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder -m "not slow"

bench: $(STAMP)
	$(BIN)/python benchmarks/raster.py
	$(BIN)/python benchmarks/fitting.py
	$(BIN)/python benchmarks/clip.py
	$(BIN)/python benchmarks/preprocess.py
	$(BIN)/python benchmarks/metrics.py
	$(BIN)/python benchmarks/multiview.py
	$(BIN)/python benchmarks/segmentation.py
	$(BIN)/python benchmarks/train.py
	$(BIN)/python benchmarks/animate.py

clean-venv:
	rm -rf $(VENV)
