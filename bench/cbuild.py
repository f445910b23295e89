"""Builds the C helpers of the echo and UDP benchmarks into bench/loadgen/bin/ (gitignored).

- ``loadgen``: the load generator (plain POSIX + epoll; no libuv), TCP, Unix and UDP.
- ``uv_echo``: the ceiling, a plain-C libuv echo server (system libuv via pkg-config).

``python -m bench`` calls ``ensure()`` at start-up when an echo or UDP round-trip row is selected;
a binary is rebuilt when it is missing or older than its source. Compiled with
``cc -O2 -Wall -Wextra``; warnings are shown (the sources compile warning-free).
``python -m bench.cbuild`` builds them by hand.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

SRC = Path(__file__).resolve().parent / "loadgen"
BIN = SRC / "bin"
CFLAGS = ["-O2", "-Wall", "-Wextra"]


def path(name: str) -> Path:
    return BIN / name


def _pkg_config(*args: str) -> list[str]:
    pc = shutil.which("pkg-config")
    if pc is None:
        raise RuntimeError("pkg-config not found (apt-get install pkg-config libuv1-dev)")
    proc = subprocess.run([pc, *args, "libuv"], capture_output=True, text=True, timeout=30)
    if proc.returncode != 0:
        raise RuntimeError(
            f"pkg-config {' '.join(args)} libuv failed: "
            f"{proc.stderr.strip() or 'no libuv'} (apt-get install libuv1-dev)"
        )
    return shlex.split(proc.stdout)


def _command(name: str, out: Path) -> list[str]:
    cc = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        raise RuntimeError("no C compiler (cc) found")
    src = str(SRC / f"{name}.c")
    if name == "uv_echo":
        return [cc, *CFLAGS, *_pkg_config("--cflags"), "-o", str(out), src, *_pkg_config("--libs")]
    return [cc, *CFLAGS, "-o", str(out), src]


def stale(name: str) -> bool:
    out, src = path(name), SRC / f"{name}.c"
    return not out.exists() or out.stat().st_mtime < src.stat().st_mtime


def problem(name: str) -> str | None:
    """Why the binary cannot be used (None if it can)."""
    if not path(name).exists():
        return f"{path(name)} is not built (python -m bench.cbuild)"
    if stale(name):
        return f"{path(name)} is older than {name}.c (python -m bench.cbuild)"
    return None


def build(name: str, log=print) -> str | None:
    """Build one helper if stale; returns None on success, else why it failed."""
    if not stale(name):
        return None
    BIN.mkdir(parents=True, exist_ok=True)
    tmp = BIN / f".{name}.{os.getpid()}.tmp"
    try:
        cmd = _command(name, tmp)
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    except (OSError, RuntimeError, subprocess.SubprocessError) as exc:
        return f"cannot build {name}: {exc}"
    try:
        if proc.returncode != 0:
            lines = (proc.stderr or proc.stdout).strip().splitlines()
            return f"cannot build {name}: {' | '.join(lines[-3:]) or 'compiler failed'}"
        if proc.stderr.strip():
            log(f"warning: building {name}:\n{proc.stderr.rstrip()}")
        os.replace(tmp, path(name))  # atomic: a concurrent run sees old or new, never half
        log(f"built {path(name)}: {shlex.join(cmd).replace(str(tmp), str(path(name)))}")
        return None
    finally:
        tmp.unlink(missing_ok=True)


def ensure(names: list[str], log=print) -> dict[str, str]:
    """Build the named helpers as needed; returns {name: why it failed} for failures."""
    failures = {}
    for name in names:
        why = build(name, log)
        if why:
            failures[name] = why
            log(f"note: {why}")
    return failures


if __name__ == "__main__":
    failed = ensure(["loadgen", "uv_echo"], log=lambda m: print(m, file=sys.stderr))
    raise SystemExit(1 if failed else 0)
