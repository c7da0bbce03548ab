# The README's commands. Each target sets up .venv itself on a fresh machine from the
# committed lock (idempotent: a no-op until pyproject.toml or the lock changes).
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# uv installs the lock (pip-compatible lock format, hashes checked; faster than pip:
# README "Set-up"), with bytecode compiled at install as pip does (imports start faster).
# The Makefile installs uv into .venv with the Python it found.
UV_VERSION := 0.13.10
UV := $(BIN)/uv
# The lock of tested versions: `uv pip compile` output with hashes, for CPython 3.11 on
# x86-64 Linux. The CPU build of torch is pinned in it (torch==X+cpu); CUDA nodes use
# requirements-cuda.lock (`make setup LOCK=requirements-cuda.lock`). `make lock` rewrites both.
LOCK ?= requirements.lock
TORCH_VERSION := 2.13.0
# Where the CPU build of torch comes from: the machine's pip find-links when it has one (a
# local wheel directory, as on our dev boxes), else PyTorch's CPU index. PyPI holds only the
# CUDA build under torch's plain version.
# (pip's find-links: $PIP_FIND_LINKS, else pip's configuration files.)
FIND_LINKS ?= $(or $(PIP_FIND_LINKS),$(shell $(PYTHON) -m pip config get global.find-links 2>/dev/null))
TORCH_CPU_SOURCE ?= $(if $(FIND_LINKS),--find-links $(FIND_LINKS),--extra-index-url https://download.pytorch.org/whl/cpu)
TORCH_CPU_ONLY ?= $(if $(FIND_LINKS),--no-index --find-links $(FIND_LINKS),--index-url https://download.pytorch.org/whl/cpu)
UV_ENV := UV_PYTHON=$(BIN)/python UV_NO_PROGRESS=1 UV_COMPILE_BYTECODE=1
# uv trusts the system's certificate store (as pip does here), where a proxy signs TLS.
export UV_SYSTEM_CERTS := 1
PYTEST_ARGS ?=
ARGS ?=
# glibc's malloc in transparent huge pages for the serving and bench processes (read at
# process start; serve_app/engine/host_memory.py has the measurement). Tests keep defaults.
HUGE_PAGES := GLIBC_TUNABLES=$${GLIBC_TUNABLES:+$$GLIBC_TUNABLES:}glibc.malloc.hugetlb=1

# `make run`'s dev cluster: one Ray node whose fixed ports the commands of another terminal
# (`make status`, `make deploy`) and Prometheus find. Ray 2.60 turns token authentication on
# (the token: ~/.ray/auth_token, or $$RAY_AUTH_TOKEN_PATH); its CLI then needs
# RAY_AUTH_MODE=token, which these targets export. RAY_START_ARGS adds `ray start` flags.
CONFIG ?= deployments/dev.yaml
RAY_PORT ?= 6379
DASHBOARD_PORT ?= 8265
METRICS_PORT ?= 8080
RAY_START_ARGS ?=
run status deploy: export RAY_AUTH_MODE := token
run status deploy: export RAY_ADDRESS := 127.0.0.1:$(RAY_PORT)
run status deploy: export RAY_DASHBOARD_ADDRESS := http://127.0.0.1:$(DASHBOARD_PORT)

.PHONY: setup lock test-latest run status deploy test bench lint format clean

setup: $(STAMP)

$(STAMP): pyproject.toml $(LOCK)
	$(PYTHON) -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11) and "the lock is for Python 3.11: make PYTHON=/path/to/python3.11")'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet uv==$(UV_VERSION)
	$(UV_ENV) $(UV) pip sync --quiet --require-hashes $(if $(findstring cuda,$(LOCK)),,$(TORCH_CPU_SOURCE)) $(LOCK)
	$(UV_ENV) $(UV) pip install --quiet --no-deps -e .
	touch $(STAMP)

# Rewrites the locks from pyproject.toml's ranges with today's releases (then run `make test`
# and commit them). The CUDA lock takes torch's PyPI build (CUDA wheels and their nvidia-*).
LOCK_FLAGS := --quiet --generate-hashes --extra dev --python-version 3.11 \
    --python-platform x86_64-manylinux_2_28 --no-header --custom-compile-command 'make lock'
