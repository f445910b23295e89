"""An echo server on one event loop.

    python -m bench.echo_server --loop L --style S --transport T [--path P]
    python -m bench.echo_server --loop L --style datagram --transport udp

Run by the echo benchmarks (``bench.echo``) in a fresh process per sample, and
usable by hand (e.g. under ``perf record``) against ``bench/loadgen/bin/loadgen``.
It makes the loop, starts the server and prints one line on stdout once it
listens::

    READY tcp 127.0.0.1 PORT
    READY unix PATH
    READY udp 127.0.0.1 PORT

then serves until it is killed (SIGTERM/SIGINT: the default action, nothing to
clean up; the driver removes the Unix socket's directory). If it cannot start,
it prints the traceback on stderr and exits with status 1. On a loop whose spec
has a summary (``fastloop+health``), SIGTERM stops the loop instead, and the
server prints ``HEALTH {json}`` (the monitors' view: lag samples, slow
callbacks, utilization) on stderr before it exits; the driver keeps it.

Every style echoes byte for byte, reading at most 64 KiB at a time:

- ``protocol``: ``asyncio.Protocol``; ``data_received(data)`` -> ``transport.write(data)``.
- ``buffered``: ``asyncio.BufferedProtocol``; the loop reads into a 64 KiB
  buffer of the protocol, ``buffer_updated(n)`` writes that slice back. The
  buffer is reused only when the transport holds no unsent data (a loop may keep
  a reference to a written memoryview until it is sent); otherwise a new one is
  taken, so the echo never changes under the loop's feet.
- ``streams``: ``asyncio.start_server`` / ``start_unix_server``; per connection
  ``await reader.read(65536)`` -> ``writer.write(data)`` + ``await writer.drain()``.
- ``sockets``: a listening socket and ``loop.sock_accept``; per connection a task
  doing ``await loop.sock_recv(conn, 65536)`` -> ``await loop.sock_sendall(conn, data)``
  (TCP_NODELAY set on each accepted socket, as the transports of asyncio and
  uvloop do by themselves).

Over UDP there is one style, ``datagram``: ``loop.create_datagram_endpoint`` with
``local_addr=("127.0.0.1", 0)`` and an ``asyncio.DatagramProtocol`` whose
``datagram_received(data, addr)`` does ``transport.sendto(data, addr)``. Its
socket gets a 1 MiB ``SO_RCVBUF`` (the Linux default of 208 KiB drops a datagram
now and then with ten 8 KiB datagrams in flight); the C ceiling server does the same.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import socket
import sys

from bench import loops
from bench.server_process import announce_ready, start_or_report

STYLES = ("protocol", "buffered", "streams", "sockets", "datagram")
TRANSPORTS = ("tcp", "unix", "udp")
HOST = "127.0.0.1"
READ_SIZE = 65536
UDP_RCVBUF = 1 << 20  # as bench/loadgen/uv_echo.c


class EchoProtocol(asyncio.Protocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.transport.write(data)


class EchoBufferedProtocol(asyncio.BufferedProtocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        self.view = memoryview(bytearray(READ_SIZE))

    def get_buffer(self, sizehint: int) -> memoryview:
        if self.transport.get_write_buffer_size():
            self.view = memoryview(bytearray(READ_SIZE))
        return self.view

    def buffer_updated(self, nbytes: int) -> None:
        self.transport.write(self.view[:nbytes])


class EchoDatagramProtocol(asyncio.DatagramProtocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def datagram_received(self, data: bytes, addr) -> None:
        self.transport.sendto(data, addr)


async def _stream_echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while True:
            data = await reader.read(READ_SIZE)
            if not data:
                break
            writer.write(data)
            await writer.drain()
    except ConnectionError:
        pass
    finally:
        writer.close()


async def _sock_echo(loop: asyncio.AbstractEventLoop, conn: socket.socket) -> None:
    with conn:
        try:
            while True:
                data = await loop.sock_recv(conn, READ_SIZE)
                if not data:
                    break
                await loop.sock_sendall(conn, data)
        except ConnectionError:
            pass


def _listening_socket(transport: str, path: str | None) -> socket.socket:
    if transport == "tcp":
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((HOST, 0))
    else:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.bind(path)
    sock.listen(128)
    sock.setblocking(False)
    return sock


async def _sock_server(loop: asyncio.AbstractEventLoop, lsock: socket.socket) -> None:
    tasks = set()
    while True:
        conn, _ = await loop.sock_accept(lsock)
        conn.setblocking(False)
        if conn.family != socket.AF_UNIX:
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        task = loop.create_task(_sock_echo(loop, conn))
        tasks.add(task)
        task.add_done_callback(tasks.discard)


async def start(loop: asyncio.AbstractEventLoop, style: str, transport: str, path: str | None):
    """Start the server; returns (what to keep alive, the READY line's address)."""
    if (style == "datagram") != (transport == "udp"):
        raise ValueError("the datagram style goes with --transport udp, and only it")
    if style == "datagram":
        udp, _ = await loop.create_datagram_endpoint(EchoDatagramProtocol, local_addr=(HOST, 0))
        udp.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, UDP_RCVBUF)
        return udp, f"{HOST} {udp.get_extra_info('sockname')[1]}"
    if style == "sockets":
        lsock = _listening_socket(transport, path)
        keep = loop.create_task(_sock_server(loop, lsock))
        where = f"{HOST} {lsock.getsockname()[1]}" if transport == "tcp" else path
        return (keep, lsock), where
    if style == "streams":
        if transport == "tcp":
            server = await asyncio.start_server(_stream_echo, HOST, 0)
        else:
            server = await asyncio.start_unix_server(_stream_echo, path)
    else:
        factory = EchoProtocol if style == "protocol" else EchoBufferedProtocol
        if transport == "tcp":
            server = await loop.create_server(factory, HOST, 0)
        else:
            server = await loop.create_unix_server(factory, path)
    where = f"{HOST} {server.sockets[0].getsockname()[1]}" if transport == "tcp" else path
    return server, where


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.echo_server")
    parser.add_argument("--loop", required=True, choices=sorted(loops.LOOPS))
    parser.add_argument("--style", required=True, choices=STYLES)
    parser.add_argument("--transport", required=True, choices=TRANSPORTS)
    parser.add_argument("--path", help="the Unix socket's path (--transport unix)")
    args = parser.parse_args(argv)
    if args.transport == "unix" and not args.path:
        parser.error("--transport unix needs --path")
    loop = loops.new_loop(args.loop)
    asyncio.set_event_loop(loop)
    started = start_or_report(loop, start(loop, args.style, args.transport, args.path))
    if started is None:
        return 1
    keep, where = started
    report = loops.LOOPS[args.loop].summary is not None
    if report:
        loop.add_signal_handler(signal.SIGTERM, loop.stop)
    announce_ready(f"READY {args.transport} {where}")
    loop.run_forever()
    if report:
        print(f"HEALTH {json.dumps(loops.summary(args.loop, loop))}", file=sys.stderr, flush=True)
    del keep
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
