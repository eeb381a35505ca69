# The only commands anyone needs: make up, make test, make lint, make bench.
# Every target installs what is missing first (Debian packages when root, then .venv),
# idempotently: a second run does nothing it does not need to.

SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
APT_STAMP := .apt.installed
APT_PACKAGES := iproute2 nftables wireguard-go wireguard-tools podman runc \
	bind9-dnsutils dnsperf dnsmasq-base iperf3 wrk busybox-static procps chromium \
	postgresql redis-server mariadb-server openssh-client openssh-server debootstrap
PYTEST_WORKERS ?= 2
# extra flags for kled up, e.g. UP_FLAGS="--listen 0.0.0.0:7080 --dns-listen 0.0.0.0:53"
UP_FLAGS ?=

.PHONY: up test lint bench deps apt venv oracle ui-deps pyc clean help

help:
	@echo "make up     install what is missing, start Kled on this machine"
	@echo "make test   install what is missing, run lint and the whole test suite"
	@echo "make lint   ruff, mypy --strict and the import layering contract"
	@echo "make bench  run the benchmarks in bench/ (JSON on stdout)"

deps: apt venv oracle ui-deps

# Debian packages: only when root and only those not yet installed.
apt: $(APT_STAMP)
$(APT_STAMP): Makefile
	@missing=""; for p in $(APT_PACKAGES); do \
		dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q "install ok installed" || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
		if [ "$$(id -u)" = 0 ]; then \
			echo "installing Debian packages:$$missing"; \
			apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null || exit 1; \
		else \
			echo "warning: not root, cannot install:$$missing (tests that need them will skip)"; exit 0; \
		fi; \
	fi; touch $@

venv: $(STAMP)
$(STAMP): pyproject.toml requirements.lock
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@$(BIN)/pip install -q --disable-pip-version-check --upgrade pip
	@$(BIN)/pip install -q --disable-pip-version-check -r requirements.lock
	@$(BIN)/pip install -q --disable-pip-version-check --no-deps -e .
	@touch $@

# The reference devcontainer CLI, pinned, that the workspace tests compare Kled against.
# Without npm it is skipped (those tests then skip, saying why).
ORACLE_VERSION := 0.89.0
TOOLS := .tools
ORACLE_STAMP := $(TOOLS)/.oracle-$(ORACLE_VERSION)
oracle: $(ORACLE_STAMP)
$(ORACLE_STAMP):
	@if command -v npm >/dev/null 2>&1; then \
		mkdir -p $(TOOLS) && \
		npm install --prefix $(TOOLS) --no-save --no-audit --no-fund --loglevel=error \
			@devcontainers/cli@$(ORACLE_VERSION) >/dev/null && touch $@; \
	else \
		echo "warning: npm not found, cannot install @devcontainers/cli (oracle tests will skip)"; \
	fi

# The web console's front-end dependencies (axe-core for its accessibility test), pinned by
# package-lock.json, installed under .tools/ui; nothing of them is copied into the repository.
UI_DEPS := $(TOOLS)/ui
UI_STAMP := $(UI_DEPS)/.installed
ui-deps: $(UI_STAMP)
$(UI_STAMP): package.json package-lock.json
	@if command -v npm >/dev/null 2>&1; then \
		mkdir -p $(UI_DEPS) && cp package.json package-lock.json $(UI_DEPS)/ && \
		npm ci --prefix $(UI_DEPS) --no-audit --no-fund --loglevel=error >/dev/null && touch $@; \
	else \
		echo "warning: npm not found, cannot install axe-core (the console's accessibility test will skip)"; \
	fi

# Kled's own modules compiled once: where PYTHONDONTWRITEBYTECODE is set, every kled
# process (the suite starts hundreds of servers, agents and CLIs) would compile them again.
pyc: venv
	@$(BIN)/python -m compileall -q src >/dev/null

lint: venv
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench
	$(BIN)/mypy
	$(BIN)/lint-imports

# Two passes: everything else spread over workers, then the suites that build on their
# own earlier steps (their order must hold) or drive whole meshes: each file whole in one
# worker (--dist loadfile), two labs at a time, so their order holds and the pass halves.
test: deps lint pyc
	$(BIN)/pytest -q -n $(PYTEST_WORKERS) --dist loadgroup -p no:cacheprovider -m "not serial"
	$(BIN)/pytest -q -n $(PYTEST_WORKERS) --dist loadfile -p no:cacheprovider -m serial

up: deps pyc
	$(BIN)/kled up $(UP_FLAGS)

bench: deps pyc
	@for b in bench/*.py; do echo "== $$b" >&2; $(BIN)/python $$b || exit 1; done

clean:
	rm -rf $(VENV) $(APT_STAMP) $(TOOLS) .mypy_cache .ruff_cache
