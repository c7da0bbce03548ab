# The README's commands. Each target sets up .venv itself on a fresh machine (idempotent:
# a no-op when pyproject.toml has not changed since the last install).
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# The CPU build of torch (fast to install here). On a GPU machine use e.g.
#   make TORCH_SPEC='torch==2.13.0 --index-url https://download.pytorch.org/whl/cu128'
TORCH_SPEC ?= torch==2.13.0
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

.PHONY: setup run status deploy test bench lint format clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet $(TORCH_SPEC)
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

# The cluster lives as long as `serve run` (Ctrl-C stops both): `ray start --block` in the
# background, stopped by the trap; the preflight waits for it and checks CONFIG against it.
run: $(STAMP)
	@$(BIN)/ray get-auth-token --generate >/dev/null
	@trap 'kill $$ray_pid 2>/dev/null; wait $$ray_pid' EXIT; trap 'exit 130' INT TERM; \
	$(HUGE_PAGES) $(BIN)/ray start --head --block --disable-usage-stats \
	    --port=$(RAY_PORT) --dashboard-host=127.0.0.1 --dashboard-port=$(DASHBOARD_PORT) \
	    --metrics-export-port=$(METRICS_PORT) $(RAY_START_ARGS) & ray_pid=$$!; \
	$(BIN)/python -m serve_app.preflight --wait-s 120 $(CONFIG) && $(BIN)/serve run $(CONFIG)

# Against `make run`'s cluster, from another terminal.
status: $(STAMP)
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
