"""Debug mode: get_debug/set_debug, PYTHONASYNCIODEBUG and -X dev, run(debug=True),
slow-callback warnings, thread checks, and source tracebacks."""

import asyncio
import logging
import os
import re
import socket
import subprocess
import sys
import threading
import time

import pytest

from .conftest import run_briefly

NOT_THREADSAFE = "Non-thread-safe operation invoked on an event loop other than the current one"

PRINT_DEBUG_SCRIPT = """
import asyncio, sys
if sys.argv[1] == "fastloop":
    import fastloop
    loop = fastloop.new_event_loop()
else:
    loop = asyncio.new_event_loop()
print(loop.get_debug())
loop.close()
"""


def run_with_loop(loop_name, coro, **kwargs):
    """asyncio.run for asyncio's loop, fastloop.run for fastloop."""
    if loop_name == "asyncio":
        return asyncio.run(coro, **kwargs)
    import fastloop

    return fastloop.run(coro, **kwargs)


def child_env(**overrides):
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONASYNCIODEBUG", "PYTHONDEVMODE")}
    env.update(overrides)
    return env


def test_set_debug_get_debug(loop):
    loop.set_debug(True)
    assert loop.get_debug() is True
    loop.set_debug(False)
    assert loop.get_debug() is False


def test_default_debug_follows_environment(loop):
    expected = bool(sys.flags.dev_mode or os.environ.get("PYTHONASYNCIODEBUG"))
    assert loop.get_debug() is expected


def test_slow_callback_duration_attribute(loop):
    assert loop.slow_callback_duration == 0.1
    loop.slow_callback_duration = 0.5
    assert loop.slow_callback_duration == 0.5


@pytest.mark.timeout(30)
@pytest.mark.parametrize(
    "args, env, expected",
    [
        ([], {}, "False"),
        ([], {"PYTHONASYNCIODEBUG": "1"}, "True"),
        (["-X", "dev"], {}, "True"),
    ],
    ids=["plain", "envvar", "Xdev"],
)
def test_debug_from_environment_in_subprocess(loop_name, args, env, expected):
    out = subprocess.run(
        [sys.executable, *args, "-c", PRINT_DEBUG_SCRIPT, loop_name],
        env=child_env(**env),
        capture_output=True,
        text=True,
        timeout=20,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == expected


@pytest.mark.parametrize("debug", [True, False])
def test_run_with_debug_argument(loop_name, debug):
    async def main():
        return asyncio.get_running_loop().get_debug()

    assert run_with_loop(loop_name, main(), debug=debug) is debug


def test_slow_callback_is_logged(loop, caplog):
    loop.set_debug(True)
    loop.slow_callback_duration = 0.01

    def slow_callback_name():
        time.sleep(0.03)

    with caplog.at_level(logging.WARNING, logger="asyncio"):
        loop.call_soon(slow_callback_name)
        loop.call_soon(lambda: None)  # fast: not logged
        run_briefly(loop)
    msgs = [r.getMessage() for r in caplog.records if r.name == "asyncio"]
    assert len(msgs) == 1, msgs
    assert re.match(r"Executing <Handle .*slow_callback_name.* took \d+\.\d{3} seconds$", msgs[0])
    rec = [r for r in caplog.records if r.name == "asyncio"][0]
    assert rec.levelno == logging.WARNING


@pytest.mark.parametrize("kind", ["timer", "reader"])
def test_slow_timer_and_reader_callbacks_are_logged(loop, caplog, kind):
    loop.set_debug(True)
    loop.slow_callback_duration = 0.01
    a, b = socket.socketpair()

    def slow_io_or_timer_cb():
        time.sleep(0.03)
        if kind == "reader":
            a.recv(10)
            loop.remove_reader(a)

    try:
        with caplog.at_level(logging.WARNING, logger="asyncio"):
            if kind == "timer":
                loop.call_later(0.001, slow_io_or_timer_cb)
            else:
                b.send(b"x")
                loop.add_reader(a, slow_io_or_timer_cb)
            loop.call_later(0.1, loop.stop)
            loop.run_forever()
    finally:
        loop.remove_reader(a)
        a.close()
        b.close()
    msgs = [r.getMessage() for r in caplog.records if r.name == "asyncio"]
    assert len(msgs) == 1, msgs
    prefix = "Executing <TimerHandle when=" if kind == "timer" else "Executing <Handle "
    assert msgs[0].startswith(prefix), msgs[0]
    assert "slow_io_or_timer_cb" in msgs[0]


def test_slow_task_step_names_the_task(loop, caplog):
    loop.set_debug(True)
    loop.slow_callback_duration = 0.01

    async def slow():
        time.sleep(0.03)

    with caplog.at_level(logging.WARNING, logger="asyncio"):
        loop.run_until_complete(loop.create_task(slow(), name="slow-task-name"))
    msgs = [r.getMessage() for r in caplog.records if r.name == "asyncio"]
    assert len(msgs) == 1, msgs
    assert msgs[0].startswith("Executing <Task ")
    assert "slow-task-name" in msgs[0]
    assert " took " in msgs[0]


def test_slow_callback_not_logged_without_debug(loop, caplog):
    loop.set_debug(False)
    loop.slow_callback_duration = 0.01
    with caplog.at_level(logging.WARNING, logger="asyncio"):
        loop.call_soon(time.sleep, 0.03)
        run_briefly(loop)
    assert [r for r in caplog.records if r.name == "asyncio"] == []


@pytest.mark.timeout(10)
def test_debug_rejects_non_threadsafe_calls_from_other_threads(loop):
    loop.set_debug(True)
    results = {}

    def other_thread():
        for name, call in [
            ("call_soon", lambda: loop.call_soon(print)),
            ("call_later", lambda: loop.call_later(1, print)),
            ("call_at", lambda: loop.call_at(loop.time() + 1, print)),
        ]:
            try:
                call()
            except RuntimeError as e:
                results[name] = str(e)
            else:
                results[name] = "no error"
        # The thread-safe one works, and stops the loop.
        loop.call_soon_threadsafe(loop.stop)

    t = threading.Thread(target=other_thread)
    loop.call_soon(t.start)
    loop.run_forever()
    t.join()
    assert results == {
        "call_soon": NOT_THREADSAFE,
        "call_later": NOT_THREADSAFE,
        "call_at": NOT_THREADSAFE,
    }


def test_debug_coroutine_origin_tracking_while_running(loop):
    loop.set_debug(True)
    before = sys.get_coroutine_origin_tracking_depth()
    seen = []
    loop.call_soon(lambda: seen.append(sys.get_coroutine_origin_tracking_depth()))
    run_briefly(loop)
    assert seen and seen[0] > 0
    assert sys.get_coroutine_origin_tracking_depth() == before


def test_debug_exception_context_has_source_traceback(loop, exc_handler_calls):
    loop.set_debug(True)

    def failing_cb():
        raise ValueError("debug")

    loop.call_soon(failing_cb)  # this line is the handle's origin
    run_briefly(loop)
    assert len(exc_handler_calls) == 1
    ctx = exc_handler_calls[0]
    tb = ctx["source_traceback"]
    # The last frame of the source traceback is where call_soon was called.
    assert tb[-1].name == "test_debug_exception_context_has_source_traceback"
    assert tb[-1].filename == __file__
    exc_handler_calls.clear()


def test_debug_handle_repr_tells_where_it_was_created(loop):
    loop.set_debug(True)
    h = loop.call_soon(print)
    assert f"created at {__file__}:" in repr(h)
    h.cancel()
