"""pytest plugin for `make sanitize`'s leak check (loaded with `-p lsan_plugin`).

- Writes pytest's exit status to $FASTLOOP_LSAN_DIR/pytest.exitstatus: a leak
  found at exit replaces the process's status with ASan's exitcode, and
  tools/lsan_check.py still needs to know whether the tests passed.
- With FASTLOOP_LSAN_BY_MODULE=1, runs LeakSanitizer after each test file
  (gc first) into $FASTLOOP_LSAN_DIR/after.NNN.<file>.*, so that
  tools/lsan_check.py can say after which test file a leak appeared. Each
  check scans the whole heap (about half a second), hence opt-in.
"""

from __future__ import annotations

import ctypes
import gc
import os
from pathlib import Path

import pytest

LOG_DIR = os.environ.get("FASTLOOP_LSAN_DIR")
BY_MODULE = os.environ.get("FASTLOOP_LSAN_BY_MODULE") == "1"
_seq = 0


def _sanitizer():
    lib = ctypes.CDLL(None)  # libasan is preloaded: its interface is global
    if not hasattr(lib, "__lsan_do_recoverable_leak_check"):
        return None
    return lib


def _checkpoint(name: str) -> None:
    global _seq
    lib = _sanitizer()
    if lib is None or LOG_DIR is None:
        return
    _seq += 1
    gc.collect()
    lib.__sanitizer_set_report_path(f"{LOG_DIR}/after.{_seq:03d}.{name}".encode())
    lib.__lsan_do_recoverable_leak_check()
    lib.__sanitizer_set_report_path(f"{LOG_DIR}/log".encode())


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_teardown(item, nextitem):
    yield  # fixtures of a finished module are torn down by now
    if BY_MODULE and (nextitem is None or nextitem.path != item.path):
        _checkpoint(item.path.stem.replace(".", "_"))


def pytest_sessionfinish(session, exitstatus):
    if LOG_DIR is not None:
        Path(LOG_DIR, "pytest.exitstatus").write_text(f"{int(exitstatus)}\n")