lock: $(STAMP)
	echo 'torch==$(TORCH_VERSION)+cpu' > $(VENV)/torch-cpu.txt
	$(UV) pip compile $(LOCK_FLAGS) $(TORCH_CPU_SOURCE) --constraint $(VENV)/torch-cpu.txt \
	    pyproject.toml -o requirements.lock
	echo 'torch==$(TORCH_VERSION)' > $(VENV)/torch-cuda.txt
	$(UV) pip compile $(LOCK_FLAGS) --constraint $(VENV)/torch-cuda.txt \
	    pyproject.toml -o requirements-cuda.lock

# The suite against the newest releases pyproject.toml's ranges allow, in a throwaway venv
# (torch: the newest CPU build at TORCH_CPU_SOURCE). It reports; CI runs the lock.
LATEST_VENV := $(or $(TMPDIR),/tmp)/serve-app-latest
test-latest: $(STAMP)
	rm -rf $(LATEST_VENV) && $(PYTHON) -m venv $(LATEST_VENV)
	UV_PYTHON=$(LATEST_VENV)/bin/python UV_COMPILE_BYTECODE=1 $(UV) pip install --quiet --no-deps \
	    $(TORCH_CPU_ONLY) torch
	UV_PYTHON=$(LATEST_VENV)/bin/python UV_COMPILE_BYTECODE=1 $(UV) pip install --quiet \
	    --resolution highest -e '.[dev]'
	grep -E '^[a-z0-9]' $(LOCK) | cut -d' ' -f1 | sort > $(LATEST_VENV)/locked.txt
	UV_PYTHON=$(LATEST_VENV)/bin/python $(UV) pip freeze --exclude-editable | grep -v '^pip==' \
	    | sort > $(LATEST_VENV)/latest.txt
	@echo "test-latest: releases newer than (or missing from) $(LOCK):"
	@comm -13 $(LATEST_VENV)/locked.txt $(LATEST_VENV)/latest.txt | sed 's/^/  /'
	$(LATEST_VENV)/bin/python -m pytest $(PYTEST_ARGS) -p no:cacheprovider

# The cluster lives as long as `serve run` (Ctrl-C stops both): `ray start --block` in the
# background, stopped by the trap; the preflight waits for it and checks CONFIG against it.
# First, every port it will take must be free (a second `make run` refuses at once). The
# ready line (serve_app/ready_line.py) waits in the background for the app to answer, then
# prints its addresses; the trap stops it too.
run: $(STAMP)
	@$(BIN)/python -m serve_app.dev_ports $(CONFIG) RAY_PORT=$(RAY_PORT) \
	    DASHBOARD_PORT=$(DASHBOARD_PORT) METRICS_PORT=$(METRICS_PORT)
	@$(BIN)/ray get-auth-token --generate >/dev/null
	@trap 'kill $$ready_pid $$ray_pid 2>/dev/null; wait $$ray_pid' EXIT; trap 'exit 130' INT TERM; \
	$(HUGE_PAGES) $(BIN)/ray start --head --block --disable-usage-stats \
	    --port=$(RAY_PORT) --dashboard-host=127.0.0.1 --dashboard-port=$(DASHBOARD_PORT) \
	    --metrics-export-port=$(METRICS_PORT) $(RAY_START_ARGS) & ray_pid=$$!; \
	$(BIN)/python -m serve_app.ready_line $(CONFIG) METRICS_PORT=$(METRICS_PORT) \
	    DASHBOARD_PORT=$(DASHBOARD_PORT) & ready_pid=$$!; \
	$(BIN)/python -m serve_app.preflight --wait-s 120 $(CONFIG) && $(BIN)/serve run $(CONFIG)

# Against `make run`'s cluster, from another terminal: first, one line at once if nothing
# listens at its ports (Ray's CLI would time out after a minute with a traceback).
status: $(STAMP)
	@$(BIN)/python -m serve_app.dev_ports --running RAY_PORT=$(RAY_PORT) \
	    DASHBOARD_PORT=$(DASHBOARD_PORT)
	$(BIN)/serve status
	$(BIN)/ray status

deploy: $(STAMP)
	$(BIN)/python -m serve_app.preflight $(CONFIG)
	$(BIN)/serve deploy $(CONFIG)

test: $(STAMP)
	$(BIN)/ruff format --check .
	$(BIN)/ruff check .
	$(BIN)/python -m pytest $(PYTEST_ARGS)

bench: $(STAMP)
	$(HUGE_PAGES) $(BIN)/python -m bench.engine_throughput $(ARGS)

lint: $(STAMP)
	$(BIN)/ruff format --check .
	$(BIN)/ruff check .

format: $(STAMP)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
