# `make test` and `make bench` do all set-up on a fresh machine:
# system packages, a virtual environment, the build and the install.
PYTHON ?= python3
VENV   := .venv
VPY    := $(VENV)/bin/python
SUDO   := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
SRCS   := $(shell find cpp python -type f) CMakeLists.txt pyproject.toml
# The Python versions fastloop supports (pyproject.toml says the same). `make
# test` tests each one it finds (.ci/find_python): $(PYTHON) in .venv, with
# lint and the sanitizer run; each other one in a venv of its own, .venv-3.12...
PY_VERSIONS := 3.11 3.12 3.13

.PHONY: all test bench conformance build sysdeps venv format lint clean sanitize \
	sanitize-build pytest wheel

all: build

# System packages: libuv (headers and static archive) and pkg-config; openssl
# (the TLS tests make certificates), iproute2's ss (a server backlog test),
# clang-format and clang-tidy (make lint, which make test runs); wrk (the
# benchmarks' HTTP rows); PostgreSQL's server and redis-server (the services
# tests/services.py starts for the asyncpg and redis-py tests; Debian keeps
# initdb and postgres in /usr/lib/postgresql/<major>/bin, off PATH). The check
# runs again when this Makefile changes (a package may have been added); it is
# an order-only prerequisite, so that alone rebuilds nothing.
$(VENV)/.sysdeps: Makefile
	@if ! pkg-config --exists libuv 2>/dev/null || ! command -v openssl >/dev/null || \
	    ! command -v ss >/dev/null || ! command -v clang-format >/dev/null || \
	    ! command -v clang-tidy >/dev/null || ! command -v wrk >/dev/null || \
	    ! ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1 || \
	    ! command -v redis-server >/dev/null; then \
	  echo "fastloop: installing libuv1-dev pkg-config openssl iproute2 clang-format clang-tidy wrk postgresql redis-server with apt-get"; \
	  $(SUDO) apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq \
	    libuv1-dev pkg-config openssl iproute2 clang-format clang-tidy wrk postgresql redis-server; \
	fi
	@mkdir -p $(VENV) && touch $@
sysdeps: $(VENV)/.sysdeps

$(VENV)/.venv-ok: requirements-dev.txt requirements-test.txt | $(VENV)/.sysdeps
	$(PYTHON) -m venv $(VENV)
	$(VPY) -m pip install -q --upgrade pip
	$(VPY) -m pip install -q -r requirements-dev.txt
	@touch $@
venv: $(VENV)/.venv-ok

# Each venv's build has a directory of its own that persists, so rebuilds are
# incremental: build/venv for .venv, build/venv-3.12 for .venv-3.12 (a venv has
# one interpreter: the directory is per interpreter). `make wheel` builds in the
# same directory, so after `make build` only the packaging is left. flock makes
# two builds into one directory take turns instead of breaking each other (a
# plain `pip install .` builds in a temporary directory: pyproject.toml sets
# none). A build is quiet when it works; when it fails, .ci/logged prints its
# cause (the compiler's or CMake's messages, which pip -q would hide), and the
# whole output stays in the build directory (install.log, wheel.log).
# Our builds treat compiler warnings as errors (FASTLOOP_WERROR, CMakeLists.txt).
# $(call build_dir,VENV) and $(call pip_build,VENV,PIP COMMAND [ARG...])
build_dir = build/$(patsubst .%,%,$(1))
pip_build = FASTLOOP_WERROR=ON .ci/logged $(call build_dir,$(1))/$(firstword $(2)).log \
	flock $(call build_dir,$(1)).lock $(1)/bin/python -m pip $(2) -v --no-build-isolation \
	--no-deps -Cbuild-dir=$(call build_dir,$(1)) .
$(VENV)/.build-ok: $(VENV)/.venv-ok $(SRCS)
	$(call pip_build,$(VENV),install)
	@touch $@
build: $(VENV)/.build-ok

