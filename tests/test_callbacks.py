"""call_soon / call_soon_threadsafe, Handle objects, and the iteration semantics of
asyncio.base_events._run_once: the callbacks ready when an iteration starts run in it;
what they schedule runs in the next one."""

import asyncio
import contextvars
import functools
import gc
import json
import signal
import socket
import subprocess
import sys
import threading
import time
import weakref

import pytest

from .conftest import debug_counters, new_loop, run_briefly

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


def asyncio_handle_repr_shows_args(debug):
    """Whether the repr of asyncio's Handle shows the callback's arguments, on a loop
    in debug mode or not. Always before Python 3.13; from 3.13 only in debug mode, as
    the loop's flag is when repr() runs (events.Handle._repr_info passes
    loop.get_debug() to format_helpers._format_callback_source: arguments may hold
    secrets). Read from an asyncio loop of the running Python."""
    probe = asyncio.new_event_loop()
    try:
        probe.set_debug(debug)
        return "12345" in repr(asyncio.Handle(print, (12345,), probe))
    finally:
        probe.close()


@pytest.mark.parametrize("debug", [False, True], ids=["plain", "debug"])
def test_handle_repr_shows_args(loop, debug):
    def cb(*args):
        pass

    loop.set_debug(debug)
    shown = asyncio_handle_repr_shows_args(debug)
    for h in (loop.call_soon(cb, 12345, "abc"), loop.call_later(10, cb, 12345, "abc")):
        r = repr(h)
        assert "cb" in r
        assert ("12345" in r) is shown, r
        assert ("'abc'" in r) is shown, r
        h.cancel()
    run_briefly(loop)


@pytest.mark.parametrize("debug", [False, True], ids=["plain", "debug"])
def test_exception_message_shows_args_as_the_repr(loop, exc_handler_calls, debug):
    # "Exception in callback ..." formats the callback as Handle's repr does.
    def failing(*args):
        raise ValueError("boom")

    loop.set_debug(debug)
    loop.call_soon(failing, 12345)
    run_briefly(loop)
    (context,) = exc_handler_calls
    message = context["message"]
    assert message.startswith("Exception in callback ") and "failing" in message
    assert ("12345" in message) is asyncio_handle_repr_shows_args(debug), message
    exc_handler_calls.clear()


def test_handle_repr_follows_the_debug_flag_of_the_moment(loop):
    # The handle is made in one mode and shown in the other.
    def cb(*args):
        pass

    h = loop.call_soon(cb, 12345)
    loop.set_debug(True)
    assert ("12345" in repr(h)) is asyncio_handle_repr_shows_args(True), repr(h)
    h2 = loop.call_soon(cb, 12345)
    loop.set_debug(False)
    assert ("12345" in repr(h2)) is asyncio_handle_repr_shows_args(False), repr(h2)
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


# -- issue 9 -------------------------------------------------------------------------------

CALL_SOON_WITHOUT_MEMORY = """
import asyncio, json, sys, _testcapi
if sys.argv[1] == "fastloop":
    import fastloop
    loop = fastloop.new_event_loop()
else:
    loop = asyncio.new_event_loop()
nargs = int(sys.argv[2])
loop.set_debug(sys.argv[3] == "debug")
ran = []
def cb(*args):
    ran.append(args)
call = (cb, *range(nargs))
call_soon = loop.call_soon  # bound now: the calls below allocate as little as possible
call_soon(*call).cancel()
# Tuples of up to 19 items come from a free list without calling the allocator: hold
# enough of them alive that the handle's argument tuple must be allocated.
keep = [tuple([i] * nargs) for i in range(3000)]
outcomes = []
# Fail the i-th allocation from here on, for i = 0, 1, 2... until a call_soon gets
# through: every allocation call_soon makes fails once.
for i in range(5000):
    _testcapi.set_nomemory(i, i + 1)
    try:
        call_soon(*call)
    except BaseException as exc:
        _testcapi.remove_mem_hooks()
        outcomes.append(type(exc).__name__)
        continue
    _testcapi.remove_mem_hooks()
    outcomes.append("ok")
    break
loop.stop()
loop.run_forever()
loop.close()
print(json.dumps({"outcomes": outcomes, "ran": ran, "expected": call[1:]}))
"""


# In debug mode call_soon runs asyncio.format_helpers.extract_stack on both loops. On
# CPython 3.12 and 3.13 an allocation that fails inside it (traceback's StackSummary)
# leaves Python's object allocator broken: the next allocation crashes in pymalloc,
# with no event loop involved. This child finds out whether the running Python does.
EXTRACT_STACK_WITHOUT_MEMORY = """
import _testcapi, sys
from asyncio import format_helpers
for i in range(5000):
    _testcapi.set_nomemory(i, i + 1)
    try:
        format_helpers.extract_stack(sys._getframe(), limit=10)
    except MemoryError:
        _testcapi.remove_mem_hooks()
        continue
    _testcapi.remove_mem_hooks()
    break
print("survived")
"""


