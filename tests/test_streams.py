"""asyncio streams (start_server / open_connection) on both loops: echo, half-close,
large transfers with drain(), many clients, reader errors and limits."""

import asyncio
import socket
import struct

import pytest

from .netutil import CTX_VAR, HOST, addr_of, pattern, run, sha256

pytestmark = pytest.mark.timeout(30)

MiB = 1024 * 1024


class StreamServer:
    """start_server with a handler coroutine; remembers the handler tasks' writers so
    that leaving the ``async with`` closes every connection and the server."""

    def __init__(self, handler, **kwargs):
        self.handler = handler
        self.kwargs = kwargs
        self.writers = []
        self.results = []
        self.server = None

    async def _handle(self, reader, writer):
        self.writers.append(writer)
        try:
            self.results.append(await self.handler(reader, writer))
        except Exception as exc:  # recorded: a handler error is a test failure
            self.results.append(exc)
        finally:
            writer.close()

    async def __aenter__(self):
        self.server = await asyncio.start_server(self._handle, HOST, 0, **self.kwargs)
        return self

    async def __aexit__(self, *exc):
        self.server.close()
        for w in self.writers:
            w.close()
        for w in self.writers:
            try:
                await asyncio.wait_for(w.wait_closed(), 5)
            except OSError:
                pass
        await asyncio.wait_for(self.server.wait_closed(), 5)

    @property
    def addr(self):
        return addr_of(self.server)


async def echo_handler(reader, writer):
    while True:
        data = await reader.read(65536)
        if not data:
            break
        writer.write(data)
        await writer.drain()
    if writer.can_write_eof():
        writer.write_eof()


async def close_writer(writer):
    writer.close()
    await asyncio.wait_for(writer.wait_closed(), 5)


def test_stream_echo(loop):
    async def main():
        async with StreamServer(echo_handler) as srv:
            reader, writer = await asyncio.open_connection(*srv.addr)
            writer.write(b"line one\nline two\n")
            first = await reader.readline()
            second = await reader.readline()
            writer.write(b"abc|defgh")
            until = await reader.readuntil(b"|")
            exact = await reader.readexactly(3)
            rest = await reader.read(2)
            writer.write_eof()
            tail = await reader.read()
            at_eof = reader.at_eof()
            await close_writer(writer)
            return first, second, until, exact, rest, tail, at_eof, srv.results

    assert run(loop, main()) == (
        b"line one\n",
        b"line two\n",
        b"abc|",
        b"def",
        b"gh",
        b"",
        True,
        [None],
    )


def test_stream_writer_basics(loop):
    async def main():
        async with StreamServer(echo_handler) as srv:
            reader, writer = await asyncio.open_connection(*srv.addr)
            out = dict(
                peername=writer.get_extra_info("peername"),
                sockname_host=writer.get_extra_info("sockname")[0],
                sslcontext=writer.get_extra_info("sslcontext"),
                can_write_eof=writer.can_write_eof(),
                transport_ok=isinstance(writer.transport, asyncio.Transport),
                closing_before=writer.is_closing(),
            )
            writer.writelines([b"a", b"b", b"c\n"])
            await writer.drain()
            out["line"] = await reader.readline()
            writer.close()
            out["closing_after"] = writer.is_closing()
            await asyncio.wait_for(writer.wait_closed(), 5)
            await writer.wait_closed()  # again: returns at once
            return out, srv.addr

    out, addr = run(loop, main())
    assert out == dict(
        peername=addr,
        sockname_host=HOST,
        sslcontext=None,
        can_write_eof=True,
        transport_ok=True,
        closing_before=False,
        line=b"abc\n",
        closing_after=True,
    )


def test_stream_half_close(loop):
    async def handler(reader, writer):
        data = await reader.read()  # until the client's EOF
        assert reader.at_eof()
        writer.write(b"got %d bytes" % len(data))
        await writer.drain()
        return data

    async def main():
        async with StreamServer(handler) as srv:
            reader, writer = await asyncio.open_connection(*srv.addr)
            writer.write(b"x" * 1000)
            writer.write_eof()
            reply = await reader.read()
            await close_writer(writer)
            return reply, srv.results

    assert run(loop, main()) == (b"got 1000 bytes", [b"x" * 1000])


