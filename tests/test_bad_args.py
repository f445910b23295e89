"""Bad arguments get the exception asyncio gives (type, and message where asyncio's is
stable), never a crash, a hang or a silently accepted call.

Errors on a closed loop are in test_run.py (test_api_on_a_closed_loop), fd errors in
test_fd_watchers.py and signal errors in test_signals.py; a few are repeated here so
that this file lists the argument checks in one place.
"""

import asyncio
import contextvars
import datetime
import os
import signal
import socket
from decimal import Decimal

import pytest

from .conftest import new_loop, run_briefly


async def coroutine_function():
    pass


def not_callable_calls(loop):
    return {
        "call_soon": lambda cb: loop.call_soon(cb),
        "call_later": lambda cb: loop.call_later(1, cb),
        "call_at": lambda cb: loop.call_at(loop.time() + 1, cb),
        "call_soon_threadsafe": lambda cb: loop.call_soon_threadsafe(cb),
    }


@pytest.mark.parametrize("method", ["call_soon", "call_later", "call_at", "call_soon_threadsafe"])
def test_debug_not_callable(loop, method):
    # In debug mode asyncio checks the callback when it is scheduled.
    loop.set_debug(True)
    with pytest.raises(TypeError) as info:
        not_callable_calls(loop)[method](1)
    name = "call_at" if method == "call_later" else method
    assert str(info.value) == f"a callable object was expected by {name}(), got 1"


@pytest.mark.parametrize("method", ["call_soon", "call_later", "call_at", "call_soon_threadsafe"])
def test_debug_coroutine_function_as_callback(loop, method):
    loop.set_debug(True)
    with pytest.raises(TypeError) as info:
        not_callable_calls(loop)[method](coroutine_function)
    name = "call_at" if method == "call_later" else method
    assert str(info.value) == f"coroutines cannot be used with {name}()"
    coro = coroutine_function()
    try:
        with pytest.raises(TypeError, match="coroutines cannot be used with"):
            not_callable_calls(loop)[method](coro)
    finally:
        coro.close()


@pytest.mark.parametrize("method", ["call_soon", "call_later", "call_at", "call_soon_threadsafe"])
def test_not_callable_without_debug(loop, method, exc_handler_calls):
    # Without debug mode asyncio does not check the callback up front: calling it
    # fails when it runs, and the TypeError goes to the exception handler. Raising
    # TypeError at once (what debug mode does) is accepted as well: either way the
    # error is reported, never silently dropped or crashing.
    calls = {
        "call_soon": lambda: loop.call_soon(1),
        "call_later": lambda: loop.call_later(0.001, 1),
        "call_at": lambda: loop.call_at(loop.time() + 0.001, 1),
        "call_soon_threadsafe": lambda: loop.call_soon_threadsafe(1),
    }
    try:
        calls[method]()
    except TypeError:
        return
    loop.call_later(0.05, loop.stop)
    loop.run_forever()
    assert len(exc_handler_calls) == 1
    ctx = exc_handler_calls[0]
    assert isinstance(ctx["exception"], TypeError)
    assert ctx["message"].startswith("Exception in callback")
    exc_handler_calls.clear()


@pytest.mark.parametrize(
    "delay, message",
    [("x", None), (None, "delay must not be None"), (b"1", None), ([], None)],
    ids=["str", "None", "bytes", "list"],
)
def test_call_later_bad_delay(loop, delay, message):
    with pytest.raises(TypeError) as info:
        loop.call_later(delay, print)
    if message:
        assert str(info.value) == message


def test_call_at_none(loop):
    with pytest.raises(TypeError, match="^when cannot be None$"):
        loop.call_at(None, print)


@pytest.mark.parametrize("method", ["call_soon", "call_later", "call_at", "call_soon_threadsafe"])
def test_unknown_keyword_argument(loop, method):
    calls = {
        "call_soon": lambda: loop.call_soon(print, bogus=1),
        "call_later": lambda: loop.call_later(1, print, bogus=1),
        "call_at": lambda: loop.call_at(1, print, bogus=1),
        "call_soon_threadsafe": lambda: loop.call_soon_threadsafe(print, bogus=1),
    }
    with pytest.raises(TypeError, match="bogus"):
        calls[method]()


