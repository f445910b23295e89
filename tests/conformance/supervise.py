"""Run one test module on one loop in child processes, surviving hangs and crashes.

The child (child.py) says when each test starts and ends. If a test outlives
the timeout the child is asked to dump its stacks into the log (SIGUSR2,
faulthandler), then killed, and the test is a HANG; if the
child dies inside a test, that test is a CRASH. Either way a new child resumes
the module, skipping every test that already has a result.
"""

from __future__ import annotations

import json
import os
import re
import select
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
BAD = ("fail", "error", "hang", "crash")
# Seconds a hung child gets to dump its stacks before it is killed.
DUMP_WAIT = 0.5
MAX_ATTEMPTS = 50

# Children alive now, so an interrupted runner leaves none behind.
_live: set[_Child] = set()
_live_lock = threading.Lock()
_stopping = threading.Event()


def stop_all():
    """Kill every child and start no more (Ctrl-C, SIGTERM)."""
    _stopping.set()
    with _live_lock:
        for child in list(_live):
            child.kill()


@dataclass
class ModuleRun:
    loop: str
    module: str
    results: dict[str, dict] = field(default_factory=dict)  # test id -> "end" event
    fixtures: list[dict] = field(default_factory=list)  # failures outside tests
    hooked: list[str] = field(default_factory=list)
    loop_types: list[str] = field(default_factory=list)  # classes of the loops made
    attempts: int = 0
    secs: float = 0.0
    log: str = ""

    def rows(self) -> list[dict]:
        """Every outcome of the module: its tests, then fixture failures."""
        return list(self.results.values()) + self.fixtures


def _frames(block: list[str], n: int = 3) -> str:
    """'file:line func' of the innermost n frames of one faulthandler thread block."""
    out = []
    for line in block:
        m = re.match(r'\s+File "(.+)", line (\d+) in (\S+)', line)
        if m:
            out.append(f"{Path(m[1]).name}:{m[2]} {m[3]}")
        if len(out) == n:
            break
    return " <- ".join(out)


def _diagnose(log_tail: str, hang: bool) -> str:
    """One line from what faulthandler wrote: the error and where the main thread was."""
    lines = log_tail.splitlines()
    blocks: list[list[str]] = []
    head = ""
    for line in lines:
        if line.startswith("Fatal Python error") and not head:
            head = line.strip()
        if re.match(r"(Current thread|Thread) 0x[0-9a-f]+", line):
            blocks.append([])
        elif blocks and line.startswith("  File"):
            blocks[-1].append(line)
        elif blocks and line.strip() and not line.startswith(" "):
            # The dump is over; what follows is other output.
            break
    # The main thread is the oldest, so faulthandler lists it last; on a crash
    # the crashing thread comes first, marked "Current thread".
    where = ""
    if blocks:
        current = [i for i, ln in enumerate(lines) if ln.startswith("Current thread")]
        where = _frames(blocks[0] if current and not hang else blocks[-1])
    if hang:
        return f"no result within the timeout; main thread at {where or '?'}"
    return f"{head or 'child died'}; at {where or '?'}"


def _not_run(test_id: str, why: str) -> dict:
    return {"id": test_id, "outcome": "crash", "detail": why, "tb": "", "on_loop": False}


