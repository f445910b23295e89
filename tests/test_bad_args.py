"""Bad arguments get the exception asyncio gives (type, and message where asyncio's is
stable), never a crash, a hang or a silently accepted call.

Errors on a closed loop are in test_run.py (test_api_on_a_closed_loop), fd errors in
test_fd_watchers.py and signal errors in test_signals.py; a few are repeated here so
that this file lists the argument checks in one place.
"""

import asyncio
import contextvars
import signal

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
