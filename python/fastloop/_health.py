"""Loop health: metrics, utilization, the lag monitor, slow callbacks and the
stall watchdog (HealthMethods, mixed into fastloop.Loop).

The counting is done by the core (cpp/health.hpp, which says what each part
costs); this module is the Python face of it and builds the reports handed
to the user's handlers. asyncio's loop has none of these methods.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import math
import signal
import sys
import traceback
import types
from collections.abc import Callable
from typing import Any, NamedTuple

__all__ = [
    "LagMonitor",
    "LoopMetrics",
    "SlowCallback",
    "StallReport",
    "Utilization",
]

logger = logging.getLogger("fastloop")

# The signal the watchdog's stack dumps travel on (a file watchdog registers
# faulthandler for it; the monitor thread sends it to the loop's thread).
DEFAULT_WATCHDOG_SIGNAL = signal.SIGRTMAX - 3


class LoopMetrics(NamedTuple):
    """A snapshot of a loop's counters (loop.metrics())."""

    iterations: int  # loop iterations run
    callbacks: int  # callbacks run from the ready queue: call_soon, timers, task steps, fd watchers
    io_events: int  # I/O callbacks into Python: protocol callbacks, accepts, closes
    ready: int  # callbacks waiting in the ready queue now
    timers: int  # timers scheduled and not cancelled (call_later, call_at)
    fds: int  # fds watched with add_reader/add_writer
    transports: int  # native transports, servers and subprocess handles open
    idle_time: float  # seconds blocked in the kernel, waiting for I/O or a timer
    active_time: float  # seconds running: callbacks, I/O callbacks and the loop itself


class Utilization(NamedTuple):
    """Event loop utilization, as Node.js's performance.eventLoopUtilization():
    seconds idle (blocked in a poll) and active (running) while the loop ran,
    and active / (idle + active)."""

    idle: float
    active: float
    utilization: float


class SlowCallback(NamedTuple):
    """What loop.set_slow_callback_handler()'s handler is given."""

    duration: float  # seconds it ran, to within threshold / 20 (0.5 ms to 5 ms)
    callback: Any  # what ran: the handle's callback
    task: asyncio.Task | None  # the task whose step it was, if it was one
    name: str  # the coroutine's qualified name, or the callback's
    location: str  # "file:line": where the coroutine is suspended now, or the callback's code
    await_chain: tuple[str, ...]  # "name (file:line)", outermost first, for a task
    handle: asyncio.Handle


class StallReport(NamedTuple):
    """What loop.start_watchdog()'s handler is given, once when a stall is
    seen and once when it ends."""

    ended: bool
    duration: float  # seconds the loop has not polled (so far, or in all once ended)
    thread_id: int  # the loop's thread (threading.get_ident())
    stack: traceback.StackSummary  # the loop thread's stack (empty once ended)


class LagMonitor:
    """The histogram of how late the loop's lag samples fired (loop.monitor_lag()).

    Values are seconds, kept with nanosecond resolution; percentiles are
    within 3.2% of the exact value. Memory is bounded (16 KiB). A loop has one
    histogram: a monitor started after this one stopped starts it afresh, and
    this object then reads the new samples.
    """

    __slots__ = ("_loop", "resolution")

    def __init__(self, loop, resolution: float):
        self._loop = loop
        self.resolution = resolution

    def __repr__(self):
        return (
            f"<fastloop.LagMonitor running={self.running} count={self.count} "
            f"p50={self.percentile(50):.6f} max={self.max:.6f}>"
        )

    @property
    def running(self) -> bool:
        return self._loop._lag_running and self._loop._lag_monitor is self

    def _stat(index: int, doc: str):  # noqa: N805 - builds the properties below
        return property(lambda self: self._loop._lag_stats()[index], doc=doc)

    count = _stat(0, "Samples taken.")
    min = _stat(1, "The smallest lag sampled (0.0 before any sample).")
    max = _stat(2, "The largest lag sampled.")
    mean = _stat(3, "The mean lag.")
    stddev = _stat(4, "The standard deviation of the lag.")
    del _stat

    def percentile(self, p: float) -> float:
        """The lag at or below which p percent of the samples fall (0 < p <= 100)."""
        p = float(p)
        if not 0 < p <= 100:
            raise ValueError(f"percentile must be in (0, 100], got {p!r}")
        return self._loop._lag_percentile(p)

    @property
    def percentiles(self) -> dict[float, float]:
        """The usual ones: 50, 75, 90, 99, 99.9."""
        return {p: self.percentile(p) for p in (50, 75, 90, 99, 99.9)}

    def reset(self) -> None:
        """Forget the samples so far (the monitor keeps running)."""
        self._loop._lag_reset()

    def stop(self) -> None:
        """Stop sampling; the histogram stays readable."""
        if self.running and not self._loop.is_closed():
            self._loop._set_lag_resolution(0)


