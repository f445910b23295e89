"""TCP connections through Protocols: create_connection / create_server, half-close,
connection_lost, large transfers, many clients, and the errors asyncio reports."""

import asyncio
import errno
import os
import socket
import struct
import sys

import pytest

from .netutil import (
    CTX_VAR,
    HOST,
    ContextRecorder,
    EchoServerProtocol,
    ProtocolServer,
    Recorder,
    close_transport,
    pattern,
    raw_peer,
    recv_exactly,
    run,
    sha256,
    spin,
    tcp_echo_server,
)

pytestmark = pytest.mark.timeout(30)


def test_protocol_echo(loop):
    async def main():
        async with await tcp_echo_server() as srv:
            tr, pr = await loop.create_connection(Recorder, *srv.addr)
            assert pr.transport is tr
            assert pr.made.done() and pr.events == ["made"]
            tr.write(b"hello, ")
            tr.write(b"world")
            assert await pr.wait_bytes(12) == b"hello, world"
            assert await close_transport(tr, pr) is None
            (sp,) = await srv.accepted()
            assert await asyncio.wait_for(sp.lost, 5) is None
            assert bytes(sp.data) == b"hello, world"
            return pr.events, sp.events

    client_events, server_events = run(loop, main())
    assert client_events == ["made", "data", "lost"]
    assert server_events == ["made", "data", "eof", "lost"]


def test_transport_is_an_asyncio_transport(loop):
    async def main():
        async with await tcp_echo_server() as srv:
            tr, pr = await loop.create_connection(Recorder, *srv.addr)
            try:
                (sp,) = await srv.accepted()
                for t in (tr, sp.transport):
                    assert isinstance(t, asyncio.Transport)
                    assert isinstance(t, asyncio.ReadTransport)
                    assert isinstance(t, asyncio.WriteTransport)
                    assert t.get_protocol() is (pr if t is tr else sp)
            finally:
                await close_transport(tr, pr)

    run(loop, main())


def test_create_connection_protocol_factory_result_is_returned(loop):
    made = []

    class P(Recorder):
        def __init__(self):
            super().__init__()
            made.append(self)

    async def main():
        async with await tcp_echo_server() as srv:
            tr, pr = await loop.create_connection(P, *srv.addr)
            assert made == [pr]
            await close_transport(tr, pr)

    run(loop, main())


def test_create_connection_with_sock(loop):
    async def main():
        async with await tcp_echo_server() as srv:
            sock = socket.create_connection(srv.addr)
            sock.setblocking(False)
            tr, pr = await loop.create_connection(Recorder, sock=sock)
            assert tr.get_extra_info("socket").fileno() == sock.fileno()
            assert tr.get_extra_info("peername") == srv.addr
            tr.write(b"via sock=")
            assert await pr.wait_bytes(9) == b"via sock="
            await close_transport(tr, pr)
            # asyncio closes the socket object it was given when the transport closes.
            assert sock.fileno() == -1

    run(loop, main())


def test_create_connection_local_addr(loop):
    async def main():
        async with await tcp_echo_server() as srv:
            tr, pr = await loop.create_connection(Recorder, *srv.addr, local_addr=("127.0.0.2", 0))
            try:
                assert tr.get_extra_info("sockname")[0] == "127.0.0.2"
                (sp,) = await srv.accepted()
                assert sp.transport.get_extra_info("peername") == tr.get_extra_info("sockname")
            finally:
                await close_transport(tr, pr)

    run(loop, main())


def test_create_connection_argument_errors(loop):
    async def main():
        with socket.socket() as s:
            with pytest.raises(ValueError):
                await loop.create_connection(Recorder, HOST, 1, sock=s)
        with pytest.raises(ValueError):
            await loop.create_connection(Recorder)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            with pytest.raises(ValueError):
                await loop.create_connection(Recorder, sock=s)
        with pytest.raises(ValueError):
            # server_hostname is only meaningful with ssl.
            await loop.create_connection(Recorder, HOST, 1, server_hostname="x")

    run(loop, main())


# -- errors --------------------------------------------------------------------------------


