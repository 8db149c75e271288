# edgenode: `make run` starts a node with the examples deployed; `make test` runs the tests.
# Both set everything up first (a virtualenv in .venv, and missing system tools via apt-get).

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
DATA   ?= .edgenode
LISTEN ?= 127.0.0.1:8787

.PHONY: setup system-deps runtime run test bench lint package deb clean constraints

setup: system-deps $(STAMP) runtime

# The shared Python runtime every Python worker, run and agent uses: built once per edgenode
# version into the user's cache (a no-op when it is there), so no node waits for it.
runtime: $(STAMP)
	@$(BIN)/edgenode runtime build >/dev/null

$(STAMP): pyproject.toml packaging/constraints.txt
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -c packaging/constraints.txt -e '.[dev]'
	@touch $(STAMP)

system-deps:
	@bash packaging/system-deps.sh

run: setup
	$(BIN)/python examples/run.py --data $(DATA) --listen $(LISTEN)

# Two workers, each taking whole test files (a file's tests share its node processes): most tests
# wait on child processes and the network, so two of them at once keep both cores busy.
test: setup
	$(BIN)/python -m pytest -n 2 --dist loadfile

bench: setup
	$(BIN)/python bench/run_all.py

lint: setup
	$(BIN)/ruff check edgenode tests bench examples
	$(BIN)/mypy

package: setup
	bash packaging/build-zipapp.sh

deb: package
	bash packaging/build-deb.sh

clean:
	rm -rf dist build .pytest_cache .mypy_cache .ruff_cache

constraints: $(STAMP)
	@(echo "# Versions the test suite last passed with; make setup installs within these pins."; \
	  echo "# Refresh with: make constraints"; \
	  $(BIN)/python -m pip freeze --exclude-editable | grep -v '^-e') > packaging/constraints.txt
