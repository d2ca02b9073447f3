# The two commands of the quick start: `make dev` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

$(BIN)/ledgerci: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e ".[test]"
	touch $@

.PHONY: install dev test unit lint bench
install: $(BIN)/ledgerci

PORT ?= 8080
dev: install
	$(BIN)/ledgerci dev --demo --port $(PORT)

lint: install
	$(BIN)/ruff check .
	$(BIN)/lint-imports

test: lint
	$(BIN)/pytest -q -p no:cacheprovider

# The fast loop: the domain, the workflow parser, the CLI's printing and the pure parts of the
# services, no processes started (a few seconds).
unit: install
	$(BIN)/pytest -q -p no:cacheprovider tests/unit

bench: install
	$(BIN)/python -m bench.latency --runs 200