@pytest.mark.timeout(60)
def test_stream_large_transfer_both_ways(loop):
    size = 32 * MiB
    payload = pattern(size, seed=11)

    async def main():
        async with StreamServer(echo_handler) as srv:
            reader, writer = await asyncio.open_connection(*srv.addr)

            async def send():
                view = memoryview(payload)
                for i in range(0, size, MiB):
                    writer.write(view[i : i + MiB])
                    await writer.drain()
                writer.write_eof()

            async def receive():
                h = __import__("hashlib").sha256()
                n = 0
                while True:
                    chunk = await reader.read(256 * 1024)
                    if not chunk:
                        return n, h.hexdigest()
                    n += len(chunk)
                    h.update(chunk)

            _, (n, digest) = await asyncio.gather(send(), receive())
            await close_writer(writer)
            return n, digest, srv.results

    n, digest, results = run(loop, main(), timeout=50)
    assert n == size
    assert digest == sha256(payload)
    assert results == [None]


def test_drain_waits_for_the_peer(loop):
    async def main():
        release = asyncio.Event()

        async def handler(reader, writer):
            await release.wait()
            total = 0
            while chunk := await reader.read(1 << 20):
                total += len(chunk)
            return total

        async with StreamServer(handler) as srv:
            reader, writer = await asyncio.open_connection(*srv.addr)
            writer.transport.get_extra_info("socket").setsockopt(
                socket.SOL_SOCKET, socket.SO_SNDBUF, 64 * 1024
            )
            # More than the kernel buffers and the server's StreamReader take in.
            writer.write(b"x" * (8 * MiB))
            drain = asyncio.ensure_future(writer.drain())
            await asyncio.sleep(0.1)
            blocked = not drain.done()
            release.set()
            await asyncio.wait_for(drain, 10)
            after = writer.transport.get_write_buffer_size()
            low = writer.transport.get_write_buffer_limits()[0]
            writer.write_eof()
            await reader.read()
            await close_writer(writer)
            return blocked, after <= low, srv.results

    assert run(loop, main()) == (True, True, [8 * MiB])


def test_drain_returns_when_buffer_falls_below_low_water(loop):
    async def handler(reader, writer):
        await reader.readexactly(4)  # "go!\n" first
        total = 0
        while chunk := await reader.read(1 << 20):
            total += len(chunk)
        return total

    async def main():
        async with StreamServer(handler) as srv:
            reader, writer = await asyncio.open_connection(*srv.addr)
            writer.write(b"go!\n")
            await writer.drain()
            writer.transport.set_write_buffer_limits(high=256 * 1024)
            for _ in range(16):
                writer.write(b"y" * MiB)
                await writer.drain()
                assert writer.transport.get_write_buffer_size() <= 256 * 1024
            writer.write_eof()
            await reader.read()
            await close_writer(writer)
            return srv.results

    assert run(loop, main()) == [16 * MiB]


@pytest.mark.timeout(60)
def test_many_concurrent_stream_clients(loop):
    n_clients = 300

    async def handler(reader, writer):
        line = await reader.readline()
        writer.write(b"hello " + line)
        await writer.drain()

    async def client(addr, i):
        reader, writer = await asyncio.open_connection(*addr)
        writer.write(b"%d\n" % i)
        reply = await reader.readline()
        eof = await reader.read()
        await close_writer(writer)
        return reply, eof

    async def main():
        async with StreamServer(handler, backlog=1024) as srv:
            replies = await asyncio.gather(*(client(srv.addr, i) for i in range(n_clients)))
            return replies, srv.results

    replies, results = run(loop, main(), timeout=45)
    assert replies == [(b"hello %d\n" % i, b"") for i in range(n_clients)]
    assert results == [None] * n_clients


def test_incomplete_read_and_limit_errors(loop):
    async def handler(reader, writer):
        writer.write(b"short")
        await writer.drain()
        writer.write_eof()
        await reader.read()

    async def main():
        async with StreamServer(handler) as srv:
            reader, writer = await asyncio.open_connection(*srv.addr)
            with pytest.raises(asyncio.IncompleteReadError) as info:
                await reader.readexactly(10)
            partial, expected = info.value.partial, info.value.expected
            assert reader.at_eof()
            await close_writer(writer)

            reader, writer = await asyncio.open_connection(*srv.addr, limit=3)
            with pytest.raises(asyncio.LimitOverrunError):
                await reader.readuntil(b"\n")
            await close_writer(writer)
            return partial, expected

    assert run(loop, main()) == (b"short", 10)


def test_readline_over_limit_raises_value_error(loop):
    async def handler(reader, writer):
        writer.write(b"x" * 100 + b"\n")
        await writer.drain()

    async def main():
        async with StreamServer(handler) as srv:
            reader, writer = await asyncio.open_connection(*srv.addr, limit=16)
            with pytest.raises(ValueError):
                await reader.readline()
            await close_writer(writer)

    run(loop, main())


