# The two commands of the README: `make run` and `make test`. Each sets everything up itself on a
# fresh machine: a virtualenv in .venv, the package and its dev tools, and a regtest-capable
# bitcoind (found on the machine or fetched from Debian's archive into .cache/bitcoind).

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
PYTEST_ARGS ?=

.PHONY: run test lint typecheck unit integration bitcoind chromium postgres bench fuzz clean compose-test compose-wheels

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

bitcoind: $(STAMP)
	$(BIN)/python -m pool.node.binaries ensure

# Browser tests (dashboard, scenario reports) render pages in Debian's headless Chromium.
chromium:
	@command -v chromium >/dev/null 2>&1 || { \
		echo "installing Debian's chromium for the browser tests"; \
		SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
		$$SUDO apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq chromium >/dev/null; }
	@chromium --version

# The PostgreSQL ledger's tests run a throwaway cluster of Debian's server (tests/pg_harness.py:
# initdb in a temporary directory, as an unprivileged user, on a free port).
postgres:
	@ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || { \
		echo "installing Debian's postgresql for the ledger tests"; \
		SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
		$$SUDO apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq postgresql >/dev/null; }
	@ls -d /usr/lib/postgresql/*/bin

run: $(STAMP) bitcoind
	$(BIN)/stratum-pool run $(ARGS)

lint: $(STAMP)
	$(BIN)/ruff check pool stratum tests benchmarks
	$(BIN)/ruff format --check pool stratum tests benchmarks

typecheck: $(STAMP)
	$(BIN)/mypy

test: $(STAMP) bitcoind chromium postgres lint typecheck
	$(BIN)/pytest $(PYTEST_ARGS)

unit: $(STAMP) postgres
	$(BIN)/pytest tests/unit $(PYTEST_ARGS)

integration: $(STAMP) bitcoind chromium postgres
	$(BIN)/pytest tests/integration $(PYTEST_ARGS)

# The pool as an outsider sees it (separate processes pinned to cores 0 and 1, see
# benchmarks/__main__.py) plus the in-process micro-benchmarks. BENCH_ARGS="--quick" for a
# one-minute smoke run, "--only submits,api" for some scenarios.
BENCH_ARGS ?=
bench: $(STAMP) bitcoind postgres
	$(BIN)/python -m benchmarks $(BENCH_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache

# The long fuzz run (not part of `make test`; its 20 000-input version is): a million inputs
# against the Stratum framing, codec and per-connection core, whole and byte by byte.
# FUZZ_ARGS="--seed N" replays a run, "--count N --jobs N" sizes it.
FUZZ_ARGS ?=
fuzz: $(STAMP)
	$(BIN)/python -m tests.fuzz $(FUZZ_ARGS)

# docker/compose.yaml run for real (not part of `make test`: it needs podman or Docker and a few
# minutes): the pool's wheels built here for the image's Python, the images built, the stack up,
# a credited share and a block waited for, the stack down (on failure too, after its logs).
# podman + podman-compose when installed, else Docker; COMPOSE_ARGS="--engine docker" chooses.
# SETUP_PODMAN=1 installs podman first when it is missing (docker/setup-podman.sh: Debian, root).
# BASE_IMAGE / DEBIAN_IMAGE (environment) override the images' bases.
COMPOSE_ARGS ?=
compose-test: $(STAMP)
	$(BIN)/python docker/compose_test.py test $(if $(SETUP_PODMAN),--setup-podman) $(COMPOSE_ARGS)

# Only the first step: the pool's wheels in docker/wheels, for `docker compose up --build` by hand.
compose-wheels: $(STAMP)
	$(BIN)/python docker/compose_test.py wheels $(COMPOSE_ARGS)
