"""Shared fixtures: every test in tests/test_*.py runs on both asyncio's loop and fastloop.

asyncio's own loop is the reference: a test asserts what asyncio does, so a failure on
the ``fastloop`` id alone is a behaviour difference of fastloop (a bug unless the test
says why).

The ``loop`` fixture's teardown fails the test when

- the loop's exception handler was called and the test did not take those calls out of
  ``exc_handler_calls`` (a test that expects calls inspects the list, then clears it);
- the loop left global state behind: a running loop, changed async-generator hooks,
  a signal wakeup fd, or Python-level signal handlers for SIGINT / SIGUSR1 / SIGUSR2.

A ``ResourceWarning`` (raised, or emitted from a ``__del__`` and so reported as an
"unraisable exception") fails the test as well; see ``pytest_collection_modifyitems``.
"""

import asyncio
import gc
import re
import signal
import sys
from pathlib import Path

import pytest

LOOP_NAMES = ["asyncio", "fastloop"]

_TESTS_DIR = Path(__file__).resolve().parent

# The signals whose Python-level handlers a test might change through the loop.
_WATCHED_SIGNALS = (signal.SIGINT, signal.SIGUSR1, signal.SIGUSR2)


def pytest_collection_modifyitems(config, items):
    """Turn ResourceWarning into a failure for our tests (not tests/conformance/).

    A ResourceWarning is usually emitted from a ``__del__``, where an exception cannot
    propagate: Python hands it to ``sys.unraisablehook`` and pytest reports it as a
    ``PytestUnraisableExceptionWarning``, so that warning is an error too.
    """
    for item in items:
        if Path(str(item.path)).resolve().parent != _TESTS_DIR:
            continue
        item.add_marker(pytest.mark.filterwarnings("error::ResourceWarning"))
        item.add_marker(
            pytest.mark.filterwarnings("error::pytest.PytestUnraisableExceptionWarning")
        )


def pytest_sessionfinish(session, exitstatus):
    """Hand the objects the ``loop`` fixture froze back to the garbage collector."""
    gc.unfreeze()


def debug_counters(name):
    """fastloop's live-object counters in its FASTLOOP_DEBUG build, else None."""
    if name != "fastloop":
        return None
    from fastloop import _core

    read = getattr(_core, "_debug_counters", None)
    return read() if read is not None else None


def new_loop(name):
    """A new, not-yet-current event loop of the named kind."""
    if name == "asyncio":
        # The default policy's loop (the autouse fixture below resets the policy).
        return asyncio.new_event_loop()
    if name == "fastloop":
        import fastloop

        return fastloop.new_event_loop()
    raise ValueError(name)


@pytest.fixture(autouse=True)
def _default_policy():
    """Every test starts and ends with asyncio's default event loop policy."""
    asyncio.set_event_loop_policy(None)
    yield
    asyncio.set_event_loop_policy(None)


@pytest.fixture(params=LOOP_NAMES)
def loop_name(request):
    """ "asyncio" or "fastloop": which loop the test runs on."""
    return request.param


@pytest.fixture
def _exc_calls():
    """The list the loop's recording exception handler appends contexts to."""
    return []


