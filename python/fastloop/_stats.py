"""python -m fastloop --stats: a program's loop health, printed at exit
(and every N seconds with --stats-interval N).

For each fastloop loop the program makes, the recorder turns on the lag
monitor and a slow-callback handler, and prints, to stderr:

    fastloop stats: loop 1, ran 2.31 s, closed
      utilization 42.0%  (active 0.970 s, idle 1.340 s)
      iterations 12,345  callbacks 45,678  I/O events 3,210
      lag, every 10 ms (231 samples): p50 0.12 ms  p90 0.40 ms  p99 12.30 ms  max 201.20 ms
      slowest callbacks (>= 50 ms):
          201.3 ms  main  /tmp/app.py:12
"""

from __future__ import annotations

import asyncio
import atexit
import heapq
import itertools
import os
import sys
import threading
import weakref
from typing import TextIO

_ASYNCIO_DIR = os.path.dirname(asyncio.__file__) + os.sep


def _ms(seconds: float) -> str:
    return f"{seconds * 1e3:.2f} ms"


class StatsRecorder:
    def __init__(
        self,
        *,
        out: TextIO | None = None,
        interval: float | None = None,
        slow: float = 0.05,
        lag_resolution: float = 0.01,
        top: int = 10,
    ):
        self._out = out
        self._interval = interval
        self._slow = slow
        self._lag_resolution = lag_resolution
        self._top = top
        self._numbers = itertools.count(1)
        self._live: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # loop -> record
        self._finished: list[dict] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._ticker: threading.Thread | None = None

    # ---- observer of fastloop.Loop (fastloop._loop._OBSERVERS) ----

    def loop_created(self, loop) -> None:
        record = {"number": next(self._numbers), "slowest": [], "closed": False}
        with self._lock:
            self._live[loop] = record
        loop.monitor_lag(self._lag_resolution)
        loop.set_slow_callback_handler(self._slow, lambda report: self._on_slow(record, report))

    def loop_closing(self, loop) -> None:
        with self._lock:
            record = self._live.pop(loop, None)
        if record is not None:
            record.update(self._snapshot(loop), closed=True)
            self._finished.append(record)

    # ----

    def _on_slow(self, record: dict, report) -> None:
        name, where = report.name, report.location
        # A task's step: name the innermost coroutine outside asyncio too.
        inner = [e for e in report.await_chain[1:] if _ASYNCIO_DIR not in e and ":" in e]
        if inner:
            name = f"{name} -> {inner[-1].split(' (')[0]}"
            where = inner[-1].rsplit(" (", 1)[1].rstrip(")")
        entry = (report.duration, name, where)
        heap = record["slowest"]
        if len(heap) < self._top:
            heapq.heappush(heap, entry)
        else:
            heapq.heappushpop(heap, entry)

    def _snapshot(self, loop) -> dict:
        lag = loop._lag_monitor
        return {
            "utilization": loop.utilization(),
            "metrics": loop.metrics(),
            "lag": None
            if lag is None or lag.count == 0
            else (lag.count, lag.percentile(50), lag.percentile(90), lag.percentile(99), lag.max),
        }

    def _format(self, record: dict) -> list[str]:
        u = record["utilization"]
        m = record["metrics"]
        state = "closed" if record["closed"] else "open"
        lines = [
            f"fastloop stats: loop {record['number']}, ran {u.idle + u.active:.2f} s, {state}",
            f"  utilization {u.utilization:.1%}  (active {u.active:.3f} s, idle {u.idle:.3f} s)",
            f"  iterations {m.iterations:,}  callbacks {m.callbacks:,}  I/O events {m.io_events:,}",
        ]
        if record["lag"] is not None:
            count, p50, p90, p99, high = record["lag"]
            lines.append(
                f"  lag, every {self._lag_resolution * 1e3:g} ms ({count} samples): "
                f"p50 {_ms(p50)}  p90 {_ms(p90)}  p99 {_ms(p99)}  max {_ms(high)}"
            )
        slowest = sorted(record["slowest"], reverse=True)
        if slowest:
            lines.append(f"  slowest callbacks (>= {self._slow * 1e3:g} ms):")
            lines.extend(
                f"    {seconds * 1e3:9.1f} ms  {name}  {where}" for seconds, name, where in slowest
            )
        else:
            lines.append(f"  no callback ran {self._slow * 1e3:g} ms or longer")
        return lines

    def _print(self, records: list[dict]) -> None:
        out = self._out or sys.stderr
        text = "\n".join(line for r in records for line in self._format(r))
        if text:
            out.write(text + "\n")
            out.flush()

    def _open_records(self) -> list[dict]:
        with self._lock:
            live = list(self._live.items())
        records = []
        for loop, record in live:
            if loop.is_closed():
                continue
            records.append({**record, "slowest": list(record["slowest"]), **self._snapshot(loop)})
        return records

    def report_now(self) -> None:
        self._print(self._open_records())

    def report_at_exit(self) -> None:
        self._stop.set()
        if self._ticker is not None:
            # Joined, not left running: a daemon thread alive at exit is
            # memory the interpreter never frees (LSan reports it).
            self._ticker.join()
        self._print([*self._finished, *self._open_records()])

    def _tick(self) -> None:
        while not self._stop.wait(self._interval):
            self.report_now()

    def install(self) -> None:
        from . import _loop

        _loop._OBSERVERS.append(self)
        atexit.register(self.report_at_exit)
        if self._interval:
            self._ticker = threading.Thread(target=self._tick, name="fastloop-stats", daemon=True)
            self._ticker.start()
