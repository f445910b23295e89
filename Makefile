# `make test` and `make bench` do all set-up on a fresh machine:
# system packages, a virtual environment, the build and the install.
PYTHON ?= python3
VENV   := .venv
VPY    := $(VENV)/bin/python
SUDO   := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
SRCS   := $(shell find cpp python -type f) CMakeLists.txt pyproject.toml

.PHONY: all test bench conformance build sysdeps venv format lint clean

all: build

# System packages: libuv (headers and static archive) and pkg-config.
$(VENV)/.sysdeps:
	@if ! pkg-config --exists libuv 2>/dev/null; then \
	  echo "fastloop: installing libuv1-dev pkg-config with apt-get"; \
	  $(SUDO) apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq libuv1-dev pkg-config; \
	fi
	@mkdir -p $(VENV) && touch $@
sysdeps: $(VENV)/.sysdeps

$(VENV)/.venv-ok: requirements-dev.txt $(VENV)/.sysdeps
	$(PYTHON) -m venv $(VENV)
	$(VPY) -m pip install -q --upgrade pip
	$(VPY) -m pip install -q -r requirements-dev.txt
	@touch $@
venv: $(VENV)/.venv-ok

# The build directory persists (pyproject: build-dir), so rebuilds are incremental.
$(VENV)/.build-ok: $(VENV)/.venv-ok $(SRCS)
	$(VPY) -m pip install -q --no-build-isolation --no-deps .
	@touch $@
build: $(VENV)/.build-ok

test: build
	$(VPY) -m pytest -q tests
	$(VPY) -m tests.conformance --loop both

conformance: build
	$(VPY) -m tests.conformance --loop both

bench: build
	$(VPY) -m bench

format:
	clang-format -i cpp/*.cpp cpp/*.hpp cpp/bindings/*.cpp
	$(VPY) -m ruff format python tests bench

lint:
	$(VPY) -m ruff check python tests bench
	clang-format --dry-run --Werror cpp/*.cpp cpp/*.hpp cpp/bindings/*.cpp

clean:
	rm -rf build $(VENV)
