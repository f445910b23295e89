"""Scaling: how a loop's costs grow with what it holds (pending timers, open connections).

In-process like the micro rows, but each function warms itself up (its
``Benchmark`` has ``warmup=False``): the worker's usual warm-up at a tenth of n
would build the big state twice (a million timers), or, for the memory row,
leave freed memory behind that the measured run would reuse.

Each returns its per-size figures in ``Measurement.extra["scale"]``::

    {"what": "ns per timer op, by timers pending", "points": {"10^3": 512.0, ...},
     "ratio": 1.9, "ratio_label": "10^6 / 10^3"}

which the report prints as a table (loop x size) under the group. The row's
ops/s, the figure the main table compares, is taken at the largest size (for
the memory row: connections per MiB, so that higher is better there too).
"""

from __future__ import annotations

import asyncio
import gc
import os
import resource
import socket
from time import perf_counter

from bench.registry import Measurement, Skip

FAR = 100_000.0  # seconds: the pending timers never fire during a run
SPARE_FDS = 64  # descriptors besides the connections (stdio, the loop's own, the active pair)
WAIT_TIMEOUT = 60.0  # seconds any one timed chain may take before the sample fails


def _label(x: int) -> str:
    """10^k for powers of ten, else the number."""
    k = len(str(x)) - 1
    return f"10^{k}" if x == 10**k and k > 1 else f"{x:,}"


def _scale(what: str, points: dict[str, float], first: str | None, last: str | None) -> dict:
    ratio = points[last] / points[first] if first and last and points[first] else None
    return {
        "what": what,
        "points": points,
        "ratio": ratio,
        "ratio_label": f"{last} / {first}" if ratio is not None else None,
    }


def _never() -> None:
    raise AssertionError("a timer that was never meant to fire fired")


