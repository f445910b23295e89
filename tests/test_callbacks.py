"""call_soon / call_soon_threadsafe, Handle objects, and the iteration semantics of
asyncio.base_events._run_once: the callbacks ready when an iteration starts run in it;
what they schedule runs in the next one."""

import asyncio
import contextvars
import gc
import signal
import socket
import sys
import threading
import time
import weakref

import pytest

from .conftest import new_loop, run_briefly

VAR = contextvars.ContextVar("VAR", default="unset")


def test_call_soon_runs_in_fifo_order(loop):
    out = []
    for i in range(1000):
        loop.call_soon(out.append, i)
    loop.call_soon(loop.stop)
    loop.run_forever()
    assert out == list(range(1000))


def test_call_soon_passes_positional_args(loop):
    got = []

    def cb(*args):
        got.append(args)

    obj = object()
    loop.call_soon(cb)
    loop.call_soon(cb, 1)
    loop.call_soon(cb, 1, "a", None, obj)
    loop.call_soon(cb, *range(20))
    run_briefly(loop)
    assert got == [(), (1,), (1, "a", None, obj), tuple(range(20))]


def test_call_soon_accepts_any_callable(loop):
    got = []

    class Callable:
        def __call__(self, x):
            got.append(("obj", x))

    class WithMethod:
        def meth(self, x):
            got.append(("meth", x))

    loop.call_soon(Callable(), 1)
    loop.call_soon(WithMethod().meth, 2)
    loop.call_soon(lambda x: got.append(("lambda", x)), 3)
    loop.call_soon(got.append, ("builtin", 4))
    run_briefly(loop)
    assert got == [("obj", 1), ("meth", 2), ("lambda", 3), ("builtin", 4)]


def test_callback_runs_in_given_context(loop):
    ctx = contextvars.copy_context()
    ctx.run(VAR.set, "in ctx")
    seen = []

    def cb():
        seen.append(VAR.get())
        VAR.set("changed by cb")

    loop.call_soon(cb, context=ctx)
    run_briefly(loop)
    assert seen == ["in ctx"]
    # It ran in that very Context object, not in a copy of it.
    assert ctx[VAR] == "changed by cb"
    assert VAR.get() == "unset"


def test_default_context_is_a_copy_taken_at_call_soon(loop):
    seen = []

    def cb():
        seen.append(VAR.get())
        VAR.set("set by cb")

    token = VAR.set("at call_soon")
    try:
        loop.call_soon(cb)
        VAR.set("after call_soon")
        run_briefly(loop)
        assert seen == ["at call_soon"]
        # The callback's change stayed in its own copy.
        assert VAR.get() == "after call_soon"
    finally:
        VAR.reset(token)


def test_each_callback_gets_its_own_context_copy(loop):
    seen = []

    def setter():
        VAR.set("leaked?")

    def getter():
        seen.append(VAR.get())

    loop.call_soon(setter)
    loop.call_soon(getter)
    run_briefly(loop)
    assert seen == ["unset"]


def test_callbacks_scheduled_by_a_callback_run_next_iteration(loop):
    out = []

    def a():
        out.append("a")
        loop.call_soon(c)
        loop.stop()

    def b():
        out.append("b")

    def c():
        out.append("c")

    loop.call_soon(a)
    loop.call_soon(b)
    loop.run_forever()
    # b was ready when the iteration started, c was scheduled during it.
    assert out == ["a", "b"]
    run_briefly(loop)
    assert out == ["a", "b", "c"]


def test_stop_then_call_soon_inside_one_callback(loop):
    out = []

    def cb():
        loop.stop()
        loop.call_soon(out.append, "later")

    loop.call_soon(cb)
    loop.run_forever()
    assert out == []
    run_briefly(loop)
    assert out == ["later"]


def test_iterations_interleave_chains(loop):
    # Two self-rescheduling chains advance one step per iteration each.
    out = []

    def step(name, n):
        out.append((name, n))
        if n < 3:
            loop.call_soon(step, name, n + 1)
        elif name == "y":
            loop.stop()

    loop.call_soon(step, "x", 0)
    loop.call_soon(step, "y", 0)
    loop.run_forever()
    assert out == [(name, n) for n in range(4) for name in ("x", "y")]


