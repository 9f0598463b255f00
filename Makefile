# Two commands set everything up: `make run` serves the gateway, `make test` runs the suite.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PIP := $(BIN)/python -m pip install -q --disable-pip-version-check

.PHONY: run test test-fast bench bench-smoke loadtest fuzz scale-test clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.deps-run: pyproject.toml | $(BIN)/python
	$(PIP) -e .
	@touch $@

$(VENV)/.deps-test: pyproject.toml | $(BIN)/python
	$(PIP) -e '.[test]'
	@touch $@

tests/js/node_modules: tests/js/package.json
	@if command -v npm >/dev/null 2>&1; then npm install --silent --no-audit --no-fund --prefix tests/js && touch $@; \
	else echo "npm not found: the JS SDK tests will be skipped"; fi

## run: serve the gateway on 127.0.0.1:8000 (demo mode when no provider keys are set)
run: $(VENV)/.deps-run
	$(BIN)/python -m app serve

## test: the whole suite
test: $(VENV)/.deps-test tests/js/node_modules
	$(BIN)/python -m pytest

clean:
	rm -rf $(VENV) var tests/js/node_modules .pytest_cache