def test_start_server_limit_applies_to_server_readers(loop):
    async def handler(reader, writer):
        try:
            await reader.readuntil(b"\n")
        except asyncio.LimitOverrunError:
            return "overrun"
        return "ok"

    async def main():
        async with StreamServer(handler, limit=8) as srv:
            reader, writer = await asyncio.open_connection(*srv.addr)
            writer.write(b"0123456789abcdef\n")
            await reader.read()
            await close_writer(writer)
            return srv.results

    assert run(loop, main()) == ["overrun"]


def test_reader_gets_connection_reset(loop):
    async def main():
        with socket.create_server((HOST, 0)) as lsock:
            reader, writer = await asyncio.open_connection(*lsock.getsockname())
            peer, _ = lsock.accept()
        with peer:
            peer.sendall(b"partial")
            assert await reader.readexactly(7) == b"partial"
            peer.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        with pytest.raises(ConnectionResetError):
            await reader.read(100)
        writer.close()
        with pytest.raises(ConnectionResetError):
            await asyncio.wait_for(writer.wait_closed(), 5)

    run(loop, main())


def test_open_connection_refused(loop):
    async def main():
        with socket.socket() as s:
            s.bind((HOST, 0))
            with pytest.raises(ConnectionRefusedError):
                await asyncio.open_connection(*s.getsockname())

    run(loop, main())


def test_open_connection_with_sock(loop):
    async def main():
        async with StreamServer(echo_handler) as srv:
            sock = socket.create_connection(srv.addr)
            sock.setblocking(False)
            reader, writer = await asyncio.open_connection(sock=sock)
            writer.write(b"ping\n")
            line = await reader.readline()
            await close_writer(writer)
            return line

    assert run(loop, main()) == b"ping\n"


def test_handler_runs_as_a_task_per_connection(loop):
    seen = []

    async def handler(reader, writer):
        seen.append(asyncio.current_task() is not None)
        await reader.read()

    async def main():
        async with StreamServer(handler) as srv:
            clients = [await asyncio.open_connection(*srv.addr) for _ in range(3)]
            for _, w in clients:
                w.write_eof()
            for r, w in clients:
                await r.read()
                await close_writer(w)
            return srv.results

    assert run(loop, main()) == [None, None, None]
    assert seen == [True, True, True]


def test_drain_raises_after_connection_reset(loop):
    async def main():
        with socket.create_server((HOST, 0)) as lsock:
            reader, writer = await asyncio.open_connection(*lsock.getsockname())
            peer, _ = lsock.accept()
        with peer:
            peer.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        with pytest.raises(ConnectionResetError):
            await reader.read(100)
        writer.write(b"into the void")
        with pytest.raises(ConnectionResetError):
            await writer.drain()
        writer.close()
        with pytest.raises(ConnectionResetError):
            await writer.wait_closed()

    run(loop, main())


def test_cancel_open_connection_at_each_step(loop):
    async def main():
        async with StreamServer(echo_handler) as srv:
            outcomes = []
            # After 0, 1, ..., 9 loop iterations, then after a real sleep.
            for n in [*range(10), None]:
                task = asyncio.ensure_future(asyncio.open_connection(*srv.addr))
                if n is None:
                    await asyncio.sleep(0.2)
                else:
                    for _ in range(n):
                        await asyncio.sleep(0)
                task.cancel()
                try:
                    reader, writer = await task
                except asyncio.CancelledError:
                    outcomes.append("cancelled")
                else:
                    outcomes.append("connected")
                    await close_writer(writer)
            return outcomes

    outcomes = run(loop, main())
    assert outcomes[0] == "cancelled"
    assert outcomes[-1] == "connected"


def test_start_server_handler_sees_the_context_of_start_server(loop):
    """issue 9, item 12: a context variable set before start_server() is visible in each
    connection's handler task (asyncio: the task is made from the server's protocol
    callbacks, which run in a copy of the context current at start_server())."""

    async def handler(reader, writer):
        await reader.read()
        return CTX_VAR.get()

    async def main():
        CTX_VAR.set("at start_server")
        async with StreamServer(handler) as srv:
            CTX_VAR.set("later")
            r, w = await asyncio.open_connection(*srv.addr)
            w.write_eof()
            await r.read()
            await close_writer(w)
            return srv.results

    assert run(loop, main()) == ["at start_server"]
