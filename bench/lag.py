"""Loop lag under a fixed mixed workload, measured the portable way on every loop.

``loop_lag(loop, n, period=0.01)`` runs, for n milliseconds, on the loop under test:

- ``CPU_TASKS`` tasks that each burn CPU for a while (a busy loop on
  ``time.perf_counter_ns``), then ``await asyncio.sleep(...)``, over and over:
  bursts of 0.25-1.75 ms (1 ms on average) and sleeps of 0-6 ms (3 ms), drawn
  from a ``random.Random`` seeded per task, so every loop gets the same
  sequence. (Fixed bursts and sleeps lock the workload's phase to the
  probe's, and every sample of a run then waits about as long.)
- ``YIELD_TASKS`` tasks that each do ``await asyncio.sleep(0)`` ``YIELDS``
  times, then ``await asyncio.sleep(0.001)``, over and over;
- ``PAIRS`` socketpairs whose ends are protocol transports on the loop
  (``loop.create_connection(sock=)``): one end sends ``MESSAGE`` bytes, the
  other echoes them, and 1 ms after the whole echo is back the first sends again;
- the probe: a task doing ``await asyncio.sleep(period)`` in a loop, taking
  ``time.perf_counter_ns()`` before and after, and recording
  ``after - before - period``: how late it woke.

The workload keeps the loop busy about half the time on a fast loop (the CPU
bursts alone a third), more on a slow one, which then has less headroom and
queues more: a loop that sleep(0)s forever would be 100% busy on every loop,
and lag would only measure how the queue is ordered.

It returns the workload's steps (CPU bursts + sleep(0) and sleep(0.001)
wake-ups + round trips) over the span as the Measurement, and in
``extra["lag"]``: the probe's lag percentiles (``probe``: p50, p90, p99, max,
mean, in ms, and the sample count), each kind of step counted (``workload``),
and ``busy``, the loop thread's CPU time over the span (``time.thread_time()``:
the fraction of the time the loop was not waiting in its poll). On a loop with
``monitor_lag`` (fastloop) the loop's own lag monitor runs too, at the same
period, and its percentiles go in ``monitor``.

The lag is signed, and ``probe`` has its ``min`` and the number of samples
that woke ``early``, before ``period`` had passed on ``perf_counter``: uvloop
does, down to -1 ms here, a third of its samples. Its timers count from libuv's
clock as of the start of the iteration (``uv_now``, not read again before a
timer is started), which is stale by whatever ran in the iteration before the
``sleep()`` call: here, CPU bursts. Its percentiles are lower by that much.
"""

from __future__ import annotations

import asyncio
import random
import socket
import time

from bench.registry import Measurement

CPU_TASKS = 2
BURST_MS = (0.25, 1.75)  # uniform: 1 ms on average
CPU_SLEEP = (0.0, 0.006)  # seconds, uniform: 3 ms on average
YIELD_TASKS = 20
YIELDS = 5  # sleep(0)s between two sleep(0.001)s
YIELD_SLEEP = 0.001
PAIRS = 4
MESSAGE = 256
PING_INTERVAL = 0.001  # seconds between an echo's return and the next send


