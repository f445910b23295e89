"""Errors from callbacks, tasks and futures reach the loop's exception handler with
asyncio's context keys; the default handler logs through the 'asyncio' logger."""

import asyncio
import contextvars
import gc
import logging
import sys

import pytest

from .conftest import new_loop, run_briefly


class Boom(Exception):
    pass


def raise_boom(*args):
    raise Boom(*args)


def test_exception_in_callback_goes_to_handler(loop, exc_handler_calls):
    out = []
    h = loop.call_soon(raise_boom, "x")
    loop.call_soon(out.append, "still runs")
    run_briefly(loop)
    assert out == ["still runs"]
    assert len(exc_handler_calls) == 1
    ctx = exc_handler_calls[0]
    assert ctx["message"].startswith("Exception in callback")
    assert "raise_boom" in ctx["message"]
    assert isinstance(ctx["exception"], Boom)
    assert ctx["exception"].args == ("x",)
    assert ctx["handle"] is h
    assert {"message", "exception", "handle"} <= set(ctx)
    exc_handler_calls.clear()


def test_exception_in_timer_goes_to_handler(loop, exc_handler_calls):
    h = loop.call_later(0.001, raise_boom)
    loop.call_later(0.01, loop.stop)
    loop.run_forever()
    assert len(exc_handler_calls) == 1
    ctx = exc_handler_calls[0]
    assert ctx["message"].startswith("Exception in callback")
    assert isinstance(ctx["exception"], Boom)
    assert ctx["handle"] is h
    exc_handler_calls.clear()


def test_exception_in_threadsafe_callback_goes_to_handler(loop, exc_handler_calls):
    h = loop.call_soon_threadsafe(raise_boom)
    run_briefly(loop)
    assert [c["handle"] for c in exc_handler_calls] == [h]
    assert isinstance(exc_handler_calls[0]["exception"], Boom)
    exc_handler_calls.clear()


def test_exception_has_traceback(loop, exc_handler_calls):
    loop.call_soon(raise_boom)
    run_briefly(loop)
    exc = exc_handler_calls[0]["exception"]
    assert exc.__traceback__ is not None
    exc_handler_calls.clear()


def test_custom_base_exception_goes_to_handler(loop, exc_handler_calls):
    # Only SystemExit and KeyboardInterrupt escape run_forever; any other
    # BaseException from a callback is reported like an Exception.
    class MyBase(BaseException):
        pass

    def raiser():
        raise MyBase()

    loop.call_soon(raiser)
    run_briefly(loop)
    assert [type(c["exception"]) for c in exc_handler_calls] == [MyBase]
    exc_handler_calls.clear()


def test_handler_is_called_with_loop_and_context(loop):
    calls = []
    loop.set_exception_handler(lambda lp, ctx: calls.append((lp, ctx)))
    loop.call_soon(raise_boom)
    run_briefly(loop)
    assert len(calls) == 1
    assert calls[0][0] is loop
    assert isinstance(calls[0][1], dict)


def test_set_and_get_exception_handler(loop):
    def handler(lp, ctx):
        pass

    loop.set_exception_handler(None)
    assert loop.get_exception_handler() is None
    loop.set_exception_handler(handler)
    assert loop.get_exception_handler() is handler
    loop.set_exception_handler(None)
    assert loop.get_exception_handler() is None


def test_exception_handler_default_is_none(loop_name):
    lp = new_loop(loop_name)
    try:
        assert lp.get_exception_handler() is None
    finally:
        lp.close()


def test_set_exception_handler_rejects_non_callable(loop):
    with pytest.raises(TypeError, match="A callable object or None is expected, got 1"):
        loop.set_exception_handler(1)


def test_default_handler_logs_an_error_record(loop, caplog):
    loop.set_exception_handler(None)
    h = loop.call_soon(raise_boom, "logged")
    with caplog.at_level(logging.ERROR, logger="asyncio"):
        run_briefly(loop)
    records = [r for r in caplog.records if r.name == "asyncio"]
    assert len(records) == 1
    rec = records[0]
    assert rec.levelno == logging.ERROR
    assert rec.getMessage().startswith("Exception in callback")
    assert f"handle: {h!r}" in rec.getMessage()
    assert rec.exc_info is not None and isinstance(rec.exc_info[1], Boom)