def _check_seconds(name: str, value, *, allow_zero=False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number of seconds, not {type(value).__name__}")
    value = float(value)
    if not math.isfinite(value) or value < 0 or (value == 0 and not allow_zero):
        raise ValueError(f"{name} must be a positive number of seconds, got {value!r}")
    return value


class HealthMethods:
    """loop.metrics(), utilization(), monitor_lag(), set_slow_callback_handler(),
    start_watchdog() and stop_watchdog()."""

    _lag_monitor: LagMonitor | None = None
    _slow_callback_handler: Callable[[SlowCallback], object] | None = None
    _stall_handler: Callable[[StallReport], object] | None = None
    _watchdog_signal: int | None = None

    def metrics(self) -> LoopMetrics:
        """A snapshot of the loop's counters (see LoopMetrics); cheap, always on."""
        self._check_closed()
        return LoopMetrics(*self._metrics())

    def utilization(self, previous: Utilization | None = None) -> Utilization:
        """Idle and active seconds since the loop was made and their ratio;
        with `previous` (an earlier result), over the time since then."""
        self._check_closed()
        idle, active = self._metrics()[7:9]
        if previous is not None:
            if not isinstance(previous, Utilization):
                raise TypeError(
                    f"previous must be a fastloop.Utilization, not {type(previous).__name__}"
                )
            idle -= previous.idle
            active -= previous.active
        total = idle + active
        return Utilization(idle, active, active / total if total > 0 else 0.0)

    def monitor_lag(self, resolution: float = 0.01) -> LagMonitor:
        """Sample, every `resolution` seconds, how late the loop comes round
        to a sample that fell due, into a histogram (LagMonitor). One per
        loop: while one runs, it is returned (with its own resolution)."""
        self._check_closed()
        resolution = _check_seconds("resolution", resolution)
        current = self._lag_monitor
        if current is not None and current.running:
            return current
        self._lag_reset()
        monitor = LagMonitor(self, resolution)
        self._lag_monitor = monitor
        self._set_lag_resolution(resolution)
        return monitor

    def set_slow_callback_handler(
        self, threshold: float, handler: Callable[[SlowCallback], object] | None
    ) -> None:
        """Call handler(SlowCallback) after each callback that ran `threshold`
        seconds or longer, with or without debug mode; handler None stops it.
        It runs on the loop's thread, right after the callback."""
        self._check_closed()
        if handler is None:
            self._slow_callback_handler = None
            self._set_slow_threshold(0)
            return
        if not callable(handler):
            raise TypeError(f"handler must be callable or None, not {type(handler).__name__}")
        threshold = _check_seconds("threshold", threshold)
        self._slow_callback_handler = handler
        self._set_slow_threshold(threshold)

    def start_watchdog(
        self,
        stall: float = 0.5,
        *,
        resolution: float | None = None,
        file=None,
        handler: Callable[[StallReport], object] | None = None,
        signum: int | None = None,
    ) -> None:
        """Watch, from a native thread, for the loop not coming back to poll
        for `stall` seconds, looking every `resolution` (stall / 10).

        Without `handler`, a stall is reported to `file` (sys.stderr) with the
        stack of the loop's thread, dumped by faulthandler from a handler
        for signal `signum` (SIGRTMAX - 3) run in that thread: no GIL is
        needed, whatever the loop is stuck in. With `handler`, it is called
        from the watchdog thread, with the GIL, with a StallReport. Either
        way the end of a stall is reported with its duration. Starting it
        again replaces the settings.
        """
        self._check_closed()
        stall = _check_seconds("stall", stall)
        resolution = stall / 10 if resolution is None else _check_seconds("resolution", resolution)
        if handler is not None and file is not None:
            raise ValueError("give a file or a handler, not both")
        if handler is not None and not callable(handler):
            raise TypeError(f"handler must be callable, not {type(handler).__name__}")
        fd = -1
        sig = 0
        if handler is None:
            if file is None:
                file = sys.stderr
            if isinstance(file, bool) or not (isinstance(file, int) or hasattr(file, "fileno")):
                raise TypeError(
                    f"file must be a file or a file descriptor, not {type(file).__name__}"
                )
            fd = file if isinstance(file, int) else file.fileno()
            sig = DEFAULT_WATCHDOG_SIGNAL if signum is None else int(signum)
            _register_watchdog_signal(sig, file)  # before the old one goes: it may be the same
        self._unregister_watchdog_signal()
        self._watchdog_signal = sig if handler is None else None
        self._stall_handler = handler
        self._set_watchdog(stall, resolution, fd, sig, handler is not None)

    def stop_watchdog(self) -> None:
        """Stop the watchdog started by start_watchdog() (if any)."""
        self._check_closed()
        self._set_watchdog(0, 0, -1, 0, False)
        self._stall_handler = None
        self._unregister_watchdog_signal()

    def _unregister_watchdog_signal(self):
        sig = self._watchdog_signal
        if sig is not None:
            self._watchdog_signal = None
            _unregister_watchdog_signal(sig)

    def _stop_health_monitors(self):
        """At close and at interpreter exit: the monitor thread must be gone
        before the interpreter (and faulthandler's signal handler) is."""
        if not self.is_closed():
            self._set_watchdog(0, 0, -1, 0, False)
            self._set_slow_threshold(0)
            self._set_lag_resolution(0)
        self._unregister_watchdog_signal()
        self._stall_handler = None
        self._slow_callback_handler = None


# ---- the file watchdogs' signal -----------------------------------------------------

# How many file watchdogs use each signal. faulthandler's registration is
# process-wide: the last start_watchdog(file=...) names the file, and the
# signal is unregistered when the last of them stops.
_WATCHDOG_SIGNAL_USERS: dict[int, int] = {}


def _register_watchdog_signal(sig: int, file) -> None:
    import faulthandler

    faulthandler.register(sig, file=file, all_threads=False, chain=False)
    _WATCHDOG_SIGNAL_USERS[sig] = _WATCHDOG_SIGNAL_USERS.get(sig, 0) + 1


def _unregister_watchdog_signal(sig: int) -> None:
    import faulthandler

    left = _WATCHDOG_SIGNAL_USERS.get(sig, 0) - 1
    if left > 0:
        _WATCHDOG_SIGNAL_USERS[sig] = left
        return
    _WATCHDOG_SIGNAL_USERS.pop(sig, None)
    faulthandler.unregister(sig)


# ---- reports ------------------------------------------------------------------


def _code_location(code: types.CodeType, line: int | None = None) -> str:
    return f"{code.co_filename}:{line if line is not None else code.co_firstlineno}"


def _awaitable_frames(coro):
    """(name, location) for a coroutine and what it awaits, outermost first."""
    seen = 0
    while coro is not None and seen < 100:
        seen += 1
        frame = getattr(coro, "cr_frame", None) or getattr(coro, "gi_frame", None)
        code = getattr(coro, "cr_code", None) or getattr(coro, "gi_code", None)
        name = getattr(coro, "__qualname__", None) or type(coro).__qualname__
        if code is not None:
            line = frame.f_lineno if frame is not None else None
            yield name, _code_location(code, line)
        else:
            yield name, type(coro).__module__
            return
        coro = getattr(coro, "cr_await", None) or getattr(coro, "gi_yieldfrom", None)


def _callback_source(callback):
    while isinstance(callback, functools.partial):
        callback = callback.func
    func = getattr(callback, "__func__", callback)
    code = getattr(func, "__code__", None)
    name = getattr(callback, "__qualname__", None) or repr(callback)
    return name, (_code_location(code) if code is not None else "")


def _report_slow_callback(loop, handle, seconds):
    """Called by the core after a callback the monitor timed as slow."""
    handler = loop._slow_callback_handler
    if handler is None:
        return
    callback = handle._callback
    task = getattr(callback, "__self__", None)
    if not isinstance(task, asyncio.Task):
        task = None
    try:
        if task is not None:
            chain = list(_awaitable_frames(task.get_coro()))
            name, location = chain[0] if chain else (task.get_name(), "")
            await_chain = tuple(f"{n} ({where})" for n, where in chain)
        else:
            name, location = _callback_source(callback)
            await_chain = ()
        handler(SlowCallback(seconds, callback, task, name, location, await_chain, handle))
    except (SystemExit, KeyboardInterrupt):
        raise
    except BaseException as exc:
        loop.call_exception_handler(
            {
                "message": "Exception in the slow callback handler",
                "exception": exc,
                "handle": handle,
            }
        )


def _report_stall(loop, thread, seconds, ended):
    """Called by the monitor thread, with the GIL, when a stall starts or ends."""
    handler = loop._stall_handler
    if handler is None:
        return
    # The core reports pthread_self(), which is what threading.get_ident() is.
    ident = thread
    stack = traceback.StackSummary()
    if not ended:
        frame = sys._current_frames().get(ident)
        if frame is not None:
            stack = traceback.extract_stack(frame)
    try:
        handler(StallReport(bool(ended), seconds, ident, stack))
    except Exception:
        logger.exception("Exception in the stall watchdog handler")


def _stop_all_monitors(loops):
    for loop in list(loops):
        try:
            loop._stop_health_monitors()
        except Exception:  # noqa: BLE001 - at exit, one loop must not keep the others
            pass
