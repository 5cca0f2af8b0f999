# The two commands of the README: `make up` runs the platform, `make test` runs the tests.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: test lint

INSTALL_LOG := .data/logs/install.log

# Installs quietly into a log; on failure shows its tail and says where it is.
$(STAMP): pyproject.toml
	@mkdir -p $(dir $(INSTALL_LOG))
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 10))' || \
		{ echo "error: $(PYTHON) is older than Python 3.10; run with PYTHON=python3.10 (or newer)"; exit 1; }
	@echo "==> installing the project into $(VENV) (pip install -e .[cpu,test]; log: $(INSTALL_LOG))"
	@{ test -x $(BIN)/python || $(PYTHON) -m venv $(VENV); } > $(INSTALL_LOG) 2>&1 && \
	 $(BIN)/python -m pip install --upgrade pip >> $(INSTALL_LOG) 2>&1 && \
	 $(BIN)/python -m pip install -e ".[cpu,test]" >> $(INSTALL_LOG) 2>&1 || \
		{ tail -n 15 $(INSTALL_LOG); echo "error: installing $(VENV) failed (network? disk full? python3-venv missing?); see $(INSTALL_LOG)"; exit 1; }
	@touch $(STAMP)

test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/python -m pytest

lint: $(STAMP)
	$(BIN)/ruff check .

.PHONY: up down status
up: $(STAMP)
	$(BIN)/visionray up

down:
	@test -x $(BIN)/visionray && $(BIN)/visionray down || echo "nothing to stop"

status:
	@$(BIN)/visionray status

# The benchmark: in-process limit vs served, one table (load_tests/bench.py; ARGS="--autoscale" etc.).
.PHONY: bench
bench: $(STAMP)
	@$(BIN)/python -c 'import matplotlib' 2>/dev/null || $(BIN)/python -m pip install --quiet -e ".[cpu,test,bench]"
	$(BIN)/python -m load_tests.bench $(ARGS)