@functools.cache
def python_survives_extract_stack_without_memory():
    out = subprocess.run(
        [sys.executable, "-c", EXTRACT_STACK_WITHOUT_MEMORY],
        capture_output=True,
        text=True,
        timeout=45,
    )
    return out.returncode == 0 and out.stdout.strip() == "survived"


@pytest.mark.timeout(60)
@pytest.mark.parametrize("mode", ["plain", "debug"])
@pytest.mark.parametrize("nargs", [4, 25])
def test_call_soon_with_many_args_when_memory_runs_out(loop_name, nargs, mode):
    """issue 9, item 5: call_soon with more than 3 arguments whose argument tuple cannot
    be allocated raises MemoryError, as asyncio's does.

    fastloop kept the handle's argument count when the tuple allocation failed, and
    freeing the half-made handle then read that many "inline" arguments past the end
    of its inline slots: a stack-buffer-overflow under ASan (out of bounds under
    UBSan), a SIGSEGV in the release build. Run in a child process, which inherits
    the sanitizer environment of `make sanitize` (LD_PRELOAD, ASAN_OPTIONS...).
    """
    if mode == "debug" and not python_survives_extract_stack_without_memory():
        pytest.skip(
            f"Python {sys.version.split()[0]} itself crashes when an allocation fails in "
            "asyncio.format_helpers.extract_stack (debug-mode call_soon on both loops)"
        )
    try:
        out = subprocess.run(
            [sys.executable, "-c", CALL_SOON_WITHOUT_MEMORY, loop_name, str(nargs), mode],
            capture_output=True,
            text=True,
            timeout=45,
        )
    except subprocess.TimeoutExpired:
        pytest.fail("the child hung")
    assert out.returncode == 0, f"exit status {out.returncode}\n{out.stderr[-3000:]}"
    result = json.loads(out.stdout.splitlines()[-1])
    outcomes = result["outcomes"]
    assert outcomes[-1] == "ok", outcomes
    assert set(outcomes[:-1]) == {"MemoryError"}, outcomes
    # The call that got through ran with its arguments. (In debug mode asyncio may
    # raise MemoryError after it queued the handle, so failed calls can run too.)
    assert result["ran"]
    assert all(args == result["expected"] for args in result["ran"])


def test_handles_can_be_weakly_referenced(loop):
    """issue 9, item 19: Handle and TimerHandle objects support weak references, as
    asyncio's (and uvloop's) do; a weak reference dies with its handle, and is not
    revived when the handle's memory is reused for a new one."""
    handles = {
        "call_soon": loop.call_soon(_noop),
        "call_soon_threadsafe": loop.call_soon_threadsafe(_noop),
        "call_later": loop.call_later(10, _noop),
        "call_at": loop.call_at(loop.time() + 10, _noop),
    }
    refs = {name: weakref.ref(h) for name, h in handles.items()}
    assert all(refs[name]() is h for name, h in handles.items())
    live = weakref.WeakSet(handles.values())
    assert len(live) == 4
    handles["call_later"].cancel()
    handles["call_at"].cancel()
    run_briefly(loop)
    del handles
    gc.collect()
    assert {name: ref() for name, ref in refs.items()} == dict.fromkeys(refs)
    assert len(live) == 0
    # New handles (fastloop takes them from its free list) are not reachable through
    # the dead references.
    fresh = [loop.call_soon(_noop) for _ in range(10)] + [loop.call_later(10, _noop)]
    assert all(ref() is None for ref in refs.values())
    for h in fresh:
        h.cancel()
    run_briefly(loop)


def handle_classes(loop_name):
    """(Handle, TimerHandle) of the named loop: asyncio's public classes, or the ones
    of fastloop's core that its call_soon and call_later return."""
    if loop_name == "asyncio":
        return asyncio.Handle, asyncio.TimerHandle
    from fastloop import _core

    return _core.Handle, _core.TimerHandle


def test_handle_subclass_instances(loop, loop_name):
    """issue 9, item 17: a Python subclass of the loop's Handle class makes instances
    of the subclass (fastloop's Handle made base instances, ignoring the subclass);
    they run, cancel and are collected."""
    handle_cls, _ = handle_classes(loop_name)

    class Tagged(handle_cls):
        tag = "class attribute"

        def describe(self):
            return f"tagged {self.tag}"

    gc.collect()
    counters = debug_counters(loop_name)
    got = []
    h = Tagged(got.append, ("ran",), loop)
    assert type(h) is Tagged
    assert isinstance(h, handle_cls)
    assert h.describe() == "tagged class attribute"
    h.note = "instance attribute"  # a subclass without __slots__ has a __dict__
    assert h.note == "instance attribute"
    assert not h.cancelled()
    h._run()
    assert got == ["ran"]
    h.cancel()
    assert h.cancelled()
    assert "cancelled" in repr(h)

    # Collected, including through a reference cycle.
    ref = weakref.ref(h)
    h.me = h
    del h
    gc.collect()
    assert ref() is None
    if counters is not None:
        # fastloop's debug build counts live Handle objects: none left behind.
        assert debug_counters(loop_name)["handles"] == counters["handles"]