@pytest.mark.timeout(10)
def test_self_rescheduling_callback_does_not_starve_timers(loop):
    # If an iteration ran callbacks scheduled during it, this would never stop.
    count = 0
    done = False

    def spin():
        nonlocal count
        count += 1
        if not done:
            loop.call_soon(spin)

    def finish():
        nonlocal done
        done = True
        loop.stop()

    loop.call_soon(spin)
    loop.call_later(0.05, finish)
    loop.run_forever()
    assert count > 1


def test_handle_cancel_before_it_runs(loop):
    out = []
    h = loop.call_soon(out.append, "cancelled one")
    loop.call_soon(out.append, "other")
    assert not h.cancelled()
    h.cancel()
    assert h.cancelled()
    run_briefly(loop)
    assert out == ["other"]


def test_handle_cancelled_by_earlier_callback_in_same_iteration(loop):
    out = []
    handles = {}
    loop.call_soon(lambda: handles["b"].cancel())
    handles["b"] = loop.call_soon(out.append, "b")
    loop.call_soon(out.append, "c")
    run_briefly(loop)
    assert out == ["c"]
    assert handles["b"].cancelled()


def test_handle_cancel_twice_and_after_run(loop):
    out = []
    h = loop.call_soon(out.append, 1)
    run_briefly(loop)
    assert out == [1]
    assert not h.cancelled()
    # asyncio: cancel() after the callback ran is allowed and marks the handle.
    h.cancel()
    assert h.cancelled()
    h.cancel()
    assert h.cancelled()


def test_handle_cancel_drops_callback_references(loop):
    class Payload:
        pass

    payload = Payload()
    ref = weakref.ref(payload)
    h = loop.call_soon(lambda p: None, payload)
    del payload
    assert ref() is not None
    h.cancel()
    # asyncio clears the callback and args on cancel(); the arguments are not
    # kept alive until the loop gets around to discarding the handle.
    run_briefly(loop)
    assert ref() is None


def test_handle_repr_names_the_callback(loop):
    def my_distinctive_callback():
        pass

    h = loop.call_soon(my_distinctive_callback)
    r = repr(h)
    assert r.startswith("<Handle")
    assert "my_distinctive_callback" in r
    h.cancel()
    assert "cancelled" in repr(h)


def test_handle_repr_shows_args(loop):
    def cb(*args):
        pass

    h = loop.call_soon(cb, 12345, "abc")
    r = repr(h)
    assert "cb" in r
    assert "12345" in r
    assert "'abc'" in r
    run_briefly(loop)


def test_get_running_loop_inside_callback(loop):
    seen = []
    loop.call_soon(lambda: seen.append(asyncio.get_running_loop()))
    loop.call_soon(lambda: seen.append(asyncio.get_event_loop()))
    run_briefly(loop)
    assert seen == [loop, loop]


def test_call_soon_threadsafe_from_the_loop_thread(loop):
    out = []
    ctx = contextvars.copy_context()
    ctx.run(VAR.set, "ts")
    h = loop.call_soon_threadsafe(lambda *a: out.append((a, VAR.get())), 1, 2, context=ctx)
    loop.call_soon_threadsafe(out.append, "x").cancel()
    assert not h.cancelled()
    run_briefly(loop)
    assert out == [((1, 2), "ts")]


@pytest.mark.timeout(20)
def test_call_soon_threadsafe_wakes_a_sleeping_loop(loop):
    # A 10 s timer is pending: the loop sleeps in the kernel until another thread
    # schedules a callback; that must wake it at once.
    far = loop.call_later(10, loop.stop)
    woke = []
    sent = []

    def from_thread():
        time.sleep(0.1)
        sent.append(time.monotonic())
        loop.call_soon_threadsafe(lambda: (woke.append(time.monotonic()), loop.stop()))

    t = threading.Thread(target=from_thread)
    t.start()
    try:
        loop.run_forever()
    finally:
        t.join()
    far.cancel()
    assert woke, "the loop stopped without running the threadsafe callback"
    assert woke[0] - sent[0] < 1.0