@pytest.mark.parametrize("method", ["call_soon", "call_later", "call_at", "call_soon_threadsafe"])
def test_missing_arguments(loop, method):
    calls = {
        "call_soon": lambda: loop.call_soon(),
        "call_later": lambda: loop.call_later(1),
        "call_at": lambda: loop.call_at(1),
        "call_soon_threadsafe": lambda: loop.call_soon_threadsafe(),
    }
    with pytest.raises(TypeError):
        calls[method]()


def test_context_passed_positionally_is_an_argument(loop):
    # context is keyword-only: a Context passed positionally is just an argument.
    ctx = contextvars.copy_context()
    got = []
    loop.call_soon(lambda *a: got.append(a), ctx)
    run_briefly(loop)
    assert got == [(ctx,)]


def test_create_task_with_non_coroutine(loop):
    for bad in (1, None, "coro", coroutine_function, asyncio.sleep):
        with pytest.raises(TypeError, match="a coroutine was expected"):
            loop.create_task(bad)


def test_create_task_with_future(loop):
    fut = loop.create_future()
    with pytest.raises(TypeError, match="a coroutine was expected"):
        loop.create_task(fut)
    fut.cancel()


@pytest.mark.parametrize("bad", [1, None, "x", print], ids=["int", "None", "str", "function"])
def test_run_until_complete_with_non_awaitable(loop, bad):
    with pytest.raises(
        TypeError, match="An asyncio.Future, a coroutine or an awaitable is required"
    ):
        loop.run_until_complete(bad)
    assert not loop.is_running()


def test_run_until_complete_future_of_another_loop(loop, loop_name):
    other = new_loop(loop_name)
    try:
        fut = other.create_future()
        with pytest.raises(ValueError, match="The future belongs to a different loop"):
            loop.run_until_complete(fut)
    finally:
        other.close()


@pytest.mark.parametrize("bad", [1, "handler", object()], ids=["int", "str", "object"])
def test_set_exception_handler_not_callable(loop, bad):
    with pytest.raises(TypeError) as info:
        loop.set_exception_handler(bad)
    assert str(info.value) == f"A callable object or None is expected, got {bad!r}"


def test_set_task_factory_not_callable(loop):
    with pytest.raises(TypeError, match="task factory must be a callable or None"):
        loop.set_task_factory("factory")


def test_add_signal_handler_invalid(loop):
    with pytest.raises(ValueError, match="invalid signal number 0"):
        loop.add_signal_handler(0, print)
    with pytest.raises(TypeError, match="sig must be an int"):
        loop.add_signal_handler("SIGINT", print)
    with pytest.raises(RuntimeError, match="cannot be caught"):
        loop.add_signal_handler(signal.SIGKILL, print)


def test_add_reader_negative_fd(loop):
    with pytest.raises(ValueError, match="Invalid file descriptor: -1"):
        loop.add_reader(-1, print)
    with pytest.raises(ValueError, match="Invalid file descriptor: -1"):
        loop.add_writer(-1, print)


def test_add_reader_not_a_file(loop):
    with pytest.raises(ValueError, match="Invalid file object"):
        loop.add_reader(None, print)


def test_run_in_executor_bad_executor(loop):
    with pytest.raises(AttributeError):
        loop.run_in_executor(object(), print)


def test_set_default_executor_bad(loop):
    with pytest.raises(TypeError, match="executor must be ThreadPoolExecutor"):
        loop.set_default_executor(None)


def test_handle_methods_take_no_arguments(loop):
    h = loop.call_soon(print)
    with pytest.raises(TypeError):
        h.cancel(1)
    with pytest.raises(TypeError):
        h.cancelled(1)
    t = loop.call_later(1, print)
    with pytest.raises(TypeError):
        t.when(1)
    h.cancel()
    t.cancel()


# -- issue 9, item 16 ----------------------------------------------------------------------


