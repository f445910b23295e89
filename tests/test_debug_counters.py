"""Resource balance of fastloop's core, read from its debug-build counters.

These are fastloop internals (live Handle objects, libuv fd watchers and
uv_loop_t structures) with no asyncio counterpart, so the tests build
fastloop loops directly instead of using the two-loop `loop` fixture. The
counters exist only in the FASTLOOP_DEBUG build that `make sanitize` runs the
suite on; in a release build each test says so and is skipped.
"""

import asyncio
import gc
import socket
import time

import fastloop
import pytest
from fastloop import _core

needs_debug_build = pytest.mark.skipif(
    _core._debug_counters() is None,
    reason="counters exist only in the FASTLOOP_DEBUG build (`make sanitize` runs it)",
)


def counters():
    gc.collect()
    return _core._debug_counters()


@needs_debug_build
def test_handles_and_loops_balance_after_close():
    before = counters()
    loop = fastloop.new_event_loop()
    for i in range(100):
        loop.call_soon(print, i)
        loop.call_later(10 + i, print, i)
    loop.call_later(1, print).cancel()
    during = counters()
    assert during["handles"] >= before["handles"] + 201
    assert during["uv_loops"] == before["uv_loops"] + 1
    loop.close()
    del loop
    assert counters() == before


@needs_debug_build
def test_fd_watchers_are_kept_idle_after_remove_and_freed_by_close():
    before = counters()
    loop = fastloop.new_event_loop()
    a, b = socket.socketpair()
    try:
        loop.add_reader(a, print)
        loop.add_writer(b, print)
        assert counters()["fd_watchers"] == before["fd_watchers"] + 2
        assert loop.remove_reader(a)
        loop.stop()
        loop.run_forever()
        # Kept idle for the next add_reader on that fd: no new uv_poll_t then.
        assert counters()["fd_watchers"] == before["fd_watchers"] + 2
        loop.add_reader(a, print)
        assert counters()["fd_watchers"] == before["fd_watchers"] + 2
        loop.close()  # closes both, idle or not
    finally:
        a.close()
        b.close()
    del loop
    assert counters() == before


@needs_debug_build
def test_an_abandoned_loop_is_collected_with_its_handles():
    before = counters()
    loop = fastloop.new_event_loop()
    loop.call_soon(loop.call_soon, print)  # handle -> loop -> handle cycle
    with pytest.warns(ResourceWarning, match="unclosed event loop"):
        del loop
        gc.collect()
    assert counters() == before


@needs_debug_build
@pytest.mark.timeout(20)
def test_timer_due_before_the_poll_starts_does_not_block_it():
    # libuv runs due timers before it polls. If the loop's timer falls due
    # between arming it and polling (libuv's millisecond clock ticked), the
    # poll must not block: fastloop once waited forever there. The debug
    # build's fault injection sleeps 3 ms in that window, so every timer
    # below is due before the poll begins.
    _core._debug_set_arm_delay(3000)
    loop = fastloop.new_event_loop()
    try:

        async def main():
            for _ in range(20):
                await asyncio.sleep(0.001)

        t0 = time.monotonic()
        loop.run_until_complete(main())
        assert time.monotonic() - t0 < 5
    finally:
        _core._debug_set_arm_delay(0)
        loop.close()