@pytest.fixture
def refusing_port():
    """A port on 127.0.0.1 that is bound but not listening: connecting to it is refused."""
    with socket.socket() as s:
        s.bind((HOST, 0))
        yield s.getsockname()[1]


def test_connection_refused(loop, refusing_port):
    async def main():
        with pytest.raises(ConnectionRefusedError) as info:
            await loop.create_connection(Recorder, HOST, refusing_port)
        return info.value

    exc = run(loop, main())
    assert exc.errno == errno.ECONNREFUSED
    assert isinstance(exc, OSError)


@pytest.mark.skipif(sys.version_info < (3, 12), reason="all_errors= is new in Python 3.12")
def test_connection_refused_all_errors(loop, refusing_port):
    async def main():
        with pytest.raises(ExceptionGroup) as info:
            await loop.create_connection(Recorder, HOST, refusing_port, all_errors=True)
        return info.value

    group = run(loop, main())
    assert all(isinstance(e, OSError) for e in group.exceptions)
    assert any(e.errno == errno.ECONNREFUSED for e in group.exceptions)


@pytest.mark.timeout(40)
def test_dns_failure_raises_gaierror(loop):
    async def main():
        # .invalid is reserved (RFC 2606): it never resolves, no network needed.
        with pytest.raises(socket.gaierror):
            await loop.create_connection(Recorder, "fastloop-no-such-host.invalid", 80)

    run(loop, main(), timeout=30)


def test_create_server_address_in_use(loop):
    async def main():
        with socket.create_server((HOST, 0)) as taken:
            port = taken.getsockname()[1]
            with pytest.raises(OSError) as info:
                await loop.create_server(Recorder, HOST, port)
            return info.value

    exc = run(loop, main())
    assert exc.errno == errno.EADDRINUSE


@pytest.mark.parametrize("host", [HOST, "localhost"])
def test_happy_eyeballs_arguments_accepted(loop, host):
    async def main():
        async with await tcp_echo_server() as srv:
            port = srv.addr[1]
            tr, pr = await loop.create_connection(
                Recorder, host, port, happy_eyeballs_delay=0.25, interleave=1
            )
            tr.write(b"he")
            assert await pr.wait_bytes(2) == b"he"
            await close_transport(tr, pr)
            tr, pr = await loop.create_connection(Recorder, host, port, interleave=2)
            await close_transport(tr, pr)

    run(loop, main())


def test_peer_reset_during_read(loop):
    async def main():
        async with raw_peer(Recorder) as (tr, pr, peer):
            peer.sendall(b"before reset")
            await pr.wait_bytes(12)
            peer.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            peer.close()
            exc = await asyncio.wait_for(pr.lost, 5)
            await spin()
            return exc, pr.lost_calls, pr.events, tr.is_closing()

    exc, calls, events, closing = run(loop, main())
    # asyncio: the read fails with ECONNRESET and connection_lost gets that error.
    assert isinstance(exc, ConnectionResetError)
    assert len(calls) == 1
    assert events == ["made", "data", "lost"]
    assert closing


# -- half-close ----------------------------------------------------------------------------


def test_write_eof_half_close(loop):
    class Server(Recorder):
        def __init__(self):
            super().__init__(eof_result=True)

        def eof_received(self):
            super().eof_received()
            # Still open for writing: answer after the peer's EOF, then close.
            assert not self.transport.is_closing()
            self.transport.write(b"got " + bytes(self.data))
            self.transport.close()
            return True

    async def main():
        async with ProtocolServer(Server) as srv:
            await srv.start_tcp()
            tr, pr = await loop.create_connection(Recorder, *srv.addr)
            assert tr.can_write_eof() is True
            tr.write(b"question")
            tr.write_eof()
            tr.write_eof()  # a second call is a no-op
            with pytest.raises(RuntimeError):
                tr.write(b"more")
            assert not tr.is_closing()
            assert await asyncio.wait_for(pr.lost, 5) is None
            (sp,) = await srv.accepted()
            assert await asyncio.wait_for(sp.lost, 5) is None
            return bytes(pr.data), pr.events, sp.events

    data, client_events, server_events = run(loop, main())
    assert data == b"got question"
    # The client's eof_received returned None: its transport closed itself.
    assert client_events == ["made", "data", "eof", "lost"]
    assert server_events == ["made", "data", "eof", "lost"]