def _percentiles(values_ns: list[int]) -> dict[str, float]:
    """Nearest-rank percentiles of the lags, in milliseconds."""
    xs = sorted(values_ns)
    if not xs:
        return {"samples": 0}

    def rank(p: float) -> float:
        k = max(0, min(len(xs) - 1, -(-len(xs) * p // 100) - 1))
        return xs[int(k)] / 1e6

    return {
        "samples": len(xs),
        "p50": rank(50),
        "p90": rank(90),
        "p99": rank(99),
        "max": xs[-1] / 1e6,
        "mean": sum(xs) / len(xs) / 1e6,
        "min": xs[0] / 1e6,
        "early": sum(x < 0 for x in xs),  # woke before `period` had passed
    }


def _monitor_percentiles(monitor) -> dict[str, float]:
    if not monitor.count:
        return {"samples": 0}
    return {
        "samples": monitor.count,
        "p50": monitor.percentile(50) * 1e3,
        "p90": monitor.percentile(90) * 1e3,
        "p99": monitor.percentile(99) * 1e3,
        "max": monitor.max * 1e3,
        "mean": monitor.mean * 1e3,
    }


class _Echo(asyncio.Protocol):
    def connection_made(self, transport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.transport.write(data)


class _Pinger(asyncio.Protocol):
    """Sends MESSAGE bytes, waits for all of them back, sends again 1 ms later until stopped."""

    def __init__(self, loop, state: dict, done: asyncio.Future) -> None:
        self.loop = loop
        self.state = state
        self.done = done
        self.got = 0

    def connection_made(self, transport) -> None:
        self.transport = transport

    def send(self) -> None:
        if self.state["stop"]:
            if not self.done.done():
                self.done.set_result(None)
            return
        self.got = 0
        self.transport.write(b"x" * MESSAGE)

    def data_received(self, data: bytes) -> None:
        self.got += len(data)
        if self.got < MESSAGE:
            return
        if self.got > MESSAGE:
            raise AssertionError(f"echo returned {self.got} bytes for {MESSAGE}")
        self.state["round_trips"] += 1
        self.loop.call_later(PING_INTERVAL, self.send)

    def connection_lost(self, exc) -> None:
        if not self.done.done():
            self.done.set_exception(exc or ConnectionError("ping-pong connection closed early"))


async def _run(loop: asyncio.AbstractEventLoop, n: int, period: float) -> tuple[int, float, dict]:
    state = {"stop": False, "bursts": 0, "yields": 0, "round_trips": 0}

    async def cpu(seed: int) -> None:
        rng = random.Random(seed)
        while not state["stop"]:
            end = time.perf_counter_ns() + int(rng.uniform(*BURST_MS) * 1e6)
            while time.perf_counter_ns() < end:
                pass
            state["bursts"] += 1
            await asyncio.sleep(rng.uniform(*CPU_SLEEP))

    async def yielder() -> None:
        while not state["stop"]:
            for _ in range(YIELDS):
                await asyncio.sleep(0)
            await asyncio.sleep(YIELD_SLEEP)
            state["yields"] += YIELDS + 1

    transports = []
    pingers = []
    for _ in range(PAIRS):
        a, b = socket.socketpair()
        done = loop.create_future()
        ta, pa = await loop.create_connection(lambda done=done: _Pinger(loop, state, done), sock=a)
        tb, _ = await loop.create_connection(_Echo, sock=b)
        transports += [ta, tb]
        pingers.append(pa)

    monitor = loop.monitor_lag(period) if hasattr(loop, "monitor_lag") else None
    tasks = [loop.create_task(cpu(seed)) for seed in range(CPU_TASKS)]
    tasks += [loop.create_task(yielder()) for _ in range(YIELD_TASKS)]
    for p in pingers:
        p.send()
    await asyncio.sleep(0)  # the tasks have started: the workload is running

    period_ns = int(period * 1e9)
    span_ns = n * 1_000_000
    lags: list[int] = []
    if monitor is not None:
        monitor.reset()
    kinds = ("bursts", "yields", "round_trips")
    counts0 = {k: state[k] for k in kinds}
    cpu0 = time.thread_time()
    start = time.perf_counter_ns()
    while True:
        before = time.perf_counter_ns()
        await asyncio.sleep(period)
        after = time.perf_counter_ns()
        lags.append(after - before - period_ns)
        if after - start >= span_ns:
            break
    seconds = (time.perf_counter_ns() - start) / 1e9
    busy = (time.thread_time() - cpu0) / seconds
    counts = {k: state[k] - counts0[k] for k in kinds}
    monitored = _monitor_percentiles(monitor) if monitor is not None else None

    state["stop"] = True
    await asyncio.gather(*tasks)
    await asyncio.gather(*(p.done for p in pingers))
    for t in transports:
        t.close()
    await asyncio.sleep(0)
    lag = {
        "period_ms": period * 1e3,
        "probe": _percentiles(lags),
        "workload": counts,
        "busy": busy,
    }
    if monitored is not None:
        lag["monitor"] = monitored
    return sum(counts.values()), seconds, lag


def loop_lag(loop: asyncio.AbstractEventLoop, n: int, *, period: float) -> Measurement:
    """The mixed workload for n ms with the lag probe; lag percentiles in extra["lag"]."""
    steps, seconds, lag = loop.run_until_complete(_run(loop, n, period))
    if not lag["probe"]["samples"]:
        raise AssertionError("the lag probe took no sample")
    return Measurement(steps, seconds, {"lag": lag})
