"""`make test`: every phase on every supported Python found, each within a time limit.

Run by the Makefile's `test` target with the interpreter $(PYTHON) names (any
Python 3.8+; the standard library only). Phases are make targets:

1. `venv` (the main venv, .venv, of $(PYTHON)), alone: the others depend on it;
2. two at a time, as nothing timing-sensitive runs yet: `build`, `build-3.12`
   (the venv .venv-3.12 and the build) for each other version found, the
   ASan+UBSan build (`sanitize-build`) and `lint`, then `wheel`, `wheel-3.12`...
   (each waits for its version's build, whose build directory it reuses: only
   the packaging and `auditwheel repair` are left, a few seconds);
3. one after the other (the suites have timing-sensitive tests): `pytest`,
   `sanitize` and `conformance` on the main Python, then `pytest-3.12` and
   `conformance-3.12` for each other version.

A phase that outlives its limit is stopped: its pytest processes get SIGABRT
first (pytest's faulthandler prints where every thread was), then the whole
phase SIGTERM (the conformance runner kills its children), then SIGKILL. A
phase whose prerequisite failed does not run; a version with no interpreter
(.ci/find_python) is SKIPPED. At the end: a line per phase and a line per
Python version. The output of phases run two at a time is in build/make-test/
(printed when one fails); the others print as they run and are logged there
too. Exit status 0 when every phase that ran passed.
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LOG_DIR = ROOT / "build" / "make-test"

# Seconds each kind of phase may take: several times what it takes on a
# 2-core machine (a fresh venv downloads its packages), so only a hang hits it.
LIMITS = {
    "venv": 900,
    "build": 900,
    "wheel": 900,
    "sanitize-build": 900,
    "lint": 600,
    "pytest": 480,
    "sanitize": 900,
    "conformance": 600,
}
TERM_WAIT = 10  # seconds between SIGTERM and SIGKILL of a stopped phase
DUMP_WAIT = 3  # seconds the pytest processes get to print their stacks

_print_lock = threading.Lock()
# The phases running now, so that an interrupted make test leaves none behind.
_live: set[subprocess.Popen] = set()
_live_lock = threading.Lock()
_stopping = threading.Event()


def say(text: str = "") -> None:
    with _print_lock:
        print(text, flush=True)


class Phase:
    def __init__(self, kind: str, version: str, target: str, needs=()):
        self.kind = kind
        self.version = version
        self.target = target
        self.needs = list(needs)
        self.limit = LIMITS[kind]
        self.status = "not run"  # ok, FAILED, TIMEOUT, not run
        self.why = ""
        self.secs = 0.0
        self.result = ""
        self.log = LOG_DIR / f"{target}.log"
        # Set when run() returns: a phase run two at a time waits for its needs.
        self.finished = threading.Event()

    @property
    def name(self) -> str:
        return f"{self.kind} {self.version}"

    def run(self, make: list[str], live: bool) -> None:
        try:
            self._run(make, live)
        finally:
            self.finished.set()

    def _run(self, make: list[str], live: bool) -> None:
        # A need runs before this phase or alongside it (it was started first), so
        # waiting for it cannot deadlock the pool.
        for need in self.needs:
            need.finished.wait()
        blocked = [p for p in self.needs if p.status != "ok"]
        if blocked:
            self.why = f"{blocked[0].name} did not pass"
            return
        if live:
            say(f"\n==== {self.name}: make {self.target} (limit {self.limit} s) ====")
        started = time.monotonic()
        with open(self.log, "w", encoding="utf-8", errors="replace") as log:
            with _live_lock:
                if _stopping.is_set():
                    self.why = "interrupted"
                    return
                proc = subprocess.Popen(
                    [*make, "--no-print-directory", self.target],
                    cwd=ROOT,
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
                _live.add(proc)
            reader = threading.Thread(target=_copy, args=(proc.stdout, log, live), daemon=True)
            reader.start()
            try:
                rc = proc.wait(self.limit)
            except subprocess.TimeoutExpired:
                say(f"\n!!!! {self.name} outlived its limit of {self.limit} s: stopping it")
                _stop(proc)
                rc = None
            finally:
                with _live_lock:
                    _live.discard(proc)
            # A process the phase left behind may still hold the pipe open.
            reader.join(TERM_WAIT)
        self.secs = time.monotonic() - started
        if rc is None:
            self.status = "TIMEOUT"
            self.why = f"stopped after {self.limit} s"
        else:
            self.status = "ok" if rc == 0 else "FAILED"
        self.result = _result(self.kind, self.log.read_text(encoding="utf-8", errors="replace"))
        if not live:
            say(f"[{self.status}] {self.name} ({self.secs:.0f} s)")
            if self.status != "ok":
                tail = self.log.read_text(encoding="utf-8", errors="replace").splitlines()[-60:]
                say("\n".join(f"  | {line}" for line in tail))
                say(f"  (the whole output: {self.log.relative_to(ROOT)})")

    def line(self) -> str:
        text = f"{self.status:<8}{self.name:<22}"
        text += f"{self.secs:6.0f} s  " if self.status != "not run" else " " * 10
        return text + "  ".join(filter(None, (self.why, self.result)))


def _copy(src, log, live: bool) -> None:
    for raw in iter(src.readline, b""):
        line = raw.decode("utf-8", "replace")
        log.write(line)
        log.flush()
        if live:
            with _print_lock:
                sys.stdout.write(line)
                sys.stdout.flush()


def _group(pgid: int) -> list[tuple[int, str]]:
    """(pid, command line) of every live process in process group `pgid`."""
    members = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", encoding="utf-8", errors="replace") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                cmdline = f.read().replace(b"\0", b" ").decode("utf-8", "replace")
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":  # a zombie has gone already
            members.append((int(entry), cmdline))
    return members


def _stop(proc: subprocess.Popen) -> None:
    """Stop a phase that outlived its limit, saying first where it was."""
    pgid = proc.pid  # start_new_session: the phase's make leads its group
    pytests = [
        pid
        for pid, cmd in _group(pgid)
        if re.match(r"\S*python[\d.]*\s", cmd + " ") and " pytest" in cmd
    ]
    for pid in pytests:
        try:
            os.kill(pid, signal.SIGABRT)
        except ProcessLookupError:
            pass
    if pytests:
        time.sleep(DUMP_WAIT)
    # SIGTERM, then time for everyone in the group to go: ninja, for one, stops
    # the compilers it started in process groups of their own.
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(pgid, sig)
        except ProcessLookupError:
            proc.wait()
            return
        deadline = time.monotonic() + TERM_WAIT
        while time.monotonic() < deadline:
            if proc.poll() is not None and not _group(pgid):
                return
            time.sleep(0.2)


_PYTEST = re.compile(
    r"((?:\d+ (?:passed|failed|errors?|skipped|deselected|xfailed|xpassed|warnings?)"
    r"(?:, )?)+) in [\d.]+s"
)


_CONFORMANCE = re.compile(r"conformance: \w+ in \d+s \(Python [^;]*; (.*)\)$")
# "anyio suite: OK in 75s (asyncio 1160 passed; fastloop 1161 passed, 0 listed)"
_ANYIO = re.compile(r"anyio suite: \w+ in \d+s \((.*)\)$")


def _result(kind: str, output: str) -> str:
    """The one-line result of a phase, from its output."""
    lines = output.splitlines()
    if kind in ("pytest", "sanitize"):
        found = [m[1] for m in map(_PYTEST.search, lines) if m]
        text = found[-1] if found else "no pytest summary"
        if kind == "sanitize":
            lsan = [ln for ln in lines if ln.startswith("lsan:")]
            text += "; " + (lsan[-1].split(" in ")[0] if lsan else "no leak check")
        return text
    if kind == "conformance":
        # "conformance: OK in 58s (Python 3.11.7; asyncio 1672 passed; fastloop ...)"
        found = [m for m in map(_CONFORMANCE.match, lines) if m]
        text = found[-1][1] if found else "no conformance summary"
        anyio = [m for m in map(_ANYIO.match, lines) if m]
        if anyio:
            text += f"; anyio's suite: {anyio[-1][1]}"
        return text
    return ""


def _interpreter(version: str) -> tuple[str, str]:
    """(full version, "") of the Python `version` .ci/find_python finds, or ("", why not)."""
    found = subprocess.run(
        [str(ROOT / ".ci" / "find_python"), version], capture_output=True, text=True
    )
    if found.returncode != 0 or not found.stdout.strip():
        why = "; ".join(found.stderr.strip().splitlines()) or "none on PATH or in pyenv"
        return "", f"no usable python{version} ({why})"
    exe = found.stdout.strip()
    full = subprocess.run(
        [exe, "-c", "import sys; print(sys.version.split()[0])"], capture_output=True, text=True
    ).stdout.strip()
    return full, ""


def _interrupt():
    raise KeyboardInterrupt


def _minsec(secs: float) -> str:
    return f"{int(secs // 60)}m{int(secs % 60):02d}s"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog=".ci/make_test.py")
    p.add_argument("--make", default="make", help="the make command (the Makefile's $(MAKE))")
    p.add_argument("--versions", default="3.11 3.12 3.13", help="the supported Pythons")
    p.add_argument("-j", "--jobs", type=int, default=2, help="builds at a time")
    args = p.parse_args(argv)
    make = args.make.split()
    versions = args.versions.split()
    main_version = f"{sys.version_info[0]}.{sys.version_info[1]}"
    LOG_DIR.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()

    full = {main_version: sys.version.split()[0]}
    skipped = {}
    extra = []
    for v in versions:
        if v == main_version:
            continue
        full[v], why = _interpreter(v)
        if why:
            skipped[v] = why
        else:
            extra.append(v)
    if main_version not in versions:
        say(f"make test: PYTHON is Python {full[main_version]}, which fastloop does not support")
    say(
        f"make test: Python {full[main_version]} (.venv, with lint and the sanitizer run)"
        + "".join(f", {full[v]} (.venv-{v})" for v in extra)
        + "".join(f"; {v} SKIPPED: {why}" for v, why in skipped.items())
    )

    venv = Phase("venv", main_version, "venv")
    build = Phase("build", main_version, "build", [venv])
    san_build = Phase("sanitize-build", main_version, "sanitize-build", [venv])
    lint = Phase("lint", main_version, "lint", [venv])
    builds = {v: Phase("build", v, f"build-{v}") for v in extra}
    wheel = Phase("wheel", main_version, "wheel", [build])
    wheels = {v: Phase("wheel", v, f"wheel-{v}", [venv, builds[v]]) for v in extra}
    prepare = [build, *builds.values(), san_build, lint, wheel, *wheels.values()]
    tests = [
        Phase("pytest", main_version, "pytest", [build, wheel]),
        Phase("sanitize", main_version, "sanitize", [san_build]),
        Phase("conformance", main_version, "conformance", [build]),
    ]
    for v in extra:
        tests.append(Phase("pytest", v, f"pytest-{v}", [builds[v], wheels[v]]))
        tests.append(Phase("conformance", v, f"conformance-{v}", [builds[v]]))
    phases = [venv, *prepare, *tests]

    say(f"\n==== set-up: venv, then {', '.join(p.target for p in prepare)}, {args.jobs} at a time")
    # SIGTERM (a cancelled CI job) stops the phases as Ctrl-C does; they run in
    # sessions of their own, so neither reaches them by itself.
    signal.signal(signal.SIGTERM, lambda *_: _interrupt())
    pool = ThreadPoolExecutor(max_workers=max(1, args.jobs))
    try:
        venv.run(make, live=False)
        list(pool.map(lambda ph: ph.run(make, live=False), prepare))
        for phase in tests:
            phase.run(make, live=True)
    except KeyboardInterrupt:
        _stopping.set()
        with _live_lock:
            procs = list(_live)
        for proc in procs:
            _stop(proc)
        say("\nmake test: interrupted")
        return 130
    finally:
        pool.shutdown(wait=False, cancel_futures=True)

    wall = time.monotonic() - started
    say("\n==== make test: phases")
    for phase in phases:
        say(phase.line())
    say("\n==== make test: per Python version (pytest | conformance | its phases' time)")
    for v in versions + ([main_version] if main_version not in versions else []):
        if v in skipped:
            say(f"{v:<8}SKIPPED: {skipped[v]}")
            continue
        if v != main_version and v not in extra:
            continue
        mine = [ph for ph in phases if ph.version == v]
        cells = []
        for kind in ("pytest", "conformance"):
            ph = next(x for x in mine if x.kind == kind)
            if ph.status == "not run":
                cells.append(f"{kind} not run: {ph.why}")
            else:
                detail = "; ".join(filter(None, (ph.why, ph.result)))
                cells.append(f"{kind} {ph.status}: {detail} ({ph.secs:.0f} s)")
        spent = sum(ph.secs for ph in mine)
        say(f"{full[v]:<8}" + " | ".join(cells) + f" | {_minsec(spent)} in all")
    ok = all(ph.status == "ok" for ph in phases)
    say(f"\nmake test: {'OK' if ok else 'FAILED'} in {_minsec(wall)}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
