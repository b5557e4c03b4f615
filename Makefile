# Two commands on a fresh machine with only Python and make:
#   make run    start the service (embedded PostgreSQL unless MODELROUTE_DATABASE_URL is set)
#   make test   run the whole test suite (embedded PostgreSQL, then 127.0.0.1:5432 when it answers)
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
SERVER_PG_URL ?= postgresql://postgres@127.0.0.1:5432/postgres
PYTEST_ARGS ?=

.PHONY: run test test-embedded test-server test-contract-served lint protos install

install: $(STAMP)

$(STAMP): pyproject.toml clients/pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --upgrade pip
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e './clients[cli,codegen]' -e '.[dev]'
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/modelroute-server serve --migrate

test: test-embedded test-server test-contract-served

test-embedded: $(STAMP)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

test-server: $(STAMP)
	@if $(BIN)/python scripts/postgres_answers.py '$(SERVER_PG_URL)'; then \
		echo "== again against $(SERVER_PG_URL)"; \
		MODELROUTE_TEST_DATABASE_URL='$(SERVER_PG_URL)' $(BIN)/python -m pytest $(PYTEST_ARGS); \
	else \
		echo "== no PostgreSQL answers at $(SERVER_PG_URL): the suite ran on the embedded one only"; \
	fi

# The contract suite once more, against a server started by `modelroute-server serve` (the entry point of
# `make run`) on a temporary data directory and a free port.
test-contract-served: $(STAMP)
	MODELROUTE_CONTRACT_SERVE='$(CURDIR)/$(BIN)/modelroute-server' $(BIN)/python -m pytest $(PYTEST_ARGS) tests/contract

lint: $(STAMP)
	$(BIN)/ruff check service clients scripts tests bench
	$(BIN)/ruff format --check service clients scripts tests bench
	$(BIN)/mypy
	$(BIN)/buf lint
	$(BIN)/buf format --diff --exit-code
	$(BIN)/buf breaking --against buf.baseline.binpb
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python scripts/generate_protos.py --check

protos: $(STAMP)
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python scripts/generate_protos.py
