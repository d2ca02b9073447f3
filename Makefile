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

# Three test processes side by side, a test file each at a time (--dist loadfile: a file's
# tests share its module fixtures, such as a cluster or the deploy test's image), in the order
# tests/conftest.py gives them, longest first (--no-loadscope-reorder: xdist would otherwise
# order the files by how many tests they hold). Three on
# two cores because the suite waits more than it computes (processes starting, leases
# running out, restarts): one process leaves the CPU about half idle. Every test makes its
# own servers, ports, directories and runner ids, so none sees another's.
TEST_PROCESSES ?= 3
test: lint
	$(BIN)/pytest -q -p no:cacheprovider -n $(TEST_PROCESSES) --dist loadfile --no-loadscope-reorder

# The fast loop: the domain, the workflow parser, the CLI's printing and the pure parts of the
# services, no processes started (a few seconds).
unit: install
	$(BIN)/pytest -q -p no:cacheprovider tests/unit

bench: install
	$(BIN)/python -m bench.latency --runs 200
