# llmspell — every target creates .venv and installs what it needs.
PYTHON ?= python3.11
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo test lint check format test-deep bench clean

$(BIN)/python:
	@command -v $(PYTHON) >/dev/null 2>&1 || { echo "need $(PYTHON) (set PYTHON=...)"; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

$(STAMP): pyproject.toml | $(BIN)/python
	@# the old `quickjs` wheel and `quickjs-ng` both install the module `quickjs`
	$(BIN)/python -m pip uninstall -q -y quickjs 2>/dev/null || true
	$(BIN)/python -m pip install -q -e '.[test]'
	@touch $(STAMP)

demo: $(STAMP)
	$(BIN)/llmspell demo

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

test-deep: $(STAMP)
	LLMSPELL_DEEP=1 $(BIN)/python -m pytest -q -p no:cacheprovider

bench: $(STAMP)
	for b in overhead lua js coordination local events; do \
		echo "== bench/$$b.py"; $(BIN)/python bench/$$b.py || exit 1; done

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis
