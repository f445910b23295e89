"""The bounded random driver of the loop and transport API, on both loops, compared.

tests/fuzz_ops.py draws a seeded sequence of operations: the public API of
the loop, of stream / pipe / datagram transports, servers and handles,
called with wrong types and edge values (negative, huge, NaN, inf, -0.0,
bool, None, str/bytes for numbers, objects with odd ``__float__`` /
``__index__`` / ``__fspath__`` / ``fileno``), on closed and never-opened
fds, and on targets in every state (a fresh, running, stopped or closed
loop; open, paused, closing, closed, aborted, half-closed transports; used
after ``loop.close()``). tests/fuzz_driver.py runs them on one loop in a
child process; tests/fuzz_compare.py runs both loops and compares.

The test fails on a crash or hang of either child, and on any operation
whose outcome (exception class and errno, a compared return value, the
callbacks, protocol events and exception handler calls that follow, the
bytes the peer got, fds or signal handlers left behind) differs from
asyncio's, unless ALLOWED below explains it. The report names the seed,
groups the differences and gives each a one-line replay, e.g.
``python -m tests.fuzz_driver --loop fastloop --seed 20251 --count 2500
--only 17`` (from the repository root; ``--loop asyncio`` for the
reference), which prints the operation, its record and the tracebacks.

Other seeds and lengths: ``FASTLOOP_FUZZ_SEED=7 FASTLOOP_FUZZ_COUNT=5000
python -m pytest tests/test_api_fuzz.py``, or without pytest:
``python -m tests.fuzz_compare --seed 7 --count 5000``.

Not on the ``loop`` fixture: each loop runs in a child process of its own (a
crash must not take pytest down) and this test compares the two.
"""

import os
import tempfile

import pytest

from .fuzz_compare import Allowed, compare, exit_failures, format_report, run_both
from .fuzz_ops import generate

SEED = int(os.environ.get("FASTLOOP_FUZZ_SEED", "20251"))
COUNT = int(os.environ.get("FASTLOOP_FUZZ_COUNT", "2500"))
# The wall-clock bound of the children (restarts after crashes included).
BUDGET = float(os.environ.get("FASTLOOP_FUZZ_BUDGET", "90"))

# Argument kinds, as fuzz_ops.kind_of() names them.
NONCALLABLE = {"int", "None", "str", "Opaque", "<coro>"}
NOT_A_REAL_NUMBER = {"str", "bytes", "None", "complex", "list", "Decimal", "Opaque", "BoolRaises"}
NOT_A_REAL_NUMBER |= {"FloatRaises", "FloatReturnsStr", "IntLike", "IndexRaises"}
BAD_FD = {"negative-int", "huge-int", "huge-negative-int"}
CALL_METHODS = ("call_soon", "call_soon_threadsafe", "call_later", "call_at")

