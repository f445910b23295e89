"""Micro-benchmarks: the loop's own machinery, through the public asyncio API.

Each function takes the loop under test (new, not running) and a work size
``n``, runs the work to completion on that loop, checks it was all done, and
returns a ``Measurement`` of the operations done and the seconds they took.
The timed span excludes making the loop and importing anything; it starts
just before the first operation is scheduled.

Hot code calls ``loop.call_soon(...)`` etc. on every iteration, as real programs
do, instead of caching bound methods in locals: the cost of the attribute lookup
is part of what a loop implementation can make cheaper or dearer.
"""

from __future__ import annotations

import asyncio
import threading
from time import perf_counter

from bench.registry import Measurement


def _expect(what: str, got: int, want: int) -> None:
    if got != want:
        raise AssertionError(f"{what}: expected {want}, got {got}")


def call_soon_chained(loop: asyncio.AbstractEventLoop, n: int) -> Measurement:
    """One callback re-schedules itself with call_soon, n times in all."""
    done = loop.create_future()
    count = 0

    def step() -> None:
        nonlocal count
        count += 1
        if count < n:
            loop.call_soon(step)
        else:
            done.set_result(None)

    start = perf_counter()
    loop.call_soon(step)
    loop.run_until_complete(done)
    seconds = perf_counter() - start
    _expect("callbacks run", count, n)
    return Measurement(n, seconds)


def call_soon_batched(loop: asyncio.AbstractEventLoop, n: int) -> Measurement:
    """One callback schedules n callbacks (one argument each); they all run."""
    done = loop.create_future()
    count = 0

    def tick(_i: int) -> None:
        nonlocal count
        count += 1

    def burst() -> None:
        for i in range(n):
            loop.call_soon(tick, i)
        # Scheduled last, so it runs after every tick, in the same iteration.
        loop.call_soon(done.set_result, None)

    start = perf_counter()
    loop.call_soon(burst)
    loop.run_until_complete(done)
    seconds = perf_counter() - start
    _expect("callbacks run", count, n)
    return Measurement(n, seconds)


def call_later_fired(loop: asyncio.AbstractEventLoop, n: int) -> Measurement:
    """n call_later with delays spread over 0..1 ms; all of them fire."""
    done = loop.create_future()
    count = 0

    def fire() -> None:
        nonlocal count
        count += 1
        if count == n:
            done.set_result(None)

    def schedule() -> None:
        for i in range(n):
            loop.call_later((i % 1001) * 1e-6, fire)

    start = perf_counter()
    loop.call_soon(schedule)
    loop.run_until_complete(done)
    seconds = perf_counter() - start
    _expect("timers fired", count, n)
    return Measurement(n, seconds)


def timers_cancelled(loop: asyncio.AbstractEventLoop, n: int) -> Measurement:
    """n call_later(10 s and more) scheduled, then all cancelled.

    This is the timeout that never fires (asyncio.timeout, wait_for, a protocol's
    idle timer). One short timer, scheduled after the cancellations, ends the
    run, so the timed span includes whatever the loop does with the cancelled
    timers when it next looks at its timers.
    """
    done = loop.create_future()
    fired = 0
    handles: list[asyncio.TimerHandle] = []

    def never() -> None:
        nonlocal fired
        fired += 1

    def schedule_and_cancel() -> None:
        for i in range(n):
            handles.append(loop.call_later(10.0 + i * 1e-6, never))
        for handle in handles:
            handle.cancel()
        loop.call_later(0.0, done.set_result, None)

    start = perf_counter()
    loop.call_soon(schedule_and_cancel)
    loop.run_until_complete(done)
    seconds = perf_counter() - start
    _expect("timers cancelled", sum(h.cancelled() for h in handles), n)
    _expect("cancelled timers fired", fired, 0)
    return Measurement(n, seconds)


def sleep0_tasks(loop: asyncio.AbstractEventLoop, n: int, tasks: int = 100) -> Measurement:
    """`tasks` tasks each do `await asyncio.sleep(0)` n // tasks times."""
    per_task = max(1, n // tasks)
    count = 0

    async def worker() -> None:
        nonlocal count
        for _ in range(per_task):
            await asyncio.sleep(0)
            count += 1

    async def main() -> None:
        await asyncio.gather(*[loop.create_task(worker()) for _ in range(tasks)])

    start = perf_counter()
    loop.run_until_complete(main())
    seconds = perf_counter() - start
    _expect("sleeps", count, tasks * per_task)
    return Measurement(tasks * per_task, seconds)


def create_task_gather(loop: asyncio.AbstractEventLoop, n: int) -> Measurement:
    """Create n trivial tasks (each returns at once) and gather them."""
    count = 0

    async def trivial() -> None:
        nonlocal count
        count += 1

    async def main() -> None:
        await asyncio.gather(*[loop.create_task(trivial()) for _ in range(n)])

    start = perf_counter()
    loop.run_until_complete(main())
    seconds = perf_counter() - start
    _expect("tasks run", count, n)
    return Measurement(n, seconds)


def future_roundtrip(loop: asyncio.AbstractEventLoop, n: int) -> Measurement:
    """A coroutine awaits loop.create_future(), resolved by a call_soon callback; n times."""
    count = 0

    async def main() -> None:
        nonlocal count
        for i in range(n):
            fut = loop.create_future()
            loop.call_soon(fut.set_result, i)
            count += (await fut) == i

    start = perf_counter()
    loop.run_until_complete(main())
    seconds = perf_counter() - start
    _expect("futures resolved", count, n)
    return Measurement(n, seconds)


def queue_pingpong(loop: asyncio.AbstractEventLoop, n: int) -> Measurement:
    """Two tasks pass a token back and forth over two Queue(maxsize=1); n round trips."""
    count = 0

    async def main() -> None:
        nonlocal count
        ping: asyncio.Queue[int] = asyncio.Queue(maxsize=1)
        pong: asyncio.Queue[int] = asyncio.Queue(maxsize=1)

        async def responder() -> None:
            for _ in range(n):
                await pong.put(await ping.get())

        task = loop.create_task(responder())
        for i in range(n):
            await ping.put(i)
            count += (await pong.get()) == i
        await task

    start = perf_counter()
    loop.run_until_complete(main())
    seconds = perf_counter() - start
    _expect("round trips", count, n)
    return Measurement(n, seconds)


def call_soon_threadsafe(loop: asyncio.AbstractEventLoop, n: int) -> Measurement:
    """Another thread calls call_soon_threadsafe n times; the loop runs them.

    Timed from the producer's first call to the loop running the last
    callback: the whole hand-over, production and consumption. (Timing only
    the consuming side rewards a loop that lets the producer run far ahead
    before it wakes, which is GIL scheduling, not loop speed.)
    """
    done = loop.create_future()
    count = 0
    first = last = 0.0

    def received() -> None:
        nonlocal count, last
        count += 1
        if count == n:
            last = perf_counter()
            done.set_result(None)

    def producer() -> None:
        nonlocal first
        first = perf_counter()
        for _ in range(n):
            loop.call_soon_threadsafe(received)

    thread = threading.Thread(target=producer, name="bench-producer")
    loop.call_soon(thread.start)
    try:
        loop.run_until_complete(done)
    finally:
        if thread.ident is not None:
            thread.join()
    _expect("callbacks received", count, n)
    return Measurement(n, last - first)