def test_default_exception_handler_called_directly(loop, caplog):
    with caplog.at_level(logging.ERROR, logger="asyncio"):
        loop.default_exception_handler({"message": "custom message", "foo": 123})
        loop.default_exception_handler({})
    msgs = [r.getMessage() for r in caplog.records if r.name == "asyncio"]
    assert msgs[0] == "custom message\nfoo: 123"
    assert msgs[1] == "Unhandled exception in event loop"


def test_call_exception_handler_directly(loop, exc_handler_calls):
    ctx = {"message": "direct", "exception": Boom(), "whatever": object()}
    loop.call_exception_handler(ctx)
    assert exc_handler_calls == [ctx]
    exc_handler_calls.clear()


def test_call_exception_handler_without_handler_logs(loop, caplog):
    loop.set_exception_handler(None)
    with caplog.at_level(logging.ERROR, logger="asyncio"):
        loop.call_exception_handler({"message": "no handler", "exception": Boom("e")})
    recs = [r for r in caplog.records if r.name == "asyncio"]
    assert [r.getMessage() for r in recs] == ["no handler"]
    assert isinstance(recs[0].exc_info[1], Boom)


def test_handler_that_raises_is_logged_not_propagated(loop, caplog):
    def bad_handler(lp, ctx):
        raise RuntimeError("handler failed")

    loop.set_exception_handler(bad_handler)
    out = []
    loop.call_soon(raise_boom)
    loop.call_soon(out.append, "after")
    with caplog.at_level(logging.ERROR, logger="asyncio"):
        run_briefly(loop)
    assert out == ["after"]
    recs = [r for r in caplog.records if r.name == "asyncio"]
    assert len(recs) == 1
    assert recs[0].getMessage().startswith("Unhandled error in exception handler")
    assert isinstance(recs[0].exc_info[1], RuntimeError)


@pytest.mark.parametrize("exc_type", [KeyboardInterrupt, SystemExit])
def test_handler_raising_keyboard_interrupt_propagates(loop, exc_type):
    def handler(lp, ctx):
        raise exc_type()

    loop.set_exception_handler(handler)
    loop.call_soon(raise_boom)
    with pytest.raises(exc_type):
        run_briefly(loop)
    assert not loop.is_running()


def test_unretrieved_task_exception_is_reported(loop, exc_handler_calls):
    async def failing():
        raise Boom("never retrieved")

    task = loop.create_task(failing())
    loop.run_until_complete(asyncio.sleep(0.001))
    assert task.done()
    assert exc_handler_calls == []
    del task
    gc.collect()
    assert len(exc_handler_calls) == 1
    ctx = exc_handler_calls[0]
    assert ctx["message"] == "Task exception was never retrieved"
    assert isinstance(ctx["exception"], Boom)
    assert type(ctx["future"]) is asyncio.Task
    exc_handler_calls.clear()


def test_unretrieved_future_exception_is_reported(loop, exc_handler_calls):
    fut = loop.create_future()
    fut.set_exception(Boom("future"))
    del fut
    gc.collect()
    assert len(exc_handler_calls) == 1
    ctx = exc_handler_calls[0]
    assert ctx["message"] == "Future exception was never retrieved"
    assert isinstance(ctx["exception"], Boom)
    assert type(ctx["future"]) is asyncio.Future
    exc_handler_calls.clear()


def test_retrieved_task_exception_is_not_reported(loop):
    async def failing():
        raise Boom()

    async def main():
        with pytest.raises(Boom):
            await asyncio.create_task(failing())

    loop.run_until_complete(main())
    gc.collect()
    # Teardown fails the test if the handler was called.


def test_exception_in_done_callback_goes_to_handler(loop, exc_handler_calls):
    fut = loop.create_future()
    fut.add_done_callback(raise_boom)
    fut.set_result(None)
    run_briefly(loop)
    assert len(exc_handler_calls) == 1
    ctx = exc_handler_calls[0]
    assert ctx["message"].startswith("Exception in callback")
    assert isinstance(ctx["exception"], Boom)
    assert "handle" in ctx
    exc_handler_calls.clear()


def test_failing_default_exception_handler_is_logged(loop, caplog):
    # call_exception_handler guards against a default_exception_handler that
    # raises (e.g. overridden in a subclass, or patched on the instance).
    loop.set_exception_handler(None)

    def broken(context):
        raise RuntimeError("broken default handler")

    loop.default_exception_handler = broken
    with caplog.at_level(logging.ERROR, logger="asyncio"):
        loop.call_exception_handler({"message": "x"})
    recs = [r for r in caplog.records if r.name == "asyncio"]
    assert [r.getMessage() for r in recs] == ["Exception in default exception handler"]
    assert isinstance(recs[0].exc_info[1], RuntimeError)


