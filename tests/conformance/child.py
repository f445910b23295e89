"""One test module on one loop, in its own process; the runner is the parent.

Usage (the runner builds this command line):
    python -m tests.conformance.child --loop L --module M --events-fd FD
        [--skip-file F] [--only-file F] [-k SUBSTR ...]

Events go to the parent as JSON lines on --events-fd, flushed one by one so a
crash or a kill loses nothing that was already said:
    {"ev": "plan", "ids": [...], "hooked": [...]}   the selected tests, in run order
    {"ev": "start", "id": ..., "log_at": N}          N: the log's size, where its output starts
    {"ev": "end", "id": ..., "outcome": ..., "detail": ..., "tb": ..., "on_loop": bool, "secs": S}
    {"ev": "fixture", "id": ..., "outcome": ..., ...}  setUpClass/tearDownModule...
    {"ev": "done", "loop_types": [...]}              classes of the loops the factory made
stdout and stderr are the module's own noise; the parent logs them to a file.
SIGUSR2 makes faulthandler dump every thread's stack to stderr: the parent
sends it to a child that hangs before killing it, so the log says where.
"""

from __future__ import annotations

import argparse
import faulthandler
import importlib
import json
import os
import signal
import sys
import time
import unittest

from tests.conformance import loops

# Worst outcome wins when a test reports several (subtests, cleanups).
_RANK = {"pass": 0, "skip": 1, "fail": 2, "error": 3}


def _flatten(suite):
    for item in suite:
        if isinstance(item, unittest.TestSuite):
            yield from _flatten(item)
        else:
            yield item


def _last_line(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1].strip()[:300] if lines else ""


class EventResult(unittest.TestResult):
    """Reports each test to the parent as soon as it ends."""

    def __init__(self, emit):
        super().__init__()
        self._emit = emit
        self._current = None
        self._loops_seen = loops.created

    def _reset(self):
        self._outcome = "pass"
        self._detail = ""
        self._tb = ""

    def _record(self, test, outcome, detail="", tb=""):
        if isinstance(test, unittest.suite._ErrorHolder) or self._current is None:
            # A class or module fixture failed outside any test.
            self._emit(
                {"ev": "fixture", "id": test.id(), "outcome": outcome, "detail": detail, "tb": tb}
            )
            return
        if _RANK[outcome] >= _RANK[self._outcome]:
            if _RANK[outcome] > _RANK[self._outcome] or not self._detail:
                self._detail, self._tb = detail, tb
            self._outcome = outcome

    def _err(self, test, err, outcome):
        tb = self._exc_info_to_string(err, test)
        self._record(test, outcome, _last_line(tb), tb[-6000:])

    def startTest(self, test):
        super().startTest(test)
        self._begin(test)

    def _begin(self, test):
        self._current = test
        self._reset()
        self._started = time.monotonic()
        # Where this test's output starts in the log (stdout and stderr are it).
        sys.stdout.flush()
        sys.stderr.flush()
        self._emit({"ev": "start", "id": test.id(), "log_at": os.fstat(2).st_size})

    def _begin_skipped(self, test):
        # CPython 3.12 skips a skipped test (its class or method decorated) with
        # addSkip and stopTest but no startTest (3.11 and 3.13 call all three):
        # the test starts here then, or its skip would look like a fixture's.
        if self._current is not test and not isinstance(test, unittest.suite._ErrorHolder):
            self._begin(test)

    def stopTest(self, test):
        self._begin_skipped(test)
        super().stopTest(test)
        on_loop = loops.created != self._loops_seen
        self._loops_seen = loops.created
        self._emit(
            {
                "ev": "end",
                "id": test.id(),
                "outcome": self._outcome,
                "detail": self._detail,
                "tb": self._tb,
                "on_loop": on_loop,
                "secs": round(time.monotonic() - self._started, 3),
            }
        )
        self._current = None

    def addError(self, test, err):
        super().addError(test, err)
        self._err(test, err, "error")

    def addFailure(self, test, err):
        super().addFailure(test, err)
        self._err(test, err, "fail")

    def addSkip(self, test, reason):
        self._begin_skipped(test)
        super().addSkip(test, reason)
        self._record(test, "skip", str(reason)[:300])

    def addExpectedFailure(self, test, err):
        super().addExpectedFailure(test, err)

    def addUnexpectedSuccess(self, test):
        super().addUnexpectedSuccess(test)
        self._record(test, "fail", "unexpected success of an @expectedFailure test")

    def addSubTest(self, test, subtest, err):
        super().addSubTest(test, subtest, err)
        if err is not None:
            outcome = "fail" if issubclass(err[0], test.failureException) else "error"
            tb = self._exc_info_to_string(err, test)
            self._record(
                test, outcome, f"{subtest._subDescription()}: {_last_line(tb)}", tb[-6000:]
            )


def _read_ids(path):
    if not path:
        return None
    with open(path, encoding="utf-8") as f:
        return {line.strip() for line in f if line.strip()}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m tests.conformance.child")
    p.add_argument("--loop", required=True, choices=loops.LOOPS)
    p.add_argument("--module", required=True, help="test_asyncio module, or a dotted name")
    p.add_argument("--events-fd", type=int, required=True)
    p.add_argument("--skip-file")
    p.add_argument("--only-file")
    p.add_argument("-k", action="append", default=[])
    args = p.parse_args(argv)

    events = os.fdopen(args.events_fd, "w", encoding="utf-8", buffering=1)

    def emit(msg):
        events.write(json.dumps(msg) + "\n")
        events.flush()

    faulthandler.enable()
    faulthandler.register(signal.SIGUSR2, all_threads=True)
    # A runner started in the background (`cmd &`) inherits an ignored SIGINT;
    # test_runners sends SIGINT to itself and expects KeyboardInterrupt.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    factory = loops.install(args.loop)
    mod = importlib.import_module(loops.qualify(args.module))
    hooked, duplicates = loops.hook_create_event_loop(mod, factory)
    tests = list(_flatten(unittest.defaultTestLoader.loadTestsFromModule(mod)))
    skip, only = _read_ids(args.skip_file) or set(), _read_ids(args.only_file)
    tests = [
        t
        for t in tests
        if t.id() not in skip
        and type(t) not in duplicates
        and (only is None or t.id() in only)
        and (not args.k or any(k in t.id() for k in args.k))
    ]
    emit({"ev": "plan", "ids": [t.id() for t in tests], "hooked": hooked})
    # The result starts counting now: loops made at import belong to no test.
    result = EventResult(emit)
    unittest.TestSuite(tests).run(result)
    emit({"ev": "done", "loop_types": sorted(loops.created_types)})
    events.close()
    # Interpreter teardown still runs: a loop finalizer that crashes there is
    # a bug, and the parent reports a non-zero exit after "done".
    return 0


if __name__ == "__main__":
    sys.exit(main())
