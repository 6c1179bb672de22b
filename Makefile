# stacklab: the two set-up commands are `make demo` and `make test`.
# Each installs the missing system tools (tshark, dig, a C compiler...; with
# apt-get when run as root), creates .venv and installs stacklab with its test
# extras, compiling the verifier's hot path with mypyc.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
# The modules setup.py compiles with mypyc; rebuilt in place when they change,
# so the tests never run a stale compiled copy.
NATIVE_SRC   := analysis/scan.py analysis/rudp.py analysis/rudp_window.py analysis/rudp_recovery.py analysis/rudp_goback.py
NATIVE_STAMP := $(VENV)/.native
PYTEST_ARGS ?=

.PHONY: all demo test lint typecheck unit captures bench clean setup tshark native help

help:
	@echo "make demo      run the stacklab demo (sets everything up first)"
	@echo "make test      lint, type-check and run the whole test suite"
	@echo "make captures  regenerate the reference captures in captures/"
	@echo "make bench     run the benchmarks and print their tables"
	@echo "make native    rebuild the compiled hot path (analysis/scan.py, analysis/rudp.py)"
	@echo "make clean     remove the virtual environment and caches"

# The system tools come first: the install compiles with them.
$(STAMP): pyproject.toml setup.py | tshark
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test,fuzz]'
	touch $(STAMP)

$(NATIVE_STAMP): $(STAMP) $(NATIVE_SRC)
	$(BIN)/python setup.py --quiet build_ext --inplace
	touch $(NATIVE_STAMP)

native: $(NATIVE_STAMP)

setup: $(STAMP) $(NATIVE_STAMP) tshark

tshark:
	@PYTHON=$(PYTHON) bash scripts/ensure-tools.sh

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(STAMP)
	@bash scripts/typecheck.sh $(BIN)/mypy

unit: setup
	$(BIN)/pytest $(PYTEST_ARGS)

test: setup lint typecheck
	$(BIN)/pytest -n 2 $(PYTEST_ARGS)

demo: setup
	$(BIN)/stacklab demo

captures: setup
	$(BIN)/stacklab capture all --netns --force -o captures/

bench: setup
	$(BIN)/pip install --quiet -e '.[bench]'
	$(BIN)/stacklab bench --markdown
	$(BIN)/python bench/verify_bench.py --markdown

clean:
	rm -rf $(VENV) build .pytest_cache .mypy_cache .ruff_cache .hypothesis
	rm -f analysis/*.so
