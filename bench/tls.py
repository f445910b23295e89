"""TLS throughput: asyncio's sslproto over each loop's transports, both ends on one loop.

Client and server run on the loop under test, so every loop carries the
same client-side work; what differs is the loop's transports under TLS. The
certificate is made once per process with the openssl command-line tool
(a self-signed certificate for 127.0.0.1).
"""

from __future__ import annotations

import asyncio
import functools
import os
import ssl
import subprocess
import tempfile
from time import perf_counter

from bench.registry import Measurement

MESSAGE = 1024


@functools.cache
def _contexts() -> tuple[ssl.SSLContext, ssl.SSLContext]:
    tmp = tempfile.mkdtemp(prefix="fastloop-bench-tls-")
    key, cert = os.path.join(tmp, "key.pem"), os.path.join(tmp, "cert.pem")
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
         "-keyout", key, "-out", cert],
        check=True, capture_output=True,
    )  # fmt: skip
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server.load_cert_chain(cert, key)
    client = ssl.create_default_context(cafile=cert)
    return server, client


async def _pair(handler):
    server_ctx, client_ctx = _contexts()
    server = await asyncio.start_server(handler, "127.0.0.1", 0, ssl=server_ctx)
    port = server.sockets[0].getsockname()[1]
    reader, writer = await asyncio.open_connection(
        "127.0.0.1", port, ssl=client_ctx, server_hostname="127.0.0.1"
    )
    return server, reader, writer


async def _close(server, writer) -> None:
    writer.close()
    await writer.wait_closed()
    server.close()
    await server.wait_closed()


def tls_echo(loop: asyncio.AbstractEventLoop, n: int) -> Measurement:
    """n request/response round trips of 1 KiB over one TLS stream connection."""

    async def echo(reader, writer):
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
        writer.close()

    async def main():
        server, reader, writer = await _pair(echo)
        payload = os.urandom(MESSAGE)
        t0 = perf_counter()
        for _ in range(n):
            writer.write(payload)
            if await reader.readexactly(MESSAGE) != payload:
                raise AssertionError("TLS echo returned other bytes")
        seconds = perf_counter() - t0
        await _close(server, writer)
        return seconds

    return Measurement(n, loop.run_until_complete(main()))


def tls_bulk(loop: asyncio.AbstractEventLoop, n: int) -> Measurement:
    """n MiB sent one way over one TLS stream connection (ops are MiB).

    The server counts to n MiB and answers "done" (asyncio's TLS transport has
    no write_eof before Python 3.12).
    """
    chunk = os.urandom(1 << 20)
    expected = n << 20

    async def sink(reader, writer):
        total = 0
        while total < expected and (data := await reader.read(1 << 18)):
            total += len(data)
        writer.write(b"done" if total == expected else b"short")
        await writer.drain()
        writer.close()

    async def main():
        server, reader, writer = await _pair(sink)
        t0 = perf_counter()
        for _ in range(n):
            writer.write(chunk)
            await writer.drain()
        answer = await reader.readexactly(4)
        seconds = perf_counter() - t0
        if answer != b"done":
            raise AssertionError(f"TLS bulk: the server did not get {expected} bytes")
        await _close(server, writer)
        return seconds

    return Measurement(n, loop.run_until_complete(main()))