@pytest.fixture
def loop(loop_name, _exc_calls):
    """A new loop of each kind, current for the test; closed and checked in teardown."""
    old_hooks = sys.get_asyncgen_hooks()
    old_signals = {sig: signal.getsignal(sig) for sig in _WATCHED_SIGNALS}
    old_wakeup_fd = signal.set_wakeup_fd(-1)
    signal.set_wakeup_fd(old_wakeup_fd)
    calls = _exc_calls

    def record(lp, context):
        calls.append(context)

    # The garbage collector scans only what the test allocates: garbage left by
    # earlier tests is collected now, then everything alive is frozen (moved to the
    # permanent generation) for the rest of the session. A full collection per
    # test would cost more than most tests.
    gc.collect()
    gc.freeze()
    counters_before = debug_counters(loop_name)
    lp = new_loop(loop_name)
    lp.set_exception_handler(record)
    asyncio.set_event_loop(lp)
    problems = []
    try:
        yield lp
    finally:
        try:
            if lp.is_running():
                problems.append("the loop is still running after the test")
            elif not lp.is_closed():
                # As asyncio.run does: finalize async generators, join the default
                # executor, then close.
                try:
                    lp.run_until_complete(lp.shutdown_asyncgens())
                    lp.run_until_complete(lp.shutdown_default_executor())
                except Exception as exc:
                    problems.append(f"shutting the loop down failed: {exc!r}")
                finally:
                    lp.close()
        finally:
            asyncio.set_event_loop(None)
            # Drop a handler the test installed (and what it holds on to); record
            # what the collection below reports.
            lp.set_exception_handler(record)
            # Collect garbage now, so that unretrieved task/future exceptions are
            # reported to the handler and ResourceWarnings are emitted while this
            # test is current.
            gc.collect()

        counters_after = debug_counters(loop_name)
        if counters_before is not None:
            # The test's loops are closed and its garbage collected: the libuv
            # structures it created (fd watchers, loops) are gone. Handle objects
            # are left out: Python references decide their lifetime, and pytest
            # keeps some (log records of the test hold tracebacks that reach them).
            grown = {
                k: (v, counters_after[k])
                for k, v in counters_before.items()
                if k != "handles" and counters_after[k] > v
            }
            if grown:
                problems.append(f"fastloop debug counters grew (before, after): {grown}")
        if asyncio._get_running_loop() is not None:
            asyncio.events._set_running_loop(None)
            problems.append("a running loop is still set for this thread")
        if sys.get_asyncgen_hooks() != old_hooks:
            sys.set_asyncgen_hooks(*old_hooks)
            problems.append("sys.get_asyncgen_hooks() was not restored")
        wakeup_fd = signal.set_wakeup_fd(old_wakeup_fd)
        if wakeup_fd != old_wakeup_fd:
            problems.append(f"signal.set_wakeup_fd({wakeup_fd}) left set after close()")
        for sig, handler in old_signals.items():
            if signal.getsignal(sig) != handler:
                signal.signal(sig, handler)
                problems.append(f"Python handler of {signal.Signals(sig).name} not restored")
        if calls:
            shown = "\n".join(f"  {ctx!r}" for ctx in calls)
            problems.append(f"unexpected call(s) of the loop's exception handler:\n{shown}")
        if problems:
            pytest.fail(f"loop teardown ({loop_name}): " + "; ".join(problems), pytrace=False)


@pytest.fixture
def exc_handler_calls(loop, _exc_calls):
    """The contexts passed to the loop's exception handler so far, in order.

    A test that expects calls asserts on this list and then clears it; whatever is
    left in it at teardown fails the test.
    """
    return _exc_calls


def run_briefly(loop, iterations=1):
    """Run the loop for a few iterations (stop() before run_forever() runs exactly one)."""
    for _ in range(iterations):
        loop.stop()
        loop.run_forever()


# -- real services (tests/services.py) ------------------------------------------------------


@pytest.fixture(scope="session")
def postgres_server():
    """A PostgreSQL server of this session, on a Unix socket in a temp dir (started on
    first use, stopped at the end of the session)."""
    from . import services

    server, stop = services.start_postgres()
    try:
        yield server
    finally:
        stop()


@pytest.fixture(scope="session")
def redis_server():
    """A Redis server of this session, on a Unix socket in a temp dir (started on first
    use, stopped at the end of the session)."""
    from . import services

    server, stop = services.start_redis()
    try:
        yield server
    finally:
        stop()


@pytest.fixture
def service_name(request, loop_name):
    """A name unique to this test and loop, usable as a database name or key prefix:
    lower-case letters, digits and underscores."""
    name = f"{request.node.originalname}_{loop_name}".lower()
    return re.sub(r"[^a-z0-9_]", "_", name)[:60]