@pytest.mark.timeout(30)
def test_many_threads_calling_call_soon_threadsafe_lose_nothing(loop):
    n_threads, per_thread = 8, 2000
    total = n_threads * per_thread
    got = []
    start = threading.Barrier(n_threads + 1)

    def record(tid, i):
        got.append((tid, i))
        if len(got) == total:
            loop.stop()

    def producer(tid):
        start.wait()
        for i in range(per_thread):
            loop.call_soon_threadsafe(record, tid, i)

    threads = [threading.Thread(target=producer, args=(t,)) for t in range(n_threads)]
    for t in threads:
        t.start()
    guard = loop.call_later(20, loop.stop)
    loop.call_soon(start.wait)
    try:
        loop.run_forever()
    finally:
        for t in threads:
            t.join()
    guard.cancel()
    assert len(got) == total
    # Each producer's callbacks ran in the order that producer scheduled them.
    for tid in range(n_threads):
        assert [i for t, i in got if t == tid] == list(range(per_thread))


def test_call_soon_and_call_soon_threadsafe_share_one_fifo(loop):
    out = []
    loop.call_soon(out.append, 1)
    loop.call_soon_threadsafe(out.append, 2)
    loop.call_soon(out.append, 3)
    loop.call_soon_threadsafe(out.append, 4)

    def in_loop():
        loop.call_soon(out.append, 5)
        loop.call_soon_threadsafe(out.append, 6)
        loop.call_soon(out.append, 7)

    loop.call_soon(in_loop)
    run_briefly(loop, 2)
    assert out == [1, 2, 3, 4, 5, 6, 7]


@pytest.mark.timeout(30)
def test_call_soon_threadsafe_racing_close(loop_name):
    # Producers keep calling call_soon_threadsafe while the loop stops and closes:
    # each must end with RuntimeError('Event loop is closed'), never a crash.
    for _ in range(20):
        lp = new_loop(loop_name)
        errors = []

        def producer(lp=lp, errors=errors):
            while True:
                try:
                    lp.call_soon_threadsafe(int)
                except RuntimeError as e:
                    errors.append(str(e))
                    return

        threads = [threading.Thread(target=producer) for _ in range(2)]
        for t in threads:
            t.start()
        lp.call_later(0.002, lp.stop)
        lp.run_forever()
        lp.close()
        for t in threads:
            t.join(10)
        assert errors == ["Event loop is closed"] * 2


class _Arg:
    pass


def _noop(*args):
    pass


def _raise(*args):
    raise ValueError("counted")


def test_reference_counts_balance(loop):
    # Every scheduled, run, cancelled or failed callback releases its callback
    # and arguments: the reference counts come back to where they were.
    loop.set_exception_handler(lambda lp, ctx: None)
    arg = _Arg()

    def counts():
        gc.collect()
        return sys.getrefcount(arg), sys.getrefcount(_noop), sys.getrefcount(_raise)

    before = counts()
    for _ in range(200):
        loop.call_soon(_noop, arg)
        loop.call_soon(_raise, arg)
        loop.call_later(0, _noop, arg)
        loop.call_at(0, _raise, arg)
        loop.call_soon_threadsafe(_noop, arg)
        loop.call_soon(_noop, arg).cancel()
        loop.call_later(1, _noop, arg).cancel()
        loop.call_soon(_noop, arg, context=contextvars.copy_context())
    run_briefly(loop, 2)
    assert counts() == before
    a, b = socket.socketpair()
    try:
        b.send(b"x")
        for _ in range(50):
            loop.add_reader(a, _noop, arg)
            loop.add_writer(a, _raise, arg)
        run_briefly(loop, 2)
        assert loop.remove_reader(a) and loop.remove_writer(a)
    finally:
        a.close()
        b.close()
    assert counts() == before
    for _ in range(50):
        loop.add_signal_handler(signal.SIGUSR1, _noop, arg)
    assert loop.remove_signal_handler(signal.SIGUSR1)
    assert counts() == before
    for _ in range(50):
        loop.run_until_complete(asyncio.sleep(0, arg))
    assert counts() == before
    loop.close()
    assert counts() == before
