# Two commands set everything up: `make run` serves the gateway, `make test` runs the suite.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PIP := $(BIN)/python -m pip install -q --disable-pip-version-check

.PHONY: run test test-fast bench bench-smoke bench-compare bench-ab loadtest fuzz scale-test soak clean

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

# Codex CLI (its npm package ships the binary), which tests/clients runs against the gateway.
tests/clients/codex/node_modules: tests/clients/codex/package.json
	@if command -v npm >/dev/null 2>&1; then npm install --silent --no-audit --no-fund --prefix tests/clients/codex && touch $@; \
	else echo "npm not found: the Codex CLI tests will be skipped"; fi

# Claude Code, which tests/clients runs against the gateway.
tests/clients/claude-code/node_modules: tests/clients/claude-code/package.json
	@if command -v npm >/dev/null 2>&1; then npm install --silent --no-audit --no-fund --prefix tests/clients/claude-code && touch $@; \
	else echo "npm not found: the Claude Code tests will be skipped"; fi

## run: serve the gateway on 127.0.0.1:8000 (demo mode when no provider keys are set)
run: $(VENV)/.deps-run
	$(BIN)/python -m app serve

## test: the whole suite (installs Debian's chromium for the console's browser tests when it is missing and you are root)
test: $(VENV)/.deps-test tests/js/node_modules tests/clients/codex/node_modules tests/clients/claude-code/node_modules chromium
	$(BIN)/python -m pytest

## test-fast: the inner loop: the tests that run in process, in ~40 s (unit, wire, app, SQLite store, upstream transports and doubles, Responses shapes); no other process starts
test-fast: $(VENV)/.deps-test
	$(BIN)/python -m pytest --fast

.PHONY: chromium
chromium:
	@sh tests/console/install-chromium.sh

clean:
	rm -rf $(VENV) var tests/js/node_modules tests/clients/codex/node_modules tests/clients/claude-code/node_modules .pytest_cache

$(VENV)/.deps-bench: pyproject.toml | $(BIN)/python
	$(PIP) -e '.[bench,loadtest]'
	@touch $@

## bench: the side-by-side benchmark into bench/results/ (BENCH_ARGS="--with-litellm --duration 10"); the test extra replays the conformance recordings at its end
bench: $(VENV)/.deps-bench $(VENV)/.deps-test
	$(BIN)/python -m bench.run $(BENCH_ARGS)

## bench-compare: the gateway of this checkout against the one of REV (default HEAD) in one run, with the bare proxy (BENCH_ARGS for more)
REV ?= HEAD
bench-compare: $(VENV)/.deps-bench
	$(BIN)/python -m bench.run --systems bare,gateway,gateway@$(REV) --no-micro --clients none $(BENCH_ARGS)

## bench-ab: CPU per request of this checkout's gateway and REV's (default HEAD) in alternating rounds, for differences of a few per cent (BENCH_ARGS="--rounds 8 --phases stream")
bench-ab: $(VENV)/.deps-bench
	$(BIN)/python -m bench.ab --systems gateway,gateway@$(REV) $(BENCH_ARGS)

## bench-smoke: the seconds-long harness smoke test (what CI runs of the bench)
bench-smoke: $(VENV)/.deps-test $(VENV)/.deps-bench
	$(BIN)/python -m pytest tests/bench -q

## loadtest: a 30 s headless locust smoke against a local gateway + fake upstream
loadtest: $(VENV)/.deps-bench
	$(BIN)/python -m loadtest.run_local $(LOADTEST_ARGS)

## scale-test: nginx (deploy/nginx.conf) in front of 2 gateway instances x 2 workers on one store, SQLite and MongoDB (nx-27017): exact limits, unbuffered streams, SIGTERM drain (also part of `make test`)
scale-test: $(VENV)/.deps-test
	$(BIN)/python -m pytest tests/scale -rsx

## fuzz: the long fuzz run against a live gateway (ZOWY_FUZZ_CASES generated requests, default 5000)
ZOWY_FUZZ_CASES ?= 5000
fuzz: $(VENV)/.deps-test
	ZOWY_FUZZ_CASES=$(ZOWY_FUZZ_CASES) $(BIN)/python -m pytest tests/fuzz

## soak: the process lifecycle tests (stop at any moment, worker crashes) ZOWY_LIFECYCLE_ROUNDS times over (default 10)
ZOWY_LIFECYCLE_ROUNDS ?= 10
soak: $(VENV)/.deps-test
	ZOWY_LIFECYCLE_ROUNDS=$(ZOWY_LIFECYCLE_ROUNDS) $(BIN)/python -m pytest tests/lifecycle -o timeout=0