@pytest.mark.parametrize("eof_result", [None, False])
def test_eof_received_falsy_closes_transport(loop, eof_result):
    class Server(Recorder):
        def __init__(self):
            super().__init__(eof_result=eof_result)

    async def main():
        async with ProtocolServer(Server) as srv:
            await srv.start_tcp()
            tr, pr = await loop.create_connection(Recorder, *srv.addr)
            tr.write(b"bye")
            tr.write_eof()
            (sp,) = await srv.accepted()
            # The server never calls close(): returning a false value from
            # eof_received closes its transport.
            assert await asyncio.wait_for(sp.lost, 5) is None
            assert sp.transport.is_closing()
            await asyncio.wait_for(pr.eof, 5)
            assert await asyncio.wait_for(pr.lost, 5) is None
            return sp.events, pr.events

    server_events, client_events = run(loop, main())
    assert server_events == ["made", "data", "eof", "lost"]
    assert client_events == ["made", "eof", "lost"]


def test_eof_received_true_keeps_transport_open(loop):
    async def main():
        async with ProtocolServer(lambda: Recorder(eof_result=True)) as srv:
            await srv.start_tcp()
            tr, pr = await loop.create_connection(Recorder, *srv.addr)
            tr.write_eof()
            (sp,) = await srv.accepted()
            await asyncio.wait_for(sp.eof, 5)
            await asyncio.sleep(0.05)
            assert not sp.lost.done()
            assert not sp.transport.is_closing()
            sp.transport.write(b"late reply")
            assert await pr.wait_bytes(10) == b"late reply"
            sp.transport.close()
            assert await asyncio.wait_for(pr.lost, 5) is None
            assert await asyncio.wait_for(sp.lost, 5) is None
            return pr.events, sp.events

    client_events, server_events = run(loop, main())
    assert client_events == ["made", "data", "eof", "lost"]
    assert server_events == ["made", "eof", "lost"]


# -- connection_lost exactly once ----------------------------------------------------------


@pytest.mark.parametrize("how", ["close", "close_twice", "abort", "abort_then_close"])
def test_connection_lost_once_after_local_close(loop, how):
    async def main():
        async with await tcp_echo_server() as srv:
            tr, pr = await loop.create_connection(Recorder, *srv.addr)
            tr.write(b"x")
            await pr.wait_bytes(1)
            if how == "close":
                tr.close()
            elif how == "close_twice":
                tr.close()
                tr.close()
            elif how == "abort":
                tr.abort()
            else:
                tr.abort()
                tr.close()
            assert tr.is_closing()
            # connection_lost is called from the loop, not from close()/abort() itself.
            assert pr.lost_calls == []
            assert await asyncio.wait_for(pr.lost, 5) is None
            await asyncio.sleep(0.02)
            tr.close()
            tr.abort()
            await spin()
            return pr.lost_calls, pr.events

    calls, events = run(loop, main())
    assert calls == [None]
    assert events == ["made", "data", "lost"]


def test_connection_lost_once_after_protocol_error(loop, exc_handler_calls):
    class Boom(Exception):
        pass

    boom = Boom("in data_received")

    class P(Recorder):
        def data_received(self, data):
            super().data_received(data)
            raise boom

    async def main():
        async with await tcp_echo_server() as srv:
            tr, pr = await loop.create_connection(P, *srv.addr)
            tr.write(b"x")
            exc = await asyncio.wait_for(pr.lost, 5)
            await spin()
            assert tr.is_closing()
            return exc, pr.lost_calls

    exc, calls = run(loop, main())
    assert exc is boom
    assert calls == [boom]
    assert len(exc_handler_calls) == 1
    ctx = exc_handler_calls[0]
    assert ctx["message"] == "Fatal error: protocol.data_received() call failed."
    assert ctx["exception"] is boom
    assert isinstance(ctx["protocol"], P)
    assert "transport" in ctx
    exc_handler_calls.clear()