class _FloatOnly:
    """Converts to float (as numpy-like scalars do) but cannot be added to one."""

    def __float__(self):
        return 1.5


class _IndexOnly:
    def __index__(self):
        return 2


# asyncio's call_later is call_at(self.time() + delay): a delay that a float cannot be
# added to is refused with the TypeError of that addition, and an int too large for a
# float with its OverflowError. (The delays it accepts are in test_timers.py.)
REFUSED_DELAYS = {
    "Decimal": (Decimal("1.5"), TypeError),
    "__float__ only": (_FloatOnly(), TypeError),
    "__index__ only": (_IndexOnly(), TypeError),
    "timedelta": (datetime.timedelta(seconds=1), TypeError),
    "10**400": (10**400, OverflowError),
    "-10**400": (-(10**400), OverflowError),
}


@pytest.mark.parametrize("delay, exc_type", REFUSED_DELAYS.values(), ids=REFUSED_DELAYS)
def test_call_later_refuses_what_does_not_add_to_a_float(loop, delay, exc_type):
    """issue 9, item 16: call_later(Decimal('1.5'), cb) raises TypeError on asyncio's
    loop; fastloop converted anything with __float__ or __index__."""
    with pytest.raises(exc_type):
        loop.call_later(delay, print)
    # Nothing was scheduled.
    out = []
    loop.call_soon(out.append, "soon")
    run_briefly(loop)
    assert out == ["soon"]


BIG = 2**64

# id -> (keyword arguments, None if accepted else (exception, asyncio's message or None))
WRITE_BUFFER_LIMITS = {
    "high=2**64": (dict(high=BIG), None),
    "low=2**64": (dict(low=BIG), None),
    "high=2**64,low=2**63": (dict(high=BIG, low=2**63), None),
    "high=2**63": (dict(high=2**63), None),
    "high=2**63-1": (dict(high=2**63 - 1), None),
    "high=10**30,low=10**29": (dict(high=10**30, low=10**29), None),
    "high=True": (dict(high=True), None),
    "high=0": (dict(high=0), None),
    "low=0": (dict(low=0), None),
    "defaults": (dict(high=None, low=None), None),
    "high=-1": (dict(high=-1), (ValueError, "high (-1) must be >= low (-1) must be >= 0")),
    "high=-3": (dict(high=-3), (ValueError, "high (-3) must be >= low (-1) must be >= 0")),
    "low=-1": (dict(low=-1), (ValueError, "high (-4) must be >= low (-1) must be >= 0")),
    "high<low": (dict(high=10, low=20), (ValueError, "high (10) must be >= low (20) must be >= 0")),
    "high=-2**64": (
        dict(high=-BIG),
        (ValueError, f"high ({-BIG}) must be >= low ({-BIG // 4}) must be >= 0"),
    ),
    "low=-2**64": (
        dict(low=-BIG),
        (ValueError, f"high ({-4 * BIG}) must be >= low ({-BIG}) must be >= 0"),
    ),
    "high=10,low=-2**64": (
        dict(high=10, low=-BIG),
        (ValueError, f"high (10) must be >= low ({-BIG}) must be >= 0"),
    ),
    "high=str": (dict(high="x"), (TypeError, None)),
    "low=str": (dict(low="x"), (TypeError, None)),
}


def expected_limits(high=None, low=None):
    """get_write_buffer_limits() after set_write_buffer_limits(high, low) on asyncio."""
    if high is None:
        high = 64 * 1024 if low is None else 4 * low
    if low is None:
        low = high // 4
    return (low, high)


async def _write_transports(loop):
    """A TCP transport and a write-pipe transport, each with a peer that never reads,
    and a function that closes them all."""
    a, b = socket.socketpair()
    tcp, tcp_pr = await loop.create_connection(asyncio.Protocol, sock=a)
    r, w = os.pipe()
    pipe, pipe_pr = await loop.connect_write_pipe(asyncio.Protocol, os.fdopen(w, "wb"))

    async def close():
        tcp.abort()
        pipe.abort()
        await asyncio.sleep(0.01)
        b.close()
        os.close(r)

    return {"tcp": tcp, "pipe": pipe}, close


