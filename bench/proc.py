"""Subprocesses: spawn rate and pipe throughput, through asyncio.create_subprocess_exec.

Each function runs on the loop under test (new, not running) like the micro rows,
and every child is reaped (its ``wait()`` returned) before the function returns,
so the warm-up run leaves nothing behind for the timed one. The children are
small coreutils programs found once, by absolute path, at import: a row whose
program is missing raises ``Skip``. What a child prints or exits with is
checked, so a run that went wrong raises instead of counting.

The timed span includes the loop's whole share: fork/exec (or posix_spawn), the
child watcher (asyncio's default watcher starts a thread per child on 3.11;
libuv uses SIGCHLD), the pipe transports and the StreamReader/StreamWriter on
top of them. The children themselves cost the same on every loop.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
from asyncio.streams import FlowControlMixin
from asyncio.subprocess import DEVNULL, PIPE
from time import perf_counter

from bench.registry import Measurement, Skip

TRUE = shutil.which("true")
CAT = shutil.which("cat")
HEAD = shutil.which("head")
WC = shutil.which("wc")

MIB = 1 << 20
CHUNK = 65536  # bytes per read() / write() of the pipe rows
PAYLOAD = bytes(range(256)) * 4  # 1 KiB, for spawn_pipe_communicate


def _need(name: str, path: str | None) -> str:
    if path is None:
        raise Skip(f"`{name}` not found on PATH")
    return path


def _timed_runs(loop: asyncio.AbstractEventLoop, n: int, concurrency: int, one) -> Measurement:
    """Time n runs of `one()`, at most `concurrency` at a time, and check they all ran.

    `concurrency` tasks each take the next unit from a shared counter until
    none is left: no semaphore and no task per unit, so the harness adds the
    same few operations per process on every loop.
    """
    remaining = n
    done = 0

    async def puller() -> None:
        nonlocal remaining, done
        while remaining > 0:
            remaining -= 1
            await one()
            done += 1

    async def main() -> None:
        await asyncio.gather(*[loop.create_task(puller()) for _ in range(min(concurrency, n))])

    start = perf_counter()
    loop.run_until_complete(main())
    seconds = perf_counter() - start
    if done != n:
        raise AssertionError(f"processes run: expected {n}, got {done}")
    return Measurement(n, seconds)


def spawn_exit(loop: asyncio.AbstractEventLoop, n: int, concurrency: int = 16) -> Measurement:
    """n runs of `true` (stdin, stdout, stderr to /dev/null), `concurrency` in flight."""
    true = _need("true", TRUE)

    async def one() -> None:
        proc = await asyncio.create_subprocess_exec(
            true, stdin=DEVNULL, stdout=DEVNULL, stderr=DEVNULL
        )
        if await proc.wait() != 0:
            raise AssertionError(f"`true` exited with {proc.returncode}")

    return _timed_runs(loop, n, concurrency, one)


def spawn_pipe_communicate(
    loop: asyncio.AbstractEventLoop, n: int, concurrency: int = 16
) -> Measurement:
    """n runs of `cat` with stdin and stdout piped: communicate(1 KiB), output checked."""
    cat = _need("cat", CAT)

    async def one() -> None:
        proc = await asyncio.create_subprocess_exec(cat, stdin=PIPE, stdout=PIPE, stderr=DEVNULL)
        out, _ = await proc.communicate(PAYLOAD)
        if out != PAYLOAD:
            raise AssertionError(f"`cat` echoed {len(out)} other bytes")
        if proc.returncode != 0:
            raise AssertionError(f"`cat` exited with {proc.returncode}")

    return _timed_runs(loop, n, concurrency, one)


def pipe_read_throughput(loop: asyncio.AbstractEventLoop, n: int) -> Measurement:
    """`head -c n MiB /dev/zero` into the parent's StreamReader, read(64 KiB) to EOF (ops: MiB)."""
    head = _need("head", HEAD)
    expected = n * MIB

    async def main() -> tuple[int, float]:
        start = perf_counter()
        proc = await asyncio.create_subprocess_exec(
            head, "-c", str(expected), "/dev/zero", stdin=DEVNULL, stdout=PIPE, stderr=DEVNULL
        )
        total = 0
        while data := await proc.stdout.read(CHUNK):
            total += len(data)
        rc = await proc.wait()
        seconds = perf_counter() - start
        if rc != 0:
            raise AssertionError(f"`head` exited with {rc}")
        return total, seconds

    total, seconds = loop.run_until_complete(main())
    if total != expected:
        raise AssertionError(f"bytes read: expected {expected}, got {total}")
    return Measurement(n, seconds)