def test_connection_lost_once_after_peer_close(loop):
    async def main():
        async with raw_peer(Recorder) as (tr, pr, peer):
            peer.sendall(b"last words")
            peer.close()
            assert await asyncio.wait_for(pr.lost, 5) is None
            await asyncio.sleep(0.02)
            tr.close()
            await spin()
            return pr.lost_calls, pr.events, bytes(pr.data)

    calls, events, data = run(loop, main())
    assert calls == [None]
    assert events == ["made", "data", "eof", "lost"]
    assert data == b"last words"


def test_tcp_nodelay_is_set_by_default(loop):
    async def main():
        async with await tcp_echo_server() as srv:
            tr, pr = await loop.create_connection(Recorder, *srv.addr)
            try:
                (sp,) = await srv.accepted()
                return [
                    t.get_extra_info("socket").getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
                    for t in (tr, sp.transport)
                ]
            finally:
                await close_transport(tr, pr)

    client, server = run(loop, main())
    assert client != 0
    assert server != 0


# -- volume --------------------------------------------------------------------------------


@pytest.mark.timeout(60)
def test_large_transfer_both_ways(loop):
    size = 32 * 1024 * 1024
    payload = pattern(size)

    async def main():
        async with await tcp_echo_server() as srv:
            tr, pr = await loop.create_connection(Recorder, *srv.addr)
            tr.write(payload)
            tr.write_eof()
            await asyncio.wait_for(pr.lost, 40)
            (sp,) = await srv.accepted()
            await asyncio.wait_for(sp.lost, 5)
            return sha256(sp.data), len(pr.data), sha256(pr.data), sp.events

    server_hash, n, client_hash, server_events = run(loop, main(), timeout=50)
    assert server_hash == sha256(payload)
    assert n == size
    assert client_hash == sha256(payload)
    assert server_events[0] == "made" and server_events[-2:] == ["eof", "lost"]


@pytest.mark.timeout(60)
def test_many_concurrent_connections(loop):
    n_clients = 300

    async def client(addr, i):
        tr, pr = await loop.create_connection(Recorder, *addr)
        msg = f"client {i} ".encode() * 50
        tr.write(msg)
        tr.write_eof()
        exc = await asyncio.wait_for(pr.lost, 20)
        return exc, bytes(pr.data) == msg

    async def main():
        async with await tcp_echo_server(backlog=1024) as srv:
            results = await asyncio.gather(*(client(srv.addr, i) for i in range(n_clients)))
            await asyncio.wait_for(asyncio.gather(*(p.lost for p in srv.protocols)), 10)
            return results, len(srv.protocols)

    results, accepted = run(loop, main(), timeout=45)
    assert accepted == n_clients
    assert results == [(None, True)] * n_clients


def test_echo_protocol_class_is_usable_directly(loop):
    # The echo protocol the other tests lean on behaves as a plain Protocol on both loops.
    async def main():
        async with raw_peer(EchoServerProtocol) as (tr, pr, peer):
            peer.sendall(b"ping")
            assert await loop.run_in_executor(None, recv_exactly, peer, 4) == b"ping"
            peer.shutdown(socket.SHUT_WR)
            assert await asyncio.wait_for(pr.lost, 5) is None
            return pr.events

    assert run(loop, main()) == ["made", "data", "eof", "lost"]


# -- cancellation --------------------------------------------------------------------------

# Cancel create_connection after 0, 1, 2, ... loop iterations, then after short sleeps:
# every attempt either raises CancelledError or returns a working transport, and
# nothing leaks (the fixture fails the test on a ResourceWarning).
CANCEL_POINTS = [("spin", n) for n in range(12)] + [
    ("sleep", t) for t in (0.001, 0.005, 0.02, 0.1, 0.5)
]


