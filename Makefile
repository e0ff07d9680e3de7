# Workspace service: build, check, test, demo.
PY ?= python3
VENV ?= .venv
VPY := $(VENV)/bin/python
PROTOS := $(shell find protos -name '*.proto' | sort)

.PHONY: all venv deps deps-demo protos check-protos lint typecheck bytecode test test-fast test-host demo bench clean

all: venv

# Debian packages the node side and the end-to-end tests need (root, Debian 12).
deps:
	./scripts/install-deps.sh

# Only those `make demo` needs (no PostgreSQL, Prometheus or Slurm servers).
deps-demo:
	./scripts/install-deps.sh demo

venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PY) -m venv $(VENV)
	$(VPY) -m pip install -q --upgrade pip
	$(VPY) -m pip install -q -e '.[dev,libvirt,postgresql]'
	touch $@

protos: venv
	$(VPY) -m grpc_tools.protoc -Iprotos --python_out=. --grpc_python_out=. \
	  --plugin=protoc-gen-mypy=$(VENV)/bin/protoc-gen-mypy \
	  --plugin=protoc-gen-mypy_grpc=$(VENV)/bin/protoc-gen-mypy_grpc \
	  --mypy_out=. --mypy_grpc_out=. $(PROTOS)
	touch workspace/v1/__init__.py workspace/node/__init__.py workspace/node/v1/__init__.py

# Regenerate the committed stubs and fail if anything changed.
check-protos: protos
	git diff --exit-code -- workspace/v1 workspace/node/v1
	test -z "$$(git status --porcelain -- workspace/v1 workspace/node/v1)"

lint: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

typecheck: venv
	$(VENV)/bin/mypy

# Processes for the tests without real VMs (pytest-xdist): they wait on subprocesses,
# sockets and timers more than they compute, so four share two cores well.
TEST_WORKERS ?= 4

# Bytecode for the project's modules, written before the tests: where the environment
# sets PYTHONDONTWRITEBYTECODE, every process they start (services, agents, each `ws`
# call) would otherwise compile what it imports again.
bytecode: venv
	$(VPY) -m compileall -q workspace agent images benchmarks tests

test-fast: venv bytecode
	$(VENV)/bin/pytest -q -n $(TEST_WORKERS) -m 'not host' tests

# The real-VM tests in two lanes (tests/host/lanes.py): the modules with cloud-image
# guests one after another in one process, every other module beside them in the other.
HOST_WORKERS = -n 2 --host-lanes

test-host: venv bytecode
	$(VENV)/bin/pytest -q $(HOST_WORKERS) -m host tests

# The README's test command: installs what the tests need (Debian 12, root), then runs all
# tests: those without real VMs in parallel, then the real-VM ones in two lanes (the
# cloud-image guests' boots take both cores, so their modules run one at a time). Both
# parts run; it fails if either failed.
test: deps venv check-protos lint typecheck bytecode
	rc=0; \
	$(VENV)/bin/pytest -q --durations=15 -n $(TEST_WORKERS) -m 'not host' tests || rc=$$?; \
	$(VENV)/bin/pytest -q --durations=25 $(HOST_WORKERS) -m host tests || rc=$$?; \
	exit $$rc

demo: deps-demo venv
	$(VENV)/bin/python -m workspace.demo

bench: venv
	$(VPY) benchmarks/api.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
