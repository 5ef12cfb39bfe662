# Two entry points (see README.md): `make demo` runs the whole pipeline on the built-in phantoms,
# `make test` runs the test suite. Both create .venv and install requirements.txt first.
# `make test` leaves out the end-to-end and multi-process runs (tests marked `slow`):
# `make test-slow` runs only those, `make test-all` everything; CI runs `test`, then `test-slow`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
WORKDIR ?= workdir/demo
# Test processes (pytest-xdist), each test file whole on one of them so class set-ups run once
# (BENCHMARKS.md has the suite's times). 1: one process.
TEST_WORKERS ?= 2

.PHONY: demo rtv_demo stage1 test test-slow test-all lint bench clean

$(BIN)/activate:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.installed: requirements.txt pyproject.toml | $(BIN)/activate
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -r requirements.txt
	$(BIN)/python -m pip install --quiet --no-deps --no-build-isolation -e . || \
	  $(BIN)/python -m pip install --quiet --no-deps -e .
	touch $@

# The demo divides D by the normal-error model (config.localize.normal_error, off by default:
# it helps on the phantoms, not on FracAtlas; README.md).
demo: $(VENV)/.installed
	$(BIN)/python launch.py --config=configs/pipeline.py --workdir=$(WORKDIR) --alsologtostderr \
	  --config.localize.normal_error.patch=9

rtv_demo: $(VENV)/.installed
	$(BIN)/python launch.py --config=configs/rtv_demo.py --workdir=workdir/rtv --alsologtostderr

stage1: $(VENV)/.installed
	$(BIN)/python launch.py --config=configs/stage1.py:small --workdir=workdir/stage1 --alsologtostderr

test: $(VENV)/.installed
	$(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist loadfile -m "not slow"

test-slow: $(VENV)/.installed
	$(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist loadfile -m slow

test-all: $(VENV)/.installed
	$(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist loadfile

lint: $(VENV)/.installed
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

bench: $(VENV)/.installed
	$(BIN)/python -m benchmarks.rtv_bench

clean:
	rm -rf $(VENV) workdir