@pytest.mark.parametrize("host", [HOST, "localhost"])
def test_cancel_create_connection_at_each_step(loop, host):
    async def main():
        async with await tcp_echo_server() as srv:
            outcomes = []
            for kind, n in CANCEL_POINTS:
                task = asyncio.ensure_future(loop.create_connection(Recorder, host, srv.addr[1]))
                if kind == "spin":
                    await spin(n)
                else:
                    await asyncio.sleep(n)
                task.cancel()
                try:
                    tr, pr = await task
                except asyncio.CancelledError:
                    outcomes.append("cancelled")
                else:
                    tr.write(b"ok")
                    assert await pr.wait_bytes(2) == b"ok"
                    await close_transport(tr, pr)
                    outcomes.append("connected")
            # Connections the server accepted for cancelled attempts end too.
            await asyncio.wait_for(asyncio.gather(*(p.lost for p in srv.protocols)), 5)
            return outcomes

    outcomes = run(loop, main(), timeout=20)
    assert outcomes[0] == "cancelled"
    assert outcomes[-1] == "connected"


def test_stream_callbacks_run_in_the_context_of_create_connection(loop):
    """issue 9, item 12: data_received, eof_received and connection_lost (when the peer
    ends the connection) run in a copy of the context current when create_connection()
    was called, as connection_made does (asyncio: the transport's reader Handle is
    made then), not in whatever context is current later."""

    async def main():
        with socket.create_server((HOST, 0)) as lsock:
            CTX_VAR.set("at create_connection")
            tr, pr = await loop.create_connection(ContextRecorder, *lsock.getsockname())
            CTX_VAR.set("later")
            peer, _ = lsock.accept()
        with peer:
            peer.sendall(b"x")
            await pr.wait_bytes(1)
            peer.shutdown(socket.SHUT_WR)
            await asyncio.wait_for(pr.lost, 5)
        return pr.ctx

    assert run(loop, main()) == dict.fromkeys(
        ["made", "data", "eof", "lost"], "at create_connection"
    )


class WriteOnly(asyncio.BaseProtocol):
    """A protocol that only writes: no data_received, no eof_received."""

    def __init__(self):
        self.lost = asyncio.get_running_loop().create_future()

    def connection_made(self, transport):
        transport.write(b"hello")

    def connection_lost(self, exc):
        self.lost.set_result(exc)


def fd_count():
    """Open sockets of this process (libuv keeps one /dev/null fd per loop in reserve,
    opened with the loop's first stream: not a socket, and not a leak)."""
    count = 0
    for name in os.listdir("/proc/self/fd"):
        try:
            count += os.readlink(f"/proc/self/fd/{name}").startswith("socket:")
        except OSError:  # the listing's own fd, closed by now
            pass
    return count


def test_create_connection_with_a_write_only_protocol(loop):
    """issue 9, item 20: create_connection() with a protocol that has no data_received
    (a write-only BaseProtocol) works: asyncio looks a protocol method up only when it
    calls it. fastloop raised AttributeError and left the connected socket open."""

    async def main():
        before = fd_count()
        with socket.create_server((HOST, 0)) as lsock:
            tr, pr = await loop.create_connection(WriteOnly, *lsock.getsockname())
            peer, _ = lsock.accept()
        with peer:
            got = await loop.run_in_executor(None, recv_exactly, peer, 5)
            tr.close()
            lost = await asyncio.wait_for(pr.lost, 5)
        return got, lost, fd_count() - before

    assert run(loop, main()) == (b"hello", None, 0)


def test_write_only_protocol_receiving_data_is_a_fatal_error(loop, exc_handler_calls):
    """issue 9, item 20: when data does arrive for a protocol without data_received,
    asyncio's call fails then: "Fatal error: protocol.data_received() call failed.",
    and connection_lost gets the AttributeError."""

    async def main():
        with socket.create_server((HOST, 0)) as lsock:
            tr, pr = await loop.create_connection(WriteOnly, *lsock.getsockname())
            peer, _ = lsock.accept()
        with peer:
            peer.sendall(b"unexpected")
            return await asyncio.wait_for(pr.lost, 5)

    lost = run(loop, main())
    assert isinstance(lost, AttributeError)
    assert [c["message"] for c in exc_handler_calls] == [
        "Fatal error: protocol.data_received() call failed."
    ]
    assert exc_handler_calls[0]["exception"] is lost
    exc_handler_calls.clear()