def pipe_write_throughput(loop: asyncio.AbstractEventLoop, n: int) -> Measurement:
    """The parent writes n MiB in 64 KiB write() + drain() to `wc -c`, which counts them.

    The child's stdin is whatever `PIPE` means on the loop under test: a pipe on
    asyncio, rloop and fastloop, a Unix socketpair on uvloop.
    """
    wc = _need("wc", WC)

    async def main() -> tuple[bytes, float]:
        start = perf_counter()
        proc = await asyncio.create_subprocess_exec(
            wc, "-c", stdin=PIPE, stdout=PIPE, stderr=DEVNULL
        )
        await _write_mib(proc.stdin, n)
        proc.stdin.close()
        return await _count_and_time(proc, start)

    return _check_count(n, *loop.run_until_complete(main()))


def fifo_write_throughput(loop: asyncio.AbstractEventLoop, n: int) -> Measurement:
    """pipe_write_throughput into an os.pipe() made by the parent, on every loop.

    The child gets the read end as its stdin (an fd); the parent writes through
    `loop.connect_write_pipe`. Every loop writes into the same kernel object,
    so the row compares the loops' write paths alone.
    """
    read_fd, write_fd = os.pipe()
    return _write_into(loop, n, read_fd, open(write_fd, "wb", buffering=0))


def socketpair_write_throughput(loop: asyncio.AbstractEventLoop, n: int) -> Measurement:
    """fifo_write_throughput with a Unix socketpair, what uvloop gives children for PIPE."""
    ours, theirs = socket.socketpair()
    return _write_into(loop, n, theirs.detach(), ours)


def _write_into(loop: asyncio.AbstractEventLoop, n: int, child_fd: int, ours) -> Measurement:
    wc = _need("wc", WC)

    async def main() -> tuple[bytes, float]:
        start = perf_counter()
        try:
            proc = await asyncio.create_subprocess_exec(
                wc, "-c", stdin=child_fd, stdout=PIPE, stderr=DEVNULL
            )
        finally:
            os.close(child_fd)
        transport, protocol = await loop.connect_write_pipe(FlowControlMixin, ours)
        writer = asyncio.StreamWriter(transport, protocol, None, loop)
        await _write_mib(writer, n)
        writer.close()
        return await _count_and_time(proc, start)

    try:
        return _check_count(n, *loop.run_until_complete(main()))
    finally:
        ours.close()  # a no-op once the transport has closed it


async def _write_mib(writer: asyncio.StreamWriter, n: int) -> None:
    chunk = bytes(CHUNK)
    for _ in range(n * MIB // CHUNK):
        writer.write(chunk)
        await writer.drain()


async def _count_and_time(proc: asyncio.subprocess.Process, start: float) -> tuple[bytes, float]:
    out = await proc.stdout.read()
    rc = await proc.wait()
    seconds = perf_counter() - start
    if rc != 0:
        raise AssertionError(f"`wc` exited with {rc}")
    return out, seconds


def _check_count(n: int, out: bytes, seconds: float) -> Measurement:
    if out.strip() != str(n * MIB).encode():
        raise AssertionError(f"`wc -c` counted {out.strip()!r} bytes, expected {n * MIB}")
    return Measurement(n, seconds)