# `make wheel`: a wheel of fastloop for $(PYTHON) in dist/ that carries libuv, so
# that installing it needs neither libuv1-dev nor a compiler. pip builds it (in
# the venv's build directory), then `auditwheel repair` copies the libuv it links
# into it (fastloop.libs/), points the module's RPATH there and gives the wheel
# the manylinux tag its symbols allow (manylinux_2_34 from Debian 12). A wheel
# made earlier for the same Python is replaced. `make wheel-3.12` does the same
# for another Python (repaired with .venv's auditwheel, which reads ELF files
# whatever the Python). tests/test_wheel.py installs the wheel in a fresh venv.
WHEEL_DEPS := $(SRCS) README.md LICENSE
# $(call wheel_recipe,VENV)
define wheel_recipe
rm -rf $(call build_dir,$(1))/wheel-raw
$(call pip_build,$(1),wheel -w $(call build_dir,$(1))/wheel-raw)
@raw=$$(echo $(call build_dir,$(1))/wheel-raw/fastloop-*.whl); \
	  py=$$(basename "$$raw" | cut -d- -f3-4); \
	  rm -f dist/fastloop-*-"$$py"-*.whl; \
	  PATH="$(abspath $(VENV)/bin):$$PATH" .ci/logged $(call build_dir,$(1))/repair.log \
	    $(VPY) -m auditwheel repair -w dist "$$raw" || exit 1; \
	  whl=$$(echo dist/fastloop-*-"$$py"-*.whl); \
	  echo "fastloop: $$whl"; \
	  echo "fastloop: auditwheel show: $$($(VPY) -m auditwheel show "$$whl" | tr '\n' ' ' | \
	    grep -o 'consistent with the following platform tag: "[^"]*"')"; \
	  echo "fastloop: in fastloop.libs/: $$($(VPY) -m zipfile -l "$$whl" | \
	    grep -o 'fastloop\.libs/[^ ]\+' | sed 's|.*/||' | tr '\n' ' ')"
@touch $(1)/.wheel-ok
endef
$(VENV)/.wheel-ok: $(VENV)/.venv-ok $(WHEEL_DEPS)
	$(call wheel_recipe,$(VENV))
wheel: $(VENV)/.wheel-ok

# Every phase on every supported Python found, each with a time limit, then
# one line per version (.ci/make_test.py): first the builds, lint and the
# wheels, two at a time (nothing timing-sensitive runs then), then one after the
# other the suite (with the wheel's test) on the release build, again on the ASan+UBSan debug build (which adds the
# core's counters and fault injection) and CPython's asyncio tests on $(PYTHON),
# then the suite and CPython's asyncio tests on each other version.
test: | $(VENV)/.sysdeps
	$(PYTHON) .ci/make_test.py --make "$(MAKE)" --versions "$(PY_VERSIONS)"

# PYTEST_ARGS: e.g. make pytest-3.12 PYTEST_ARGS="-k unix -x"
# The suite tests the wheel too (tests/test_wheel.py): FASTLOOP_WHEEL_REQUIRED
# makes a missing wheel a failure there, where a bare pytest skips it.
PYTEST_ARGS ?=
pytest: build wheel
	FASTLOOP_WHEEL_REQUIRED=1 $(VPY) -m pytest -q $(PYTEST_ARGS) tests

# CPython's asyncio suite, then anyio's own suite (its PyPI sdist's tests, fetched
# into build/anyio-suite; on the main Python only: 2 minutes; the other versions
# run CPython's suite), each on asyncio's loop and on fastloop.
conformance: build
	$(VPY) -m tests.conformance --loop both
	$(VPY) -m tests.conformance.anyio_suite

# The same for another Python: `make pytest-3.12`, `make conformance-3.13`...
# .venv-3.12 gets what the tests need (requirements-test.txt); its build
# directory is build/venv-3.12, so the builds do not collide.
.venv-%/.venv-ok: requirements-test.txt | $(VENV)/.sysdeps
	@py="$$(.ci/find_python $*)" || { echo "fastloop: no usable Python $* (.ci/find_python $*)"; exit 1; }; \
	  echo "$$py -m venv .venv-$*"; "$$py" -m venv .venv-$*
	.venv-$*/bin/python -m pip install -q --upgrade pip
	.venv-$*/bin/python -m pip install -q -r requirements-test.txt
	@touch $@
venv-%: .venv-%/.venv-ok ;

.venv-%/.build-ok: .venv-%/.venv-ok $(SRCS)
	$(call pip_build,.venv-$*,install)
	@touch $@
build-%: .venv-%/.build-ok ;
.venv-%/.wheel-ok: .venv-%/.venv-ok $(VENV)/.venv-ok $(WHEEL_DEPS)
	$(call wheel_recipe,.venv-$*)
wheel-%: .venv-%/.wheel-ok ;
# (made through pattern rules only: without this make would delete them)
.PRECIOUS: .venv-%/.venv-ok .venv-%/.build-ok .venv-%/.wheel-ok

pytest-%: .venv-%/.build-ok .venv-%/.wheel-ok
	FASTLOOP_WHEEL_REQUIRED=1 .venv-$*/bin/python -m pytest -q $(PYTEST_ARGS) tests

conformance-%: .venv-%/.build-ok
	.venv-$*/bin/python -m tests.conformance --loop both

bench: build
	$(VPY) -m bench

# The whole pytest suite against an ASan+UBSan debug build of the core
# (FASTLOOP_DEBUG: the handle counters are checked too), built in
# build/sanitize and loaded from there (the installed package is untouched).
# ASan and UBSan stop a process at its first error. LeakSanitizer checks each
# process at exit, pytest's and every child a test starts (they inherit the
# environment); PYTHONMALLOC=malloc puts Python's objects in its view. Reports
# go to $(LSAN_DIR)/log.<exe>.<pid> and exitcode=23 marks a leak, then
# tools/lsan_check.py fails the run on a leak with a fastloop frame or one no
# rule of tools/lsan_suppressions.txt explains (it says why it reads them
# itself). Programs the tests run that are not Python (ss) inherit the
# sanitizer too: tools/lsan_other_programs.supp keeps LSan from cutting their
# output short. `make sanitize LSAN_BY_MODULE=1` also says after which test
# file a leak appeared (a heap scan per file: slower).
SAN_DIR  := build/sanitize
LSAN_DIR := $(abspath $(SAN_DIR))/lsan
LSAN_BY_MODULE ?= 0
sanitize-build: $(VENV)/.venv-ok $(SRCS)
	cmake -S . -B $(SAN_DIR) -G Ninja -DCMAKE_BUILD_TYPE=Debug -DFASTLOOP_WERROR=ON \
	  -DFASTLOOP_SANITIZE=address,undefined -DFASTLOOP_DEBUG=ON -DPython_EXECUTABLE=$(abspath $(VPY)) \
	  -Dpybind11_DIR=$$($(VPY) -m pybind11 --cmakedir) > /dev/null
	cmake --build $(SAN_DIR)
	rm -rf $(SAN_DIR)/pkg && mkdir -p $(SAN_DIR)/pkg && cp -r python/fastloop $(SAN_DIR)/pkg/
	cp $(SAN_DIR)/_core*.so $(SAN_DIR)/pkg/fastloop/

# Only the fastloop half of each test runs here: the asyncio half ("[asyncio"
# ids) runs no fastloop code (checked: none of them makes a fastloop loop), so
# on this build it would only repeat the release run, at ASan's pace. Nor do the
# packaging tests: test_wheel.py runs the release wheel in a venv of its own,
# test_source_build.py runs CMake's configure step. Nor test_adoption.py: its
# subject is the Python entry points (python -m fastloop, the gunicorn workers,
# the pytest plugin), run as whole programs in child interpreters (gunicorn,
# uvicorn, pytest, asyncio's REPL, python -E, which drops PYTHONMALLOC=malloc
# and so reports every pymalloc arena as a leak); none of it is core code.
SAN_PYTEST_ARGS ?= -k "not [asyncio" --ignore=tests/test_wheel.py \
	--ignore=tests/test_source_build.py --ignore=tests/test_adoption.py
# intercept_tls_get_addr=0: GCC 12's LeakSanitizer records a bogus dynamic-TLS
# range in some processes (seen in a child interrupted by SIGINT: "DTLS 5 at
# 0x123c-0x100000233e") and its stop-the-world tracer then crashes ("Tracer
# caught signal 11"), so no leak check runs there. Without the interception,
# dynamic TLS blocks are still found, as heap blocks the thread's DTV points to.
sanitize: sanitize-build
	rm -rf $(LSAN_DIR) && mkdir -p $(LSAN_DIR)
	ASAN_OPTIONS=detect_leaks=1:exitcode=23:intercept_tls_get_addr=0:log_path=$(LSAN_DIR)/log:log_exe_name=1 \
	  LSAN_OPTIONS=suppressions=$(abspath tools/lsan_other_programs.supp):print_suppressions=0 \
	  UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 PYTHONMALLOC=malloc \
	  FASTLOOP_LSAN_DIR=$(LSAN_DIR) FASTLOOP_LSAN_BY_MODULE=$(LSAN_BY_MODULE) \
	  LD_PRELOAD="$$(gcc -print-file-name=libasan.so) $$(gcc -print-file-name=libubsan.so)" \
	  PYTHONPATH=$(abspath $(SAN_DIR)/pkg):$(abspath tools) \
	  $(VPY) -m pytest -q -p no:randomly -p lsan_plugin $(SAN_PYTEST_ARGS) tests; \
	$(VPY) tools/lsan_check.py $(LSAN_DIR) --pytest-rc $$? --suppressions tools/lsan_suppressions.txt

CPP_FILES := $(wildcard cpp/*.cpp cpp/*.hpp cpp/bindings/*.cpp cpp/bindings/*.hpp)

PY_LINTED := python tests bench tools .ci/make_test.py

format:
	clang-format -i $(CPP_FILES)
	$(VPY) -m ruff format $(PY_LINTED)

# clang-tidy (.clang-tidy) needs a compilation database: build/lint is a CMake
# configuration made for it alone (FASTLOOP_DEBUG, so the debug-only code is
# checked too; nothing is compiled). It takes about a minute on 2 cores, so it
# runs again only when a C++ file or its configuration changed.
LINT_DIR := build/lint
$(LINT_DIR)/.tidy-ok: $(VENV)/.venv-ok $(CPP_FILES) .clang-tidy CMakeLists.txt tools/clang_tidy.py
	cmake -S . -B $(LINT_DIR) -G Ninja -DCMAKE_BUILD_TYPE=Debug -DFASTLOOP_DEBUG=ON \
	  -DPython_EXECUTABLE=$(abspath $(VPY)) -Dpybind11_DIR=$$($(VPY) -m pybind11 --cmakedir) > /dev/null
	$(VPY) tools/clang_tidy.py $(LINT_DIR) -j $$(nproc)
	@touch $@

lint: $(VENV)/.venv-ok
	$(VPY) -m ruff check $(PY_LINTED)
	$(VPY) -m ruff format --check $(PY_LINTED)
	clang-format --dry-run --Werror $(CPP_FILES)
	@$(MAKE) --no-print-directory $(LINT_DIR)/.tidy-ok

clean:
	rm -rf build dist $(VENV) $(addprefix .venv-,$(PY_VERSIONS))