def timer_ops_vs_pending(
    loop: asyncio.AbstractEventLoop, n: int, *, sizes: tuple[int, ...]
) -> Measurement:
    """n timer ops with each of `sizes` timers already pending (far in the future).

    One op is one step of a chain: a timer fires; its callback schedules a far
    timer and cancels it (a timeout that never fires) and schedules the next
    step with ``call_later(0)`` (a timer that fires at the next iteration). So
    each op pushes two timers, cancels one and pops one, with the heap (or
    whatever the loop keeps its timers in) holding `size` others.
    """
    # The cancelled timers' delays, spread over the pending ones' range so that
    # they land inside the structure, not at one end. Computed once, untimed.
    spread = [FAR + (i * 7919 % 10_007) for i in range(n)]
    pending: list[asyncio.TimerHandle] = []

    async def chain(count: int) -> float:
        done = loop.create_future()
        left = count

        def step() -> None:
            nonlocal left
            left -= 1
            loop.call_later(spread[left % n], _never).cancel()
            if left:
                loop.call_later(0, step)
            else:
                done.set_result(None)

        start = perf_counter()
        loop.call_later(0, step)
        async with asyncio.timeout(WAIT_TIMEOUT):
            await done
        return perf_counter() - start

    async def run() -> Measurement:
        points: dict[str, float] = {}
        last_seconds = 0.0
        await chain(max(2, n // 10))  # warm-up, with the first size's timers pending
        for size in sorted(sizes):
            # Increasing delays: each push lands at the end (cheap to make a million).
            for i in range(len(pending), size):
                pending.append(loop.call_later(FAR + i * 1e-3, _never))
            last_seconds = await chain(n)
            points[_label(size)] = last_seconds / n * 1e9
        for handle in pending:
            handle.cancel()
        pending.clear()
        await asyncio.sleep(0)
        labels = [_label(s) for s in sorted(sizes)]
        extra = {
            "scale": _scale("ns per timer op, by timers pending", points, labels[0], labels[-1])
        }
        return Measurement(n, last_seconds, extra)

    return loop.run_until_complete(run())


def _raise_fd_limit(needed: int) -> None:
    """Soft RLIMIT_NOFILE up to the hard one; Skip if that is still under `needed`."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < needed:
        raise Skip(f"needs {needed:,} file descriptors, the hard limit (ulimit -Hn) is {hard:,}")
    if soft != resource.RLIM_INFINITY and soft < needed:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


class _Idle(asyncio.Protocol):
    """An open connection nobody writes to."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        raise AssertionError(f"an idle connection received {len(data)} bytes")


async def _open_idle(loop: asyncio.AbstractEventLoop, count: int) -> tuple[list, list]:
    """`count` transports (count // 2 socketpairs, both ends on the loop)."""
    sockets, transports = [], []
    for _ in range(count // 2):
        sockets += socket.socketpair()
    for sock in sockets:
        transport, _ = await loop.create_connection(_Idle, sock=sock)
        transports.append(transport)
    return sockets, transports


async def _close_all(transports: list) -> None:
    for transport in transports:
        transport.close()
    for _ in range(3):  # connection_lost callbacks run on the next iterations
        await asyncio.sleep(0)


class _Ping(asyncio.Protocol):
    """One end of the active pair: sends a byte, counts the replies."""

    def __init__(self) -> None:
        self.left = 0
        self.done: asyncio.Future | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.left -= len(data)
        if self.left > 0:
            self.transport.write(b"x")
        elif self.done is not None and not self.done.done():
            self.done.set_result(None)


class _Pong(asyncio.Protocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.transport.write(data)


def iteration_vs_idle_connections(
    loop: asyncio.AbstractEventLoop, n: int, *, idle: int
) -> Measurement:
    """n loop iterations that poll I/O, with 0 and then `idle` idle connections open.

    One op is one hop of a byte over one active Unix socketpair (two protocol
    transports on the loop: one writes a byte, the other echoes it): each hop is
    one iteration in which the loop polls the kernel and dispatches one
    readable transport. The idle connections are `idle` transports (`idle` / 2
    socketpairs, both ends opened with ``create_connection(sock=)``) that nothing
    is written to; a loop whose iteration costs grow with its open handles shows
    it in the ratio.
    """
    _raise_fd_limit(idle + SPARE_FDS)
    rounds = max(1, n // 2)  # a round trip is two hops

    async def hops(ping: _Ping, count: int) -> float:
        ping.left = count
        ping.done = loop.create_future()
        start = perf_counter()
        ping.transport.write(b"x")
        async with asyncio.timeout(WAIT_TIMEOUT):
            await ping.done
        return perf_counter() - start

    async def run() -> Measurement:
        a, b = socket.socketpair()
        ping_t, ping = await loop.create_connection(_Ping, sock=a)
        pong_t, _ = await loop.create_connection(_Pong, sock=b)
        await hops(ping, max(1, rounds // 10))  # warm-up
        points = {"0": await hops(ping, rounds) / (2 * rounds) * 1e9}
        _, transports = await _open_idle(loop, idle)
        seconds = await hops(ping, rounds)
        points[_label(idle)] = seconds / (2 * rounds) * 1e9
        await _close_all([*transports, ping_t, pong_t])
        extra = {
            "scale": _scale("ns per iteration, by idle connections open", points, "0", _label(idle))
        }
        return Measurement(2 * rounds, seconds, extra)

    return loop.run_until_complete(run())


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def memory_per_connection(loop: asyncio.AbstractEventLoop, n: int) -> Measurement:
    """Resident memory taken by n idle connections (transport + protocol), per connection.

    The n sockets (n / 2 socketpairs) are made first; the RSS is read (after a
    gc) before and after the loop wraps each in a transport with its protocol
    (``create_connection(sock=)``), so the difference is the loop's own: its
    transport objects, its poll registrations, its buffers, and the protocol
    instances (the same class on every loop). Kernel socket memory is not in the
    RSS. Reported as connections per MiB (higher is better, as everywhere);
    bytes per connection in extra.
    """
    _raise_fd_limit(n + SPARE_FDS)

    async def run() -> Measurement:
        # Warm-up: a few connections opened and closed, so that first-use
        # allocations (lazy imports, caches) are not counted.
        _, warm = await _open_idle(loop, 16)
        await _close_all(warm)
        sockets = []
        for _ in range(n // 2):
            sockets += socket.socketpair()
        gc.collect()
        before = _rss()
        transports = []
        for sock in sockets:
            transport, _ = await loop.create_connection(_Idle, sock=sock)
            transports.append(transport)
        for _ in range(3):
            await asyncio.sleep(0)
        gc.collect()
        grown = _rss() - before
        count = len(transports)
        await _close_all(transports)
        if grown <= 0:
            raise AssertionError(f"RSS did not grow with {count:,} connections ({grown} bytes)")
        per = grown / count
        extra = {
            "scale": _scale(
                "bytes of RSS per connection, by connections open", {_label(count): per}, None, None
            ),
            "bytes_per_connection": per,
            "rss_growth_bytes": grown,
        }
        return Measurement(count, grown / 2**20, extra)

    return loop.run_until_complete(run())
