"""OpenTelemetry metrics for a fastloop loop's health, through opentelemetry-api.

    from fastloop.otel import LoopInstrumentation

    loop = asyncio.get_running_loop()
    loop.monitor_lag()                        # optional: adds the delay gauges
    instrumentation = LoopInstrumentation(loop)   # the global MeterProvider, or meter_provider=
    ...
    instrumentation.uninstrument()

fastloop does not depend on OpenTelemetry: importing this module needs
opentelemetry-api (an SDK, or another implementation, to export anything).
The instruments follow the semantic conventions' Node.js event loop metrics
(nodejs.eventloop.delay.*, .utilization, .time) under the prefix
"fastloop.eventloop" (loop counters under "fastloop.loop"). All are
asynchronous instruments: they read the loop when the reader collects, from
whatever thread it runs in. A closed or collected loop reports nothing.
"""

from __future__ import annotations

import weakref
from collections.abc import Mapping

from opentelemetry import metrics
from opentelemetry.metrics import CallbackOptions, Observation

__all__ = ["LoopInstrumentation"]

# (kind, metrics() field, unit, description): fastloop.loop.<field>
_LOOP_FIELDS = (
    ("counter", "iterations", "{iteration}", "Event loop iterations run"),
    ("counter", "callbacks", "{callback}", "Callbacks run from the ready queue"),
    ("counter", "io_events", "{event}", "I/O callbacks into Python"),
    ("updown", "ready", "{callback}", "Callbacks waiting in the ready queue"),
    ("updown", "timers", "{timer}", "Timers scheduled and not cancelled"),
    ("updown", "fds", "{fd}", "File descriptors watched with add_reader/add_writer"),
    ("updown", "transports", "{transport}", "Native transports, servers and subprocess handles"),
)

_LAG = (
    ("min", "The minimum event loop delay sampled"),
    ("max", "The maximum event loop delay sampled"),
    ("mean", "The mean of the event loop delay samples"),
    ("stddev", "The standard deviation of the event loop delay samples"),
    ("p50", "The 50th percentile of the event loop delay samples"),
    ("p90", "The 90th percentile of the event loop delay samples"),
    ("p99", "The 99th percentile of the event loop delay samples"),
)


class LoopInstrumentation:
    """Registers observable instruments reading `loop` on each collection."""

    def __init__(
        self,
        loop,
        *,
        meter_provider: metrics.MeterProvider | None = None,
        attributes: Mapping[str, str] | None = None,
    ):
        if not hasattr(loop, "metrics"):
            raise TypeError(f"a fastloop loop was expected, not {type(loop).__name__}")
        from . import __version__

        self._loop = weakref.ref(loop)
        self._attributes = dict(attributes or {})
        self._last_utilization = None
        self._enabled = True
        meter = metrics.get_meter("fastloop", __version__, meter_provider=meter_provider)
        kinds = {
            "counter": meter.create_observable_counter,
            "updown": meter.create_observable_up_down_counter,
        }
        self._instruments = [
            kinds[kind](f"fastloop.loop.{field}", [self._field(field)], unit, doc)
            for kind, field, unit, doc in _LOOP_FIELDS
        ]
        self._instruments += [
            meter.create_observable_counter(
                "fastloop.eventloop.time",
                [self._time],
                "s",
                "Seconds the event loop spent idle (state=idle) or running (state=active)",
            ),
            meter.create_observable_gauge(
                "fastloop.eventloop.utilization",
                [self._utilization],
                "1",
                "Event loop utilization since the previous collection",
            ),
        ]
        for key, doc in _LAG:
            self._instruments.append(
                meter.create_observable_gauge(
                    f"fastloop.eventloop.delay.{key}", [self._lag(key)], "s", doc
                )
            )

    def uninstrument(self) -> None:
        """Stop reporting (the API cannot remove instruments; they go quiet)."""
        self._enabled = False

    def _open_loop(self):
        loop = self._loop()
        if not self._enabled or loop is None or loop.is_closed():
            return None
        return loop

    def _field(self, name):
        def observe(options: CallbackOptions):
            loop = self._open_loop()
            if loop is None:
                return []
            return [Observation(getattr(loop.metrics(), name), self._attributes)]

        return observe

    def _time(self, options: CallbackOptions):
        loop = self._open_loop()
        if loop is None:
            return []
        m = loop.metrics()
        return [
            Observation(m.idle_time, {**self._attributes, "state": "idle"}),
            Observation(m.active_time, {**self._attributes, "state": "active"}),
        ]

    def _utilization(self, options: CallbackOptions):
        loop = self._open_loop()
        if loop is None:
            return []
        now = loop.utilization()
        prev, self._last_utilization = self._last_utilization, now
        idle, active = now.idle, now.active
        if prev is not None:
            idle, active = idle - prev.idle, active - prev.active
        value = active / (idle + active) if idle + active > 0 else 0.0
        return [Observation(value, self._attributes)]

    def _lag(self, key):
        def observe(options: CallbackOptions):
            loop = self._open_loop()
            if loop is None or loop._lag_monitor is None:
                return []
            lag = loop._lag_monitor
            value = lag.percentile(int(key[1:])) if key.startswith("p") else getattr(lag, key)
            return [Observation(value, self._attributes)]

        return observe