@pytest.mark.timeout(30)
@pytest.mark.parametrize("kwargs, error", WRITE_BUFFER_LIMITS.values(), ids=WRITE_BUFFER_LIMITS)
def test_set_write_buffer_limits_int_values(loop, kwargs, error):
    """issue 9, item 16: set_write_buffer_limits takes any int, as asyncio's transports
    do (fastloop raised OverflowError for high=2**64 and for hugely negative values,
    where asyncio raises ValueError), and reports the limits it was given."""

    async def main():
        transports, close = await _write_transports(loop)
        results = {}
        try:
            for kind, tr in transports.items():
                try:
                    tr.set_write_buffer_limits(**kwargs)
                except Exception as exc:
                    results[kind] = exc
                else:
                    results[kind] = tr.get_write_buffer_limits()
        finally:
            await close()
        return results

    results = loop.run_until_complete(main())
    for kind, got in results.items():
        if error is None:
            assert got == expected_limits(**kwargs), kind
        else:
            exc_type, message = error
            assert type(got) is exc_type, (kind, got)
            if message is not None:
                assert str(got) == message, kind


@pytest.mark.timeout(30)
def test_huge_write_buffer_limit_never_pauses_writing(loop):
    """issue 9, item 16: with high=2**64 nothing a program can queue pauses the
    protocol; with the default limits the same writes do."""

    class Recorder(asyncio.Protocol):
        def __init__(self):
            self.paused = 0

        def pause_writing(self):
            self.paused += 1

    async def main():
        a, b = socket.socketpair()
        try:
            tr, pr = await loop.create_connection(Recorder, sock=a)
            tr.set_write_buffer_limits(high=2**64)
            for _ in range(64):
                tr.write(b"x" * 65536)  # 4 MiB: more than the kernel buffers hold
            await asyncio.sleep(0.01)
            huge = (pr.paused, tr.get_write_buffer_size() > 0)
            tr.set_write_buffer_limits()
            default = pr.paused
            tr.abort()
            await asyncio.sleep(0.01)
            return huge, default
        finally:
            b.close()

    (paused, buffered), paused_after_reset = loop.run_until_complete(main())
    assert buffered, "the peer's buffers took everything: the test proves nothing"
    assert paused == 0
    assert paused_after_reset == 1


FLOAT_LIMITS = {
    "high=1.5": dict(high=1.5),
    "high=100.0,low=10.0": dict(high=100.0, low=10.0),
    "low=2.5": dict(low=2.5),
    "high=inf,low=0": dict(high=float("inf"), low=0),
    "high=nan": dict(high=float("nan")),
    "high=inf": dict(high=float("inf")),
}


@pytest.mark.timeout(30)
@pytest.mark.parametrize("kwargs", FLOAT_LIMITS.values(), ids=FLOAT_LIMITS)
def test_set_write_buffer_limits_float_values(loop, loop_name, kwargs):
    """issue 9, item 16 (floats): asyncio's transports compare whatever they are given,
    so floats are accepted (and nan, or inf without low, refused with ValueError). A
    byte count is an int: refusing every float with TypeError is the stricter error the
    issue allows for fastloop; otherwise it must do what asyncio does."""

    async def main():
        transports, close = await _write_transports(loop)
        results = {}
        try:
            for kind, tr in transports.items():
                try:
                    tr.set_write_buffer_limits(**kwargs)
                except Exception as exc:
                    results[kind] = type(exc)
                else:
                    results[kind] = tr.get_write_buffer_limits()
        finally:
            await close()
        return results

    results = loop.run_until_complete(main())
    high, low = kwargs.get("high"), kwargs.get("low")
    if high is None:
        high = 4 * low
    if low is None:
        low = high // 4
    asyncio_result = (low, high) if high >= low >= 0 else ValueError
    for kind, got in results.items():
        if loop_name == "fastloop" and got is TypeError:
            continue  # the stricter error, see the docstring
        if asyncio_result is ValueError:
            assert got is ValueError, kind
        else:
            assert got == asyncio_result, kind
