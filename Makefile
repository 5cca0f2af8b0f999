# The two commands of the README: `make up` runs the platform, `make test` runs the tests.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: test lint

INSTALL_LOG := .data/logs/install.log
# Exact versions the suite was run with, per Python minor version (constraints/pyX.Y.txt). Without
# one for this Python, pip resolves within pyproject.toml's bounds (and make says so).
PYVER := $(shell $(PYTHON) -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null)
CONSTRAINTS := constraints/py$(PYVER).txt
PIN := $(if $(wildcard $(CONSTRAINTS)),-c $(CONSTRAINTS),)

# Installs quietly into a log; on failure shows its tail and says where it is.
$(STAMP): pyproject.toml $(wildcard $(CONSTRAINTS))
	@mkdir -p $(dir $(INSTALL_LOG))
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 10))' || \
		{ echo "error: $(PYTHON) is older than Python 3.10; run with PYTHON=python3.10 (or newer)"; exit 1; }
	@echo "==> installing the project into $(VENV) (pip install -e .[cpu,test] $(PIN); log: $(INSTALL_LOG))"
	@test -n "$(PIN)" || echo "    note: no $(CONSTRAINTS): versions resolved within pyproject.toml's bounds, not the tested set"
	@{ test -x $(BIN)/python || $(PYTHON) -m venv $(VENV); } > $(INSTALL_LOG) 2>&1 && \
	 $(BIN)/python -m pip install --upgrade pip >> $(INSTALL_LOG) 2>&1 && \
	 $(BIN)/python -m pip install -e ".[cpu,test]" $(PIN) >> $(INSTALL_LOG) 2>&1 || \
		{ tail -n 15 $(INSTALL_LOG); echo "error: installing $(VENV) failed (network? disk full? python3-venv missing?); see $(INSTALL_LOG)"; exit 1; }
	@touch $(STAMP)

test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/lint-imports
	$(BIN)/python -m pytest

# The suite in a shuffled order (pytest-random-order): every test module must pass in any order.
.PHONY: test-shuffled
test-shuffled: $(STAMP)
	$(BIN)/python -m pytest --random-order

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/lint-imports

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
	@$(BIN)/python -c 'import matplotlib' 2>/dev/null || $(BIN)/python -m pip install --quiet -e ".[cpu,test,bench]" $(PIN)
	$(BIN)/python -m load_tests.bench $(ARGS)

# On an NVIDIA GPU host: onnxruntime-gpu in a venv of its own (.data/gpu-venv), the served answers
# on CUDA and on TensorRT against the CPU reference, and the device's throughput
# (load_tests/gpu_check.py, docs/accelerators.md). `make gpu-check DRY_RUN=1` on a CPU host: every
# step printed, the CPU side run, the GPU steps "skipped: no GPU".
.PHONY: gpu-check
gpu-check: $(STAMP)
	DRY_RUN=$(DRY_RUN) $(BIN)/python -m load_tests.gpu_check

# Refresh the lock on purpose: newest releases within pyproject.toml's bounds, in a scratch venv.
# Then run `make test` (which reinstalls from it) before committing the new file.
.PHONY: lock
LOCK_VENV := .data/lock-venv
lock:
	rm -rf $(LOCK_VENV) && $(PYTHON) -m venv $(LOCK_VENV)
	$(LOCK_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(LOCK_VENV)/bin/python -m pip install --quiet -e ".[cpu,test,bench]"
	{ echo "# Exact versions the test suite was run with, on Python $(PYVER) ($$(uname -m)). Installed by make as pip -c."; \
	  echo "# Refresh deliberately with \`make lock\`, then run \`make test\` before committing it."; \
	  $(LOCK_VENV)/bin/python -m pip freeze --exclude-editable; } > $(CONSTRAINTS)
	rm -rf $(LOCK_VENV)
	@echo "wrote $(CONSTRAINTS); run make test before committing it"

# The gRPC modules from serve/protocols/inference.proto (generated code is committed: serving
# needs no grpcio-tools). Run after editing the .proto. The messages go into a descriptor pool of
# their own: tritonclient's modules declare the same `inference.*` names in the default pool, and
# both must import in one process (docs/oip.md).
.PHONY: proto
proto: $(STAMP)
	@$(BIN)/python -c 'import grpc_tools' 2>/dev/null || $(BIN)/python -m pip install --quiet -e ".[cpu,test,proto]" $(PIN)
	$(BIN)/python -m grpc_tools.protoc -Iserve/protocols=serve/protocols --python_out=. --grpc_python_out=. \
		serve/protocols/inference.proto
	sed -i 's/_descriptor_pool.Default().AddSerializedFile/_descriptor_pool.DescriptorPool().AddSerializedFile/' \
		serve/protocols/inference_pb2.py
