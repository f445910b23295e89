# `make test` and `make bench` do all set-up on a fresh machine:
# system packages, a virtual environment, the build and the install.
PYTHON ?= python3
VENV   := .venv
VPY    := $(VENV)/bin/python
SUDO   := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
SRCS   := $(shell find cpp python -type f) CMakeLists.txt pyproject.toml

.PHONY: all test bench conformance build sysdeps venv format lint clean sanitize

all: build

# System packages: libuv (headers and static archive) and pkg-config; openssl
# (the TLS tests make certificates), iproute2's ss (a server backlog test) and
# clang-format (make lint, which make test runs).
$(VENV)/.sysdeps:
	@if ! pkg-config --exists libuv 2>/dev/null || ! command -v openssl >/dev/null || \
	    ! command -v ss >/dev/null || ! command -v clang-format >/dev/null; then \
	  echo "fastloop: installing libuv1-dev pkg-config openssl iproute2 clang-format with apt-get"; \
	  $(SUDO) apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq \
	    libuv1-dev pkg-config openssl iproute2 clang-format; \
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

# Lint, the suite on the release build, again on the ASan+UBSan debug build
# (which adds the core's counters and fault injection), then CPython's asyncio tests.
test: build lint
	$(VPY) -m pytest -q tests
	$(MAKE) sanitize
	$(VPY) -m tests.conformance --loop both

conformance: build
	$(VPY) -m tests.conformance --loop both

bench: build
	$(VPY) -m bench

# The whole pytest suite against an ASan+UBSan debug build of the core
# (FASTLOOP_DEBUG: the handle counters are checked too), built in
# build/sanitize and loaded from there (the installed package is untouched).
SAN_DIR := build/sanitize
sanitize: $(VENV)/.venv-ok $(SRCS)
	cmake -S . -B $(SAN_DIR) -G Ninja -DCMAKE_BUILD_TYPE=Debug \
	  -DFASTLOOP_SANITIZE=address,undefined -DFASTLOOP_DEBUG=ON -DPython_EXECUTABLE=$(abspath $(VPY)) \
	  -Dpybind11_DIR=$$($(VPY) -m pybind11 --cmakedir) > /dev/null
	cmake --build $(SAN_DIR)
	rm -rf $(SAN_DIR)/pkg && mkdir -p $(SAN_DIR)/pkg && cp -r python/fastloop $(SAN_DIR)/pkg/
	cp $(SAN_DIR)/_core*.so $(SAN_DIR)/pkg/fastloop/
	ASAN_OPTIONS=detect_leaks=0 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
	  LD_PRELOAD="$$(gcc -print-file-name=libasan.so) $$(gcc -print-file-name=libubsan.so)" \
	  PYTHONPATH=$(abspath $(SAN_DIR)/pkg) $(VPY) -m pytest -q -p no:randomly tests

CPP_FILES := $(wildcard cpp/*.cpp cpp/*.hpp cpp/bindings/*.cpp cpp/bindings/*.hpp)

format:
	clang-format -i $(CPP_FILES)
	$(VPY) -m ruff format python tests bench

lint: $(VENV)/.venv-ok
	$(VPY) -m ruff check python tests bench
	$(VPY) -m ruff format --check python tests bench
	clang-format --dry-run --Werror $(CPP_FILES)

clean:
	rm -rf build $(VENV)