# Where fastloop may do other than asyncio's loop: Allowed(method, argument,
# its kinds, asyncio's outcome(s), fastloop's outcome(s), why, state=,
# target=). An outcome is a prefix of the record's "out" ("ok",
# "raise:TypeError"...). An allowance covers the outcome and the callbacks
# and handler calls that follow from it, nothing else.
ALLOWED = [
    # Stricter: an error up front for input asyncio takes and fails on later.
    *[
        Allowed(m, "callback", NONCALLABLE, "ok", "raise:TypeError", "README: non-callables")
        for m in CALL_METHODS
    ],
    *[
        Allowed(
            m,
            "callback",
            {"<coro_fn>"},
            "ok",
            "raise:TypeError",
            "a coroutine function is rejected as asyncio does in debug mode",
        )
        for m in CALL_METHODS
    ],
    Allowed(
        "call_at",
        "when",
        NOT_A_REAL_NUMBER | {"FloatLike", "IndexLike"},
        "ok",
        ("raise:TypeError", "raise:InvalidOperation"),
        "asyncio stores any deadline; its heap comparisons (with other timers) or its next "
        "iteration fail on it. fastloop compares it with a float at once: the same error",
    ),
    Allowed(
        "call_later",
        "delay",
        {"complex"},
        "ok",
        "raise:TypeError",
        "asyncio adds a complex delay to time() and stores the complex deadline",
    ),
    Allowed(
        "set_write_buffer_limits",
        None,
        None,
        ("ok", "raise:ValueError"),
        "raise:TypeError",
        "limits must be ints; asyncio compares whatever it gets",
    ),
    *[
        Allowed(
            m,
            "fd",
            BAD_FD,
            "ok",
            ("raise:TypeError", "raise:ValueError"),
            "an fd that can never be watched; asyncio looks it up and returns False",
        )
        for m in ("remove_reader", "remove_writer")
    ],
    Allowed(
        "write",
        "data",
        {"<mv_strided>"},
        ("ok", "raise:RuntimeError"),
        "raise:BufferError",
        "a non-contiguous buffer, which asyncio drops (closing) or fails to send later",
    ),
    Allowed(
        "sendto",
        "data",
        {"<mv_released>"},
        ("ok", "raise:AttributeError"),
        "raise:ValueError",
        "a released memoryview: fastloop refuses it at once; asyncio 3.13, which no "
        "longer tests `not data`, fails the send and closes the transport",
        target="udp",
        effects=("fx", "handler"),
    ),
    # asyncio's own bugs.
    Allowed(
        "write",
        "data",
        {"str", "int", "None", "float", "list", "tuple", "Opaque", "<array>"},
        "raise:AssertionError",
        "raise:TypeError",
        "asyncio's write pipe checks the type with assert (nothing under -O)",
        target="wpipe",
    ),
    Allowed(
        "write",
        "data",
        {"<mv_2d>", "<mv_int32>"},
        "ok",
        "ok",
        "asyncio's write pipe counts a memoryview by len(), not nbytes: AssertionErrors",
        target="wpipe",
        effects=("peer_got",),
    ),
    Allowed(
        "sock_sendall",
        "data",
        {"<mv_2d>", "<mv_int32>"},
        ("ok", "raise:", "timeout"),
        "ok",
        "asyncio's sock_sendall compares the bytes sent with len() of the memoryview",
    ),
    # 3.12 gave the selector loop's stream transport a writelines() of its own
    # (selector_events._SelectorSocketTransport.writelines, with sendmsg()).
    Allowed(
        "writelines",
        "list_of_data",
        {"list", "tuple", "<gen_data>"},
        "raise:TypeError",
        "ok",
        "asyncio 3.12+: writelines() after close() or a lost connection calls the write "
        "callback close() cleared ('NoneType' object is not callable); 3.11's, like "
        "write(), returns",
        state=("closing", "closed", "aborted", "peer_closed"),
    ),
    Allowed(
        "writelines",
        "list_of_data",
        {"list", "tuple", "<gen_data>"},
        "ok",
        "ok",
        "asyncio 3.12+: writelines() counts what sendmsg() sent in bytes against len() of "
        "each memoryview (items, not bytes): IndexError in _adjust_leftover_buffer, and "
        "the connection is lost",
        desc_has=("<mv_2d", "<mv_int32"),
    ),
    Allowed(
        "abort",
        None,
        None,
        ("ok", "raise:AttributeError"),
        "ok",
        "abort() after close() on asyncio's write pipe: a 2nd connection_lost fails on None",
        target="wpipe",
        state=("closing", "closed", "peer_closed"),
    ),
    Allowed(
        "@peer_send",
        None,
        None,
        "ok",
        ("raise:BrokenPipeError", "raise:ConnectionResetError"),
        "README: loop.close() closes the sockets of stream transports still open",
        state="loop_closed",
    ),
    # After loop.close(), issue 9 allows RuntimeError('Event loop is closed').
    Allowed(
        "*",
        None,
        None,
        ("ok", "raise:"),
        "raise:RuntimeError",
        "issue 9: a transport, server or pipe used after loop.close() may raise RuntimeError "
        "(fastloop has closed a stream transport's socket then: README, known differences)",
        state="loop_closed",
        effects=("peer_got",),
    ),
]


@pytest.mark.timeout(BUDGET + 60)
def test_api_fuzz():
    with tempfile.TemporaryDirectory(prefix="fastloop-fuzz-") as workdir:
        results = run_both(SEED, COUNT, workdir, BUDGET)
    diffs, allowed, compared = compare(results, ALLOWED)
    report = format_report(SEED, COUNT, results, diffs, allowed, compared)
    print(report)
    assert not diffs, report
    assert not exit_failures(results), report
    # Both children got through (nearly) all operations: a driver that
    # compares little proves little.
    assert compared >= COUNT * 0.9, report


def test_driver_is_deterministic():
    """The same seed draws the same operations (what lets two processes compare)."""

    def draw():
        seen = []
        generate(SEED, 300, lambda i, op: seen.append(op.describe()))
        return seen

    first = draw()
    assert len(first) == 300
    assert draw() == first
