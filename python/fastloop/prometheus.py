"""A prometheus_client collector for a fastloop loop's health.

    from prometheus_client import REGISTRY, start_http_server
    from fastloop.prometheus import LoopCollector

    loop = asyncio.get_running_loop()
    loop.monitor_lag()                     # optional: adds the lag gauges
    REGISTRY.register(LoopCollector(loop))
    start_http_server(9100)

fastloop does not depend on prometheus_client: importing this module needs it.
The names follow prom-client's Node.js defaults (nodejs_eventloop_lag_*),
with the prefix `namespace` (default "fastloop"). The loop is held weakly: a
closed or collected loop exports nothing. Collection may run in any thread
(prometheus_client's HTTP server has its own).
"""

from __future__ import annotations

import weakref
from collections.abc import Iterable, Mapping

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

__all__ = ["LoopCollector"]

_COUNTERS = (
    ("iterations", "loop_iterations", "Event loop iterations run"),
    (
        "callbacks",
        "loop_callbacks",
        "Callbacks run from the ready queue (call_soon, timers, task steps)",
    ),
    (
        "io_events",
        "loop_io_events",
        "I/O callbacks into Python (protocol callbacks, accepts, closes)",
    ),
    ("idle_time", "loop_idle_seconds", "Seconds the loop spent blocked in the kernel, waiting"),
    ("active_time", "loop_active_seconds", "Seconds the loop spent running"),
)
_GAUGES = (
    ("ready", "loop_ready_callbacks", "Callbacks waiting in the ready queue"),
    ("timers", "loop_timers", "Timers scheduled and not cancelled"),
    ("fds", "loop_watched_fds", "File descriptors watched with add_reader/add_writer"),
    ("transports", "loop_transports", "Native transports, servers and subprocess handles open"),
)
_LAG = (
    ("min", "min_seconds", "The minimum event loop lag sampled"),
    ("max", "max_seconds", "The maximum event loop lag sampled"),
    ("mean", "mean_seconds", "The mean of the event loop lag samples"),
    ("stddev", "stddev_seconds", "The standard deviation of the event loop lag samples"),
    (50, "p50_seconds", "The 50th percentile of the event loop lag samples"),
    (90, "p90_seconds", "The 90th percentile of the event loop lag samples"),
    (99, "p99_seconds", "The 99th percentile of the event loop lag samples"),
)


class LoopCollector:
    """Exports loop.metrics() and, while loop.monitor_lag() runs, its histogram."""

    def __init__(
        self, loop, *, namespace: str = "fastloop", labels: Mapping[str, str] | None = None
    ):
        if not hasattr(loop, "metrics"):
            raise TypeError(f"a fastloop loop was expected, not {type(loop).__name__}")
        self._loop = weakref.ref(loop)
        self._prefix = f"{namespace}_" if namespace else ""
        self._labels = dict(labels or {})

    def _family(self, kind, name, documentation, value):
        family = kind(self._prefix + name, documentation, labels=list(self._labels))
        family.add_metric(list(self._labels.values()), value)
        return family

    def collect(self) -> Iterable[Metric]:
        loop = self._loop()
        if loop is None or loop.is_closed():
            return
        metrics = loop.metrics()
        for field, name, doc in _COUNTERS:
            yield self._family(CounterMetricFamily, name, doc, getattr(metrics, field))
        for field, name, doc in _GAUGES:
            yield self._family(GaugeMetricFamily, name, doc, getattr(metrics, field))
        lag = loop._lag_monitor
        if lag is None:
            return
        count, low, high, mean, stddev = loop._lag_stats()
        values = {"min": low, "max": high, "mean": mean, "stddev": stddev}
        for key, suffix, doc in _LAG:
            value = values[key] if isinstance(key, str) else lag.percentile(key)
            yield self._family(GaugeMetricFamily, f"eventloop_lag_{suffix}", doc, value)
        yield self._family(
            CounterMetricFamily, "eventloop_lag_samples", "Event loop lag samples taken", count
        )
