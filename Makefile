# llmspell — every target creates .venv and installs what it needs.
PYTHON ?= python3.11
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
DEMO   := $(VENV)/.installed-demo
BENCH  := $(VENV)/.installed-bench
# An editable install mypy can follow: a plain path in a .pth file, not an import hook
EDITABLE := --config-settings editable_mode=compat -e

.PHONY: demo test test-fast lint check format test-deep bench bench-deps latency clean

$(BIN)/python:
	@command -v $(PYTHON) >/dev/null 2>&1 || { echo "need $(PYTHON) (set PYTHON=...)"; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

$(STAMP): pyproject.toml | $(BIN)/python
	@# the old `quickjs` wheel and `quickjs-ng` both install the module `quickjs`
	$(BIN)/python -m pip uninstall -q -y quickjs 2>/dev/null || true
	$(BIN)/python -m pip install -q $(EDITABLE) '.[test]'
	@touch $(STAMP) $(DEMO)

# the demo needs the package alone, not the test extras
$(DEMO): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip uninstall -q -y quickjs 2>/dev/null || true
	$(BIN)/python -m pip install -q $(EDITABLE) .
	@touch $(DEMO)

demo: $(DEMO)
	$(BIN)/llmspell demo
	@echo "the CLI is $(BIN)/llmspell (or: source $(BIN)/activate; llmspell --help)"

lint: $(STAMP)
	$(BIN)/ruff check llmspell tests bench examples
	$(BIN)/ruff format --check llmspell tests bench examples

format: $(STAMP)
	$(BIN)/ruff format llmspell tests bench examples
	$(BIN)/ruff check --fix llmspell tests bench examples

check: $(STAMP)
	$(BIN)/mypy llmspell

test: lint check
	$(BIN)/python -m pytest -q -p no:cacheprovider

# the same gate without the tests marked slow (subprocesses, crashes, local mode): to run often
test-fast: lint check
	$(BIN)/python -m pytest -q -p no:cacheprovider -m "not slow"

test-deep: $(STAMP)
	LLMSPELL_DEEP=1 $(BIN)/python -m pytest -q -p no:cacheprovider

# the benchmarks' own baselines (pykka, ray): never installed by the test targets
$(BENCH): pyproject.toml $(STAMP)
	$(BIN)/python -m pip install -q $(EDITABLE) '.[test,bench]'
	@touch $(BENCH)

bench-deps: $(BENCH)

bench: $(BENCH)
	for b in overhead lua js coordination local events tracing journal latency; do \
		echo "== bench/$$b.py"; $(BIN)/python bench/$$b.py || exit 1; done

# one task's round trip against Pykka, asyncio and Ray (issue 15)
latency: $(BENCH)
	$(BIN)/python bench/latency.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis
