"""UDP one way: datagrams/s from one endpoint to another, both on the loop under test.

The round-trip rows (``udp_pingpong_*``) are echo rows (``bench.echo`` with
``--transport udp``: a datagram server on the loop, the C load generator as
client). The one-way rows run in-process, like the micro rows: a sending and a
receiving endpoint made with ``loop.create_datagram_endpoint`` on the loop under
test, so every loop does the same work on both sides (``sendto``, the read
readiness, ``datagram_received``) and the count is taken where the datagrams
arrive.

Flow control, so that nothing is lost to a full receive buffer: the sender sends
a window of W datagrams, then waits until the receiver has seen the last of
them (or LOSS_TIMEOUT has passed), then sends the next window. W is well under
what the receiver's socket buffer holds (1 MiB ``SO_RCVBUF``, as the echo
servers have), so on a working loop nothing is lost; a datagram that does not
arrive is counted as lost (the stamps say which) and the row reports the
datagrams actually received over the timed span. Windows alternate between two
stamp sets, so that a datagram arriving after its window gave up on it is
recognised and ignored (counted as late), not taken for one of the next window.
"""

from __future__ import annotations

import asyncio
import socket
from time import perf_counter

from bench.registry import Measurement

HOST = "127.0.0.1"
RCVBUF = 1 << 20  # as bench/echo_server.py
LOSS_TIMEOUT = 0.25  # seconds a window waits for its last datagram before counting losses
STAMP = 4  # bytes of the stamp: the window's parity (top bit), the index in the window
PARITY = 1 << 31


class _Sink(asyncio.DatagramProtocol):
    """Counts datagrams; checks each one's size, stamp and body."""

    def __init__(self, size: int, body: bytes) -> None:
        self.size = size
        self.body = body
        self.parity = 0  # the current window's parity bit
        self.expected = 0  # the index of the next datagram of the window
        self.received = 0  # datagrams of the current window received
        self.late = 0  # datagrams of an earlier window, ignored
        self.last = -1  # the index that ends the window
        self.done: asyncio.Future | None = None
        self.error: Exception | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def datagram_received(self, data: bytes, addr) -> None:
        stamp = int.from_bytes(data[:STAMP], "little")
        if stamp & PARITY != self.parity and len(data) == self.size:
            self.late += 1
            return
        stamp &= ~PARITY
        if len(data) != self.size or not data.endswith(self.body) or stamp < self.expected:
            self.error = AssertionError(
                f"datagram {stamp} of {len(data)} bytes: not the one sent "
                f"({self.size} bytes, stamp {self.expected} expected)"
            )
            self._wake()
            return
        self.received += 1
        self.expected = stamp + 1  # a gap in the stamps is a loss, counted at the window's end
        if stamp == self.last:
            self._wake()

    def error_received(self, exc: Exception) -> None:
        self.error = exc
        self._wake()

    def _wake(self) -> None:
        if self.done is not None and not self.done.done():
            self.done.set_result(None)


def udp_oneway(loop: asyncio.AbstractEventLoop, n: int, *, size: int, window: int) -> Measurement:
    """n datagrams of `size` bytes, `window` at a time, from one endpoint to another."""
    body = bytes((k * 31 + 7) & 0xFF for k in range(size - STAMP))
    datagrams = [
        [(parity | i).to_bytes(STAMP, "little") + body for i in range(window)]
        for parity in (0, PARITY)
    ]

    async def run() -> Measurement:
        rx, sink = await loop.create_datagram_endpoint(
            lambda: _Sink(size, body), local_addr=(HOST, 0)
        )
        rx.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RCVBUF)
        tx, _ = await loop.create_datagram_endpoint(
            asyncio.DatagramProtocol, remote_addr=rx.get_extra_info("sockname")
        )
        received = lost = 0
        try:
            start = perf_counter()
            sent = 0
            while sent < n:
                count = min(window, n - sent)
                parity = sink.parity = PARITY - sink.parity if sent else 0
                batch = datagrams[parity != 0]
                sink.expected, sink.received, sink.last = 0, 0, count - 1
                sink.done = loop.create_future()
                timer = loop.call_later(LOSS_TIMEOUT, sink._wake)
                for i in range(count):
                    tx.sendto(batch[i])
                await sink.done
                timer.cancel()
                if sink.error is not None:
                    raise sink.error
                if sink.received == 0:
                    raise AssertionError(f"none of {count} datagrams arrived in {LOSS_TIMEOUT} s")
                sent += count
                received += sink.received
                lost += count - sink.received
            seconds = perf_counter() - start
        finally:
            tx.close()
            rx.close()
        extra = {"lost": lost, "late": sink.late, "window": window, "size": size}
        return Measurement(received, seconds, extra)

    return loop.run_until_complete(run())