class _Child:
    """One child process and the events it sent."""

    def __init__(self, run: ModuleRun, opts, skip: set[str], only: set[str] | None, workdir):
        self.run = run
        rfd, wfd = os.pipe()
        cmd = [sys.executable, "-u", "-m", "tests.conformance.child"]
        cmd += ["--loop", run.loop, "--module", run.module, "--events-fd", str(wfd)]
        for k in opts.k:
            cmd += ["-k", k]
        for flag, ids in (("--skip-file", skip), ("--only-file", only)):
            if ids is not None:
                path = Path(workdir) / f"{run.loop}-{run.module}-{flag[2:6]}.txt"
                path.write_text("".join(i + "\n" for i in sorted(ids)), encoding="utf-8")
                cmd += [flag, str(path)]
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
        with _live_lock, open(run.log, "ab") as log:
            if _stopping.is_set():
                os.close(wfd)
                os.close(rfd)
                raise KeyboardInterrupt
            self.proc = subprocess.Popen(
                cmd,
                cwd=workdir,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                pass_fds=(wfd,),
                start_new_session=True,
            )
            _live.add(self)
        os.close(wfd)
        self.events = os.fdopen(rfd, "r", encoding="utf-8")

    def dump_stacks_and_kill(self):
        try:
            os.kill(self.proc.pid, signal.SIGUSR2)
            self.proc.wait(DUMP_WAIT)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            pass
        self.kill()

    def kill(self):
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def _attempt(run: ModuleRun, opts, only, workdir, plan: list[str] | None):
    """Run one child until it finishes or dies; return (plan, progressed, finished)."""
    log_at = os.path.getsize(run.log) if os.path.exists(run.log) else 0
    child = _Child(run, opts, set(run.results), only, workdir)
    run.attempts += 1
    current, started = None, 0.0
    last_event = time.monotonic()
    progressed = finished = killed = False
    buf = ""
    fd = child.events.fileno()
    try:
        while True:
            now = time.monotonic()
            if current is not None:
                deadline = started + opts.timeout
            else:
                deadline = last_event + opts.timeout
            ready, _, _ = select.select([fd], [], [], max(0.0, deadline - now))
            if not ready:
                child.dump_stacks_and_kill()
                killed = True
                break
            chunk = os.read(fd, 65536).decode("utf-8", "replace")
            if not chunk:
                break
            buf += chunk
            *lines, buf = buf.split("\n")
            last_event = time.monotonic()
            for line in lines:
                ev = json.loads(line)
                kind = ev.pop("ev")
                if kind == "plan":
                    plan = plan if plan is not None else ev["ids"]
                    run.hooked = ev["hooked"]
                elif kind == "start":
                    current, started, log_at = ev["id"], time.monotonic(), ev["log_at"]
                elif kind == "end":
                    run.results[ev["id"]] = ev
                    current, progressed = None, True
                    if opts.verbose and ev["outcome"] in BAD:
                        print(f"  {run.loop} {ev['id']}: {ev['outcome'].upper()} {ev['detail']}")
                elif kind == "fixture":
                    run.fixtures.append(ev)
                elif kind == "done":
                    finished = True
                    run.loop_types = sorted(set(run.loop_types) | set(ev["loop_types"]))
    finally:
        child.events.close()
        rc = child.proc.wait()
        with _live_lock:
            _live.discard(child)
    if finished:
        if rc != 0:
            why = f"child exited with {_describe_rc(rc)} after its last test"
            run.fixtures.append(_not_run(f"{run.module} (interpreter exit)", why))
        return plan, progressed, True
    tail = Path(run.log).read_bytes()[log_at:].decode("utf-8", "replace")
    if current is not None:
        hang = killed
        detail = _diagnose(tail, hang)
        if not hang:
            detail = f"{_describe_rc(rc)}: {detail}"
        run.results[current] = {
            "id": current,
            "outcome": "hang" if hang else "crash",
            "detail": detail,
            "tb": tail[-6000:],
            "on_loop": False,
        }
        if opts.verbose:
            print(f"  {run.loop} {current}: {'HANG' if hang else 'CRASH'} {detail}")
        return plan, True, False
    where = "before its first test" if plan is None else "outside a test (in a fixture?)"
    if killed:
        why = f"child hung {where}: {_diagnose(tail, hang=True)}"
    else:
        last = [ln for ln in tail.splitlines() if ln.strip()]
        why = f"child died ({_describe_rc(rc)}) {where}: " + (last[-1] if last else "")
    row = _not_run(f"{run.module} (outside any test)", why[:300])
    row.update(outcome="hang" if killed else "crash", tb=tail[-6000:])
    run.fixtures.append(row)
    return plan, progressed, False


def _describe_rc(rc: int) -> str:
    if rc < 0:
        try:
            return f"signal {signal.Signals(-rc).name}"
        except ValueError:
            return f"signal {-rc}"
    return f"exit code {rc}"


def run_module(loop: str, module: str, opts, log_dir: str, only=None) -> ModuleRun:
    """Every selected test of `module` on `loop`, each with a result."""
    run = ModuleRun(loop, module, log=str(Path(log_dir) / f"{loop}-{module}.log"))
    t0 = time.monotonic()
    plan = None
    with tempfile.TemporaryDirectory(prefix=f"{loop}-{module}-", dir=log_dir) as workdir:
        while run.attempts < MAX_ATTEMPTS and not _stopping.is_set():
            plan, progressed, finished = _attempt(run, opts, only, workdir, plan)
            if finished or plan is None:
                break
            remaining = [i for i in plan if i not in run.results]
            if not remaining:
                break
            if not progressed:
                for test_id in remaining:
                    run.results[test_id] = _not_run(test_id, "not run: the child kept dying")
                break
    run.secs = time.monotonic() - t0
    return run
