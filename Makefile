# The two commands that matter: `make run` and `make test`. Both build .venv themselves.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test lint typecheck bench fuzz clean

# The client (clients/python) and the sandbox partner (sandbox/) are distributions of
# their own, installed editable beside the service so the tests drive them for real.
$(STAMP): pyproject.toml clients/python/pyproject.toml sandbox/pyproject.toml
	test -d $(VENV) || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]' -e ./clients/python -e ./sandbox
	touch $(STAMP)

venv: $(STAMP)

run: $(STAMP)
	$(BIN)/python -m proxy dev

test: $(STAMP) lint typecheck
	$(BIN)/pytest --cov --cov-report=term:skip-covered

lint: $(STAMP)
	$(BIN)/ruff check proxy vault pandetect sandbox clients/python tests $(wildcard bench)
	$(BIN)/ruff format --check proxy vault pandetect sandbox clients/python tests $(wildcard bench)
	$(BIN)/lint-imports

typecheck: $(STAMP)
	$(BIN)/mypy

# wrk drives the load (Debian package); without it bench falls back to bench/loadgen.py.
# More schemathesis cases than the suite runs (which runs about 1,200).
fuzz: $(STAMP)
	TOKENPROXY_FUZZ_EXAMPLES=$${TOKENPROXY_FUZZ_EXAMPLES:-20000} $(BIN)/pytest -p no:cacheprovider tests/resilience/test_fuzz.py

bench: $(STAMP)
	@command -v wrk >/dev/null || (apt-get update -qq && apt-get install -y -qq wrk) \
		|| echo "wrk could not be installed: using the Python load generator"
	$(BIN)/python -m bench
	$(BIN)/python -m bench.detect
	$(BIN)/python -m bench.rewrap
	$(BIN)/python -m bench.postgres

clean:
	rm -rf $(VENV) var .pytest_cache .mypy_cache .ruff_cache .coverage