def test_debug_default_handler_logs_where_the_handle_was_created(loop, caplog):
    loop.set_debug(True)
    loop.set_exception_handler(None)
    loop.call_soon(raise_boom)
    with caplog.at_level(logging.ERROR, logger="asyncio"):
        run_briefly(loop)
    msgs = [r.getMessage() for r in caplog.records if r.name == "asyncio"]
    assert len(msgs) == 1
    assert "Object created at (most recent call last):" in msgs[0]
    assert "test_debug_default_handler_logs_where_the_handle_was_created" in msgs[0]


# ---- the context the handler runs in ---------------------------------------------------

# From Python 3.12 asyncio calls a custom exception handler in the contextvars context of
# what failed: the context's "task", else its "future" when that is a Task, else its
# "handle" (base_events.BaseEventLoop.call_exception_handler, gh-96704). Before, and
# for anything else (a plain Future, no such key), in the caller's context. The default
# handler always runs in the caller's context.
HANDLER_RUNS_IN_ITS_CONTEXT = sys.version_info >= (3, 12)

NAME = contextvars.ContextVar("NAME", default="unset")


def _handler_that_reads_name(seen):
    def handler(lp, context):
        seen.append((NAME.get(), context["message"]))

    return handler


def _expected_name(name):
    return name if HANDLER_RUNS_IN_ITS_CONTEXT else "unset"


def test_handler_runs_in_the_context_of_the_failing_callback(loop):
    seen = []
    loop.set_exception_handler(_handler_that_reads_name(seen))

    def failing():
        NAME.set("the callback's")
        raise Boom()

    loop.call_soon(failing)
    run_briefly(loop)
    assert [name for name, _ in seen] == [_expected_name("the callback's")]
    assert seen[0][1].startswith("Exception in callback")


def test_handler_runs_in_the_context_of_the_failing_timer(loop):
    seen = []
    loop.set_exception_handler(_handler_that_reads_name(seen))
    ctx = contextvars.copy_context()
    ctx.run(NAME.set, "the timer's")
    loop.call_later(0.001, raise_boom, context=ctx)
    loop.call_later(0.02, loop.stop)
    loop.run_forever()
    assert [name for name, _ in seen] == [_expected_name("the timer's")]
    assert NAME.get() == "unset"


def test_handler_runs_in_the_context_of_the_failing_done_callback(loop):
    seen = []
    loop.set_exception_handler(_handler_that_reads_name(seen))
    ctx = contextvars.copy_context()
    ctx.run(NAME.set, "the done callback's")
    fut = loop.create_future()
    fut.add_done_callback(raise_boom, context=ctx)
    fut.set_result(None)
    run_briefly(loop)
    assert [name for name, _ in seen] == [_expected_name("the done callback's")]


def test_handler_runs_in_the_context_of_the_task_with_an_unretrieved_exception(loop):
    seen = []
    loop.set_exception_handler(_handler_that_reads_name(seen))

    async def failing():
        NAME.set("the task's")
        raise Boom("never retrieved")

    task = loop.create_task(failing())
    loop.run_until_complete(asyncio.sleep(0.001))
    assert task.done() and seen == []
    del task
    gc.collect()
    assert seen == [(_expected_name("the task's"), "Task exception was never retrieved")]


def test_handler_context_when_called_directly(loop):
    """call_exception_handler() with each key that names what failed."""
    seen = []
    loop.set_exception_handler(_handler_that_reads_name(seen))
    ctx = contextvars.copy_context()
    ctx.run(NAME.set, "its own")
    handle = loop.call_soon(print, context=ctx)
    handle.cancel()

    async def idle():
        pass

    task = loop.create_task(idle(), context=ctx)
    loop.run_until_complete(task)
    future = loop.create_future()  # a plain Future has no context of its own
    token = NAME.set("the caller's")
    try:
        for key, thing in (("handle", handle), ("task", task), ("future", task)):
            loop.call_exception_handler({"message": key, key: thing})
        loop.call_exception_handler({"message": "future", "future": future})
        loop.call_exception_handler({"message": "nothing"})
    finally:
        NAME.reset(token)
    own = "its own" if HANDLER_RUNS_IN_ITS_CONTEXT else "the caller's"
    assert seen == [
        (own, "handle"),
        (own, "task"),
        (own, "future"),
        ("the caller's", "future"),
        ("the caller's", "nothing"),
    ]
