# Set-up is part of every target: a fresh clone needs only `make demo` or `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup demo test lint bench

setup: $(STAMP)

# torch is pinned for the install step only (.ci/constraints.txt): the CPU wheel on a CPU box.
$(STAMP): pyproject.toml .ci/constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -c .ci/constraints.txt -e '.[dev,ray]'
	touch $(STAMP)

demo: setup
	HF_HUB_OFFLINE=1 $(BIN)/curate demo

# Two pytest workers, one test file each at a time (module fixtures stay in one process): on the 2-core CI box
# the suite takes half the time of one process, as much of it waits on subprocesses, Ray and Prefect.
test: setup
	HF_HUB_OFFLINE=1 $(BIN)/pytest -q -n 2 --dist loadfile

lint: setup
	$(BIN)/ruff check . && $(BIN)/ruff format --check .
