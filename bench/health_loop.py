"""The ``fastloop+health`` pseudo-loop: a fastloop loop with its loop-health features on.

``new_event_loop()`` makes a ``fastloop`` loop and turns on, before anything
runs on it:

- ``loop.monitor_lag(LAG_RESOLUTION)``: a lag sample every 10 ms;
- ``loop.set_slow_callback_handler(SLOW_THRESHOLD, handler)``: the handler
  appends what it is given to a list;
- ``loop.start_watchdog(STALL, handler=...)``: a handler that does nothing.

The loop's metrics counters are always on, on the plain ``fastloop`` column
too. The benchmarks compare this column with ``fastloop`` on the rows that
name it (``Benchmark.also_on`` in ``bench/registry.py``): the target is
fastloop+health >= 0.98x fastloop. It is named in ``bench/loops.py`` as
``LoopSpec("fastloop+health", "bench.health_loop", "new_event_loop", ...)``, so
the worker and the server processes (``bench.echo_server``) make it by name
like any other loop. ``summary(loop)`` is read after a sample, not timed.
"""

from __future__ import annotations

import weakref

import fastloop

__version__ = f"{fastloop.__version__} (fastloop, health on)"

LAG_RESOLUTION = 0.01  # seconds between lag samples
SLOW_THRESHOLD = 0.1  # seconds: a callback this long is reported to the handler
STALL = 1.0  # seconds without a poll before the watchdog reports a stall

# Per loop: its lag monitor, the slow callbacks and the stalls reported.
_STATE: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _ignore_stall(report) -> None:
    del report


def new_event_loop():
    loop = fastloop.new_event_loop()
    slow: list = []
    lag = loop.monitor_lag(LAG_RESOLUTION)
    loop.set_slow_callback_handler(SLOW_THRESHOLD, slow.append)
    loop.start_watchdog(STALL, handler=_ignore_stall)
    _STATE[loop] = (lag, slow)
    return loop


def summary(loop) -> dict:
    """The monitors' view of the loop so far (it must not be closed yet)."""
    lag, slow = _STATE[loop]
    metrics = loop.metrics()
    util = loop.utilization()
    return {
        "lag_running": lag.running,
        "lag_count": lag.count,
        "lag_p50_ms": lag.percentile(50) * 1e3 if lag.count else None,
        "lag_p99_ms": lag.percentile(99) * 1e3 if lag.count else None,
        "lag_max_ms": lag.max * 1e3 if lag.count else None,
        "slow_callbacks": len(slow),
        "slowest_ms": max((s.duration for s in slow), default=0.0) * 1e3,
        "iterations": metrics.iterations,
        "callbacks": metrics.callbacks,
        "io_events": metrics.io_events,
        "utilization": util.utilization,
    }