def test_handle_subclass_with_init(loop, loop_name):
    """issue 9, item 17: a subclass whose __init__ calls super().__init__(callback, args,
    loop, context), the usual way to extend asyncio.Handle, gets its instances
    initialised by it."""
    handle_cls, _ = handle_classes(loop_name)

    class WithInit(handle_cls):
        def __init__(self, callback, args, loop, context=None):
            super().__init__(callback, args, loop, context)
            self.label = "initialised"

    ctx = contextvars.copy_context()
    ctx.run(VAR.set, "in ctx")
    seen = []
    h = WithInit(lambda x: seen.append((x, VAR.get())), (1,), loop, ctx)
    assert type(h) is WithInit
    assert h.label == "initialised"
    h._run()
    assert seen == [(1, "in ctx")]
    ref = weakref.ref(h)
    del h
    gc.collect()
    assert ref() is None


# ---- handles and the garbage collector ---------------------------------------
# fastloop's call_soon/call_later handles are not tracked by the collector while
# only the loop's queues hold them (the loop reports what they hold instead): a
# burst of pending callbacks then costs collections nothing. What the collector
# finds must not change: these cycles are collected on both loops.


class _Owner:
    """An object that keeps the handle whose callback is its own method."""

    def method(self):
        pass


@pytest.mark.parametrize("schedule", ["call_soon", "call_later", "call_soon_threadsafe"])
def test_cycle_through_a_handle_that_ran_is_collected(loop, schedule):
    owner = _Owner()
    if schedule == "call_later":
        owner.handle = loop.call_later(0, owner.method)
    else:
        owner.handle = getattr(loop, schedule)(owner.method)
    loop.run_until_complete(asyncio.sleep(0.002))
    ref = weakref.ref(owner)
    del owner
    gc.collect()
    assert ref() is None


def test_pending_callbacks_keep_what_they_hold_alive(loop):
    # The loop reports what its untracked handles hold: a collection while they
    # wait frees none of it.
    got = []

    class Payload:
        def __init__(self, n):
            self.n = n
            self.me = self  # a cycle of its own, reachable only through the handle

        def run(self):
            got.append(self.n)

    for n in range(2000):
        loop.call_soon(Payload(n).run)
    loop.call_later(0.001, Payload(-1).run)
    gc.collect()
    loop.run_until_complete(asyncio.sleep(0.005))
    assert got == [*range(2000), -1]


LOOP_DROPPED_WITH_PENDING_CALLBACKS = r"""
import contextvars, gc, json, warnings, weakref
warnings.simplefilter("ignore", ResourceWarning)
VAR = contextvars.ContextVar("VAR")

class Holder:
    pass

def noop():
    pass

refs = {"through the callback": [], "through the context copy": []}
for _ in range(5):
    lp = new_loop()
    lp.call_soon(lambda lp=lp: lp)          # loop -> handle -> closure -> loop
    lp.call_later(3600, lambda lp=lp: lp)
    refs["through the callback"].append(weakref.ref(lp))
    del lp
for _ in range(5):
    lp = new_loop()
    holder = Holder()
    holder.loop = lp
    token = VAR.set(holder)
    # Enough pending handles that fastloop leaves their context copies to the
    # loop's traverse (Loop::many_pending): loop -> handle -> copy -> holder -> loop.
    for _ in range(300):
        lp.call_soon(noop)
    lp.call_later(3600, noop)
    VAR.reset(token)
    refs["through the context copy"].append(weakref.ref(lp))
    del lp, holder
gc.collect()
print(json.dumps({k: sum(r() is not None for r in v) for k, v in refs.items()}))
"""


def test_loop_dropped_with_pending_callbacks_is_collected(loop_name):
    from .netutil import child_stdout, run_child

    out = run_child(loop_name, LOOP_DROPPED_WITH_PENDING_CALLBACKS, timeout=60)
    assert json.loads(child_stdout(out)) == {
        "through the callback": 0,
        "through the context copy": 0,
    }


@pytest.mark.skipif(sys.version_info < (3, 12), reason="Handle.get_context() is new in 3.12")
def test_context_copy_kept_after_its_handle_ran_is_collected_with_its_cycle(loop):
    class Holder:
        pass

    holder = Holder()
    for _ in range(300):  # enough that fastloop untracks the copy (Loop::many_pending)
        loop.call_soon(_noop)
    token = VAR.set(holder)
    h = loop.call_soon(_noop)
    VAR.reset(token)
    ctx = h.get_context()
    holder.ctx = ctx  # holder -> context copy -> holder
    del h
    run_briefly(loop)
    assert ctx[VAR] is holder
    ref = weakref.ref(holder)
    del holder, ctx
    gc.collect()
    assert ref() is None


def test_queued_handle_initialised_again_then_collected(loop):
    # __init__ on a handle the loop queued replaces its context copy; collections
    # before and after it runs must find everything it holds exactly once.
    got = []
    for _ in range(300):  # enough that fastloop untracks the copy (Loop::many_pending)
        loop.call_soon(_noop)
    h = loop.call_soon(got.append, "first")
    h.__init__(got.append, ("second",), loop)
    gc.collect()
    run_briefly(loop)
    gc.collect()
    assert got == ["second"]
