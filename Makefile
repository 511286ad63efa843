# The two commands that matter: `make run` and `make test`. Both build .venv themselves.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test lint typecheck floors bench fuzz clean lock

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
	$(BIN)/ruff check .ci/floors.py proxy vault pandetect sandbox clients/python tests $(wildcard bench)
	$(BIN)/ruff format --check .ci/floors.py proxy vault pandetect sandbox clients/python tests $(wildcard bench)
	$(BIN)/lint-imports

typecheck: $(STAMP)
	$(BIN)/mypy

# The declared floors, tested: a separate venv with the lowest version of every direct
# runtime dependency (tokenproxy with its postgres and kms extras, the client, the
# sandbox), then .ci/floors.py (each floor really installed, every module imports) and a
# smoke subset of the tests. The test tools (not part of any production install) come at
# their newest, constrained to the versions already installed, so they can lift no floor
# and a failure here always points at a runtime floor.
FLOORS := .venv-floors
# Each pinned dependency's own tests: domain rules (python-stdnum), the vault's crypto and
# storage on SQLite and PostgreSQL (cryptography, asyncpg), KMS through moto (boto3), the
# API over real sockets against localstripe (aiohttp, stripe, msgspec), invoices
# (iso4217), metrics and logs (prometheus-client, structlog), and what leans on aiohttp's
# private request handler (the reason aiohttp is held to one minor).
FLOORS_SMOKE := tests/domain/test_validation.py tests/vault/test_crypto.py \
	tests/vault/test_store.py tests/vault/test_postgres.py tests/vault/test_urls.py \
	tests/vault/test_kms.py tests/proxy/test_cards_api.py tests/proxy/test_bank_accounts.py \
	tests/partners/test_partner_stripe.py tests/core/test_invoices.py \
	tests/infra/test_metrics.py tests/infra/test_log_redaction.py \
	tests/web/test_connection_limits.py tests/web/test_parser_errors.py
floors: $(STAMP)
	test -x $(BIN)/uv || $(BIN)/pip install -q uv
	rm -rf $(FLOORS)
	$(BIN)/uv venv -q --python $(PY) $(FLOORS)
	$(BIN)/uv pip install -q --python $(FLOORS)/bin/python --resolution lowest-direct \
		-e '.[postgres,kms]' -e ./clients/python -e ./sandbox
	$(BIN)/uv pip freeze -q --python $(FLOORS)/bin/python --exclude-editable > $(FLOORS)/floors.txt
	$(BIN)/uv pip install -q --python $(FLOORS)/bin/python -c $(FLOORS)/floors.txt \
		pytest pytest-asyncio hypothesis 'moto[server]>=5,<6'
	$(FLOORS)/bin/python .ci/floors.py
	$(FLOORS)/bin/python -m pytest -q -p no:cacheprovider $(FLOORS_SMOKE)

# wrk drives the load (Debian package); without it bench falls back to bench/loadgen.py.
# More schemathesis cases than the suite runs (which runs about 1,200).
fuzz: $(STAMP)
	TOKENPROXY_FUZZ_EXAMPLES=$${TOKENPROXY_FUZZ_EXAMPLES:-20000} $(BIN)/pytest -p no:cacheprovider tests/resilience/test_fuzz.py

bench: $(STAMP)
	@command -v wrk >/dev/null || (apt-get update -qq && apt-get install -y -qq wrk) \
		|| echo "wrk could not be installed: using the Python load generator"
	$(BIN)/python -m bench --write docs/performance.md
	$(BIN)/python -m bench.detect
	$(BIN)/python -m bench.rewrap
	$(BIN)/python -m bench.postgres
	$(BIN)/python -m bench.limits

clean:
	rm -rf $(VENV) $(FLOORS) var .pytest_cache .mypy_cache .ruff_cache .coverage

# The container image's lock files (exact pins for linux, the whole dependency tree);
# rerun after changing dependencies in pyproject.toml.
lock: $(STAMP)
	$(BIN)/uv pip compile pyproject.toml --extra postgres --extra kms \
	  --python-version 3.11 --python-platform x86_64-unknown-linux-gnu \
	  --custom-compile-command "make lock" -o deploy/docker/requirements.lock
	$(BIN)/uv pip compile deploy/docker/build-requirements.in \
	  --python-version 3.11 --python-platform x86_64-unknown-linux-gnu \
	  --custom-compile-command "make lock" -o deploy/docker/build-requirements.lock
