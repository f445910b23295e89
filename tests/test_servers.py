"""Server objects from create_server: addresses (host=None, lists, port 0, family),
socket options, backlog, start_serving / serve_forever / close / wait_closed,
``async with``, sock=, connect_accepted_socket."""

import asyncio
import errno
import os
import shutil
import socket
import subprocess
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
    run,
    spin,
    tcp_echo_server,
)

pytestmark = pytest.mark.timeout(30)


async def echo_roundtrip(host, port, family=socket.AF_UNSPEC, payload=b"ping"):
    """Connect, send ``payload``, expect it echoed, close. Returns the client's sockname."""
    loop = asyncio.get_running_loop()
    tr, pr = await loop.create_connection(Recorder, host, port, family=family)
    try:
        tr.write(payload)
        assert await pr.wait_bytes(len(payload)) == payload
        return tr.get_extra_info("sockname")
    finally:
        await close_transport(tr, pr)


async def connect_refused(host, port):
    loop = asyncio.get_running_loop()
    try:
        tr, pr = await loop.create_connection(Recorder, host, port)
    except ConnectionRefusedError:
        return True
    await close_transport(tr, pr)
    return False


def ipv6_loopback_works():
    try:
        with socket.socket(socket.AF_INET6) as s:
            s.bind(("::1", 0))
        return True
    except OSError:
        return False


def test_server_basics(loop):
    async def main():
        srv = await tcp_echo_server()
        server = srv.server
        out = dict(
            is_serving=server.is_serving(),
            get_loop=server.get_loop() is loop,
            n_sockets=len(server.sockets),
        )
        sock = server.sockets[0]
        host, port = sock.getsockname()
        out.update(
            host=host,
            port_nonzero=port != 0,
            family=sock.family,
            type=sock.type,
            fileno_ok=sock.fileno() >= 0,
        )
        await echo_roundtrip(host, port)
        server.close()
        out["is_serving_after_close"] = server.is_serving()
        server.close()  # a second close is a no-op
        await asyncio.wait_for(server.wait_closed(), 5)
        await asyncio.wait_for(srv.close(), 5)
        out["n_sockets_after_close"] = len(server.sockets)
        out["refused_after_close"] = await connect_refused(host, port)
        return out

    assert run(loop, main()) == dict(
        is_serving=True,
        get_loop=True,
        n_sockets=1,
        host=HOST,
        port_nonzero=True,
        family=socket.AF_INET,
        type=socket.SOCK_STREAM,
        fileno_ok=True,
        is_serving_after_close=False,
        n_sockets_after_close=0,
        refused_after_close=True,
    )


def test_server_close_leaves_existing_connections_open(loop):
    async def main():
        async with await tcp_echo_server() as srv:
            tr, pr = await loop.create_connection(Recorder, *srv.addr)
            tr.write(b"one")
            await pr.wait_bytes(3)
            srv.server.close()
            assert not srv.server.is_serving()
            await spin()
            tr.write(b"two")
            data = await pr.wait_bytes(6)
            await close_transport(tr, pr)
            return data

    assert run(loop, main()) == b"onetwo"


def test_host_none_binds_every_family(loop):
    expected = {
        info[0]
        for info in socket.getaddrinfo(
            None, 0, socket.AF_UNSPEC, socket.SOCK_STREAM, 0, socket.AI_PASSIVE
        )
    }

    if socket.AF_INET6 in expected and not ipv6_loopback_works():
        pytest.skip("getaddrinfo offers IPv6 but this host cannot bind it")

    async def main():
        async with ProtocolServer(EchoServerProtocol) as srv:
            await srv.start_tcp(host=None, port=0)
            socks = srv.server.sockets
            families = sorted(s.family for s in socks)
            hosts = sorted(s.getsockname()[0] for s in socks)
            v6only = [
                s.getsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY)
                for s in socks
                if s.family == socket.AF_INET6
            ]
            (port,) = [s.getsockname()[1] for s in socks if s.family == socket.AF_INET]
            await echo_roundtrip(HOST, port)
            return families, hosts, v6only

    families, hosts, v6only = run(loop, main())
    assert families == sorted(expected)
    wildcard = {socket.AF_INET: "0.0.0.0", socket.AF_INET6: "::"}
    assert hosts == sorted(wildcard[f] for f in families)
    # asyncio sets IPV6_V6ONLY on its IPv6 sockets so both families can share a port.
    assert all(v6only)


def test_host_none_with_family_inet(loop):
    async def main():
        async with ProtocolServer(EchoServerProtocol, family=socket.AF_INET) as srv:
            await srv.start_tcp(host=None, port=0)
            return [(s.family, s.getsockname()[0]) for s in srv.server.sockets]

    assert run(loop, main()) == [(socket.AF_INET, "0.0.0.0")]


def test_host_empty_string_is_like_none(loop):
    async def main():
        async with ProtocolServer(EchoServerProtocol, family=socket.AF_INET) as srv:
            await srv.start_tcp(host="", port=0)
            return [(s.family, s.getsockname()[0]) for s in srv.server.sockets]

    assert run(loop, main()) == [(socket.AF_INET, "0.0.0.0")]


def test_host_list(loop):
    async def main():
        async with ProtocolServer(EchoServerProtocol) as srv:
            await srv.start_tcp(host=["127.0.0.1", "127.0.0.2"], port=0)
            addrs = sorted(s.getsockname() for s in srv.server.sockets)
            for host, port in addrs:
                await echo_roundtrip(host, port)
            return addrs

    addrs = run(loop, main())
    assert [a[0] for a in addrs] == ["127.0.0.1", "127.0.0.2"]
    assert all(a[1] != 0 for a in addrs)


def test_fixed_port(loop):
    with socket.socket() as probe:
        probe.bind((HOST, 0))
        port = probe.getsockname()[1]

    async def main():
        async with ProtocolServer(EchoServerProtocol) as srv:
            await srv.start_tcp(host=HOST, port=port)
            assert srv.addr == (HOST, port)
            await echo_roundtrip(HOST, port)

    run(loop, main())


@pytest.mark.skipif(not ipv6_loopback_works(), reason="no IPv6 loopback here")
def test_ipv6_loopback_server(loop):
    async def main():
        async with ProtocolServer(EchoServerProtocol) as srv:
            await srv.start_tcp(host="::1", port=0)
            sock = srv.server.sockets[0]
            client = await echo_roundtrip("::1", sock.getsockname()[1])
            return sock.family, sock.getsockname()[0], client[0]

    assert run(loop, main()) == (socket.AF_INET6, "::1", "::1")


def test_reuse_address(loop):
    async def main():
        out = []
        for kwargs in ({}, {"reuse_address": True}, {"reuse_address": False}):
            async with ProtocolServer(EchoServerProtocol, **kwargs) as srv:
                await srv.start_tcp()
                sock = srv.server.sockets[0]
                out.append(sock.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR) != 0)
        return out

    # asyncio's default on POSIX is reuse_address=True.
    assert run(loop, main()) == [True, True, False]


def test_reuse_port(loop):
    async def main():
        async with ProtocolServer(EchoServerProtocol, reuse_port=True) as first:
            await first.start_tcp()
            port = first.addr[1]
            async with ProtocolServer(EchoServerProtocol, reuse_port=True) as second:
                await second.start_tcp(port=port)
                opts = [
                    s.server.sockets[0].getsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT)
                    for s in (first, second)
                ]
                await echo_roundtrip(HOST, port)
                return second.addr[1] == port, all(opts)

    assert run(loop, main()) == (True, True)


def test_without_reuse_port_the_port_is_in_use(loop):
    async def main():
        async with ProtocolServer(EchoServerProtocol) as first:
            await first.start_tcp()
            with pytest.raises(OSError) as info:
                await loop.create_server(Recorder, HOST, first.addr[1])
            return info.value.errno

    assert run(loop, main()) == errno.EADDRINUSE


def listen_backlog(port):
    """The listen backlog the kernel reports for a listening socket (ss's Send-Q)."""
    out = subprocess.run(
        ["ss", "-ltnH", f"sport = :{port}"], capture_output=True, text=True, timeout=10
    ).stdout.split()
    return int(out[2]) if len(out) >= 3 and out[0] == "LISTEN" else None


@pytest.mark.skipif(shutil.which("ss") is None, reason="needs the ss tool")
def test_backlog(loop):
    async def main():
        out = []
        for kwargs in ({}, {"backlog": 37}):
            async with ProtocolServer(EchoServerProtocol, **kwargs) as srv:
                await srv.start_tcp()
                out.append(listen_backlog(srv.addr[1]))
                await echo_roundtrip(*srv.addr)
        return out

    got = run(loop, main())
    if got[0] is None:
        pytest.skip("ss reports no listening socket here")
    # asyncio's default backlog is 100.
    assert got == [100, 37]


def test_start_serving_false(loop):
    async def main():
        async with ProtocolServer(EchoServerProtocol, start_serving=False) as srv:
            await srv.start_tcp()
            server = srv.server
            out = [server.is_serving(), len(server.sockets)]
            # Bound but not listening yet: a connection attempt is refused.
            out.append(await connect_refused(*srv.addr))
            await server.start_serving()
            out.append(server.is_serving())
            await server.start_serving()  # again: no-op
            await echo_roundtrip(*srv.addr)
            out.append(len(srv.protocols))
            return out

    assert run(loop, main()) == [False, 1, True, True, 1]


def test_serve_forever_cancelled(loop):
    async def main():
        srv = ProtocolServer(EchoServerProtocol, start_serving=False)
        await srv.start_tcp()
        server = srv.server
        addr = srv.addr
        task = asyncio.ensure_future(server.serve_forever())
        await asyncio.sleep(0.01)
        serving = server.is_serving()
        await echo_roundtrip(*addr)
        with pytest.raises(RuntimeError):
            await server.serve_forever()  # already being awaited
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await asyncio.wait_for(task, 5)
        after = (server.is_serving(), len(server.sockets), await connect_refused(*addr))
        with pytest.raises(RuntimeError):
            await server.serve_forever()  # closed
        await srv.close()
        return serving, after

    assert run(loop, main()) == (True, (False, 0, True))


def test_async_with_server(loop):
    async def main():
        srv = ProtocolServer(EchoServerProtocol)
        await srv.start_tcp()
        async with srv.server as server:
            assert server is srv.server
            assert server.is_serving()
            addr = srv.addr
            await echo_roundtrip(*addr)
        out = (server.is_serving(), len(server.sockets), await connect_refused(*addr))
        await srv.close()
        return out

    assert run(loop, main()) == (False, 0, True)


def test_wait_closed_returns_after_close(loop):
    async def main():
        srv = await tcp_echo_server()
        await echo_roundtrip(*srv.addr)
        await asyncio.wait_for(asyncio.gather(*(p.lost for p in srv.protocols)), 5)
        srv.server.close()
        await asyncio.wait_for(srv.server.wait_closed(), 5)
        await asyncio.wait_for(srv.server.wait_closed(), 5)  # again
        await srv.close()

    run(loop, main())


@pytest.mark.skipif(
    sys.version_info < (3, 13), reason="Server.close_clients/abort_clients are new in Python 3.13"
)
@pytest.mark.parametrize("method", ["close_clients", "abort_clients"])
def test_close_and_abort_clients(loop, method):
    async def main():
        srv = await tcp_echo_server()
        tr, pr = await loop.create_connection(Recorder, *srv.addr)
        (sp,) = await srv.accepted()
        srv.server.close()
        getattr(srv.server, method)()
        assert await asyncio.wait_for(sp.lost, 5) is None
        await asyncio.wait_for(pr.lost, 5)  # the client sees the connection end
        await asyncio.wait_for(srv.server.wait_closed(), 5)
        await srv.close()
        return sp.lost_calls

    assert run(loop, main()) == [None]


def test_create_server_with_sock(loop):
    async def main():
        sock = socket.socket()
        sock.bind((HOST, 0))
        addr = sock.getsockname()
        srv = ProtocolServer(EchoServerProtocol)
        srv.server = await loop.create_server(srv.factory, sock=sock)
        (ssock,) = srv.server.sockets
        out = [ssock.getsockname() == addr, ssock.fileno() == sock.fileno()]
        await echo_roundtrip(*addr)
        await srv.close()
        # The server closes the socket it was given.
        out.append(sock.fileno())
        return out

    assert run(loop, main()) == [True, True, -1]


def test_create_server_argument_errors(loop):
    async def main():
        with socket.socket() as s:
            s.bind((HOST, 0))
            with pytest.raises(ValueError):
                await loop.create_server(Recorder, HOST, 0, sock=s)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            with pytest.raises(ValueError):
                await loop.create_server(Recorder, sock=s)
        with pytest.raises(ValueError):
            await loop.create_server(Recorder)  # neither host/port nor sock

    run(loop, main())


def test_connect_accepted_socket(loop):
    async def main():
        with socket.create_server((HOST, 0)) as lsock:
            client = socket.create_connection(lsock.getsockname())
            accepted, _ = lsock.accept()
        client.settimeout(5)
        with client:
            accepted.setblocking(False)
            tr, pr = await loop.connect_accepted_socket(EchoServerProtocol, accepted)
            assert pr.transport is tr
            assert tr.get_extra_info("peername") == client.getsockname()
            client.sendall(b"accepted elsewhere")
            got = await loop.run_in_executor(None, client.recv, 100)
            client.shutdown(socket.SHUT_WR)
            assert await asyncio.wait_for(pr.lost, 5) is None
            return got, pr.events, accepted.fileno()

    assert run(loop, main()) == (b"accepted elsewhere", ["made", "data", "eof", "lost"], -1)


def test_connect_accepted_socket_rejects_non_stream(loop):
    async def main():
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            with pytest.raises(ValueError):
                await loop.connect_accepted_socket(Recorder, s)

    run(loop, main())


def test_create_server_with_sock_watched_by_add_reader(loop):
    """issue 9, item 11: create_server(sock=s) while s has a reader from add_reader().
    asyncio's server replaces that reader with its own (same fd): the server accepts,
    the old callback is not called any more, and server.close() closes the socket and
    leaves no watcher. fastloop refused (FileExistsError), closed the socket object
    and leaked its fd."""

    async def main():
        sock = socket.create_server((HOST, 0))
        sock.setblocking(False)
        fd = sock.fileno()
        ino = os.fstat(fd).st_ino
        reader_calls = []
        loop.add_reader(fd, reader_calls.append, "reader")
        srv = ProtocolServer(EchoServerProtocol)
        try:
            srv.server = await loop.create_server(srv.factory, sock=sock)
            addr = sock.getsockname()
            await echo_roundtrip(*addr)
            await srv.close()
            return reader_calls, sock.fileno(), still_open(fd, ino), loop.remove_reader(fd)
        finally:
            # Whatever failed: no watcher and no fd of this test's socket outlive it.
            loop.remove_reader(fd)
            if sock.fileno() == -1 and still_open(fd, ino):
                os.close(fd)
            sock.close()

    assert run(loop, main()) == ([], -1, False, False)


def still_open(fd, ino):
    """Whether fd number ``fd`` is still the file with inode ``ino``."""
    try:
        return os.fstat(fd).st_ino == ino
    except OSError:
        return False


# -- the context protocol callbacks run in (issue 9, item 12) ----------------------------


def test_server_callbacks_run_in_the_context_of_create_server(loop):
    """issue 9, item 12: the server's protocol_factory and the accepted connection's
    callbacks (connection_made, data_received, eof_received, connection_lost when the
    peer ends it) run in a copy of the context current when create_server() was
    called (asyncio: the accepting reader's Handle is made then)."""
    factory_ctx = []

    def factory():
        factory_ctx.append(CTX_VAR.get())
        return srv.factory()

    srv = ProtocolServer(ContextRecorder)

    async def main():
        CTX_VAR.set("at create_server")
        srv.server = await loop.create_server(factory, HOST, 0)
        CTX_VAR.set("later")
        async with srv:
            with socket.create_connection(srv.addr) as client:
                client.sendall(b"x")
                client.shutdown(socket.SHUT_WR)
                (sp,) = await srv.accepted()
                await sp.wait_bytes(1)
                await asyncio.wait_for(sp.lost, 5)
            return factory_ctx, sp.ctx

    assert run(loop, main()) == (
        ["at create_server"],
        dict.fromkeys(["made", "data", "eof", "lost"], "at create_server"),
    )


def test_connect_accepted_socket_callbacks_run_in_its_context(loop):
    """issue 9, item 12: connect_accepted_socket()'s protocol callbacks run in a copy of
    the context current when it was called."""

    async def main():
        with socket.create_server((HOST, 0)) as lsock:
            client = socket.create_connection(lsock.getsockname())
            accepted, _ = lsock.accept()
        with client:
            accepted.setblocking(False)
            CTX_VAR.set("at connect_accepted_socket")
            tr, pr = await loop.connect_accepted_socket(ContextRecorder, accepted)
            CTX_VAR.set("later")
            client.sendall(b"x")
            await pr.wait_bytes(1)
            client.shutdown(socket.SHUT_WR)
            await asyncio.wait_for(pr.lost, 5)
            return pr.ctx

    assert run(loop, main()) == dict.fromkeys(
        ["made", "data", "eof", "lost"], "at connect_accepted_socket"
    )


# -- protocols without every method (issue 9, item 20) -----------------------------------


class WriteOnly(asyncio.BaseProtocol):
    """A protocol that only writes: no data_received, no eof_received."""

    def __init__(self):
        loop = asyncio.get_running_loop()
        self.made = loop.create_future()
        self.lost = loop.create_future()

    def connection_made(self, transport):
        self.transport = transport
        transport.write(b"hello")
        self.made.set_result(transport)

    def connection_lost(self, exc):
        self.lost.set_result(exc)


def test_server_with_a_write_only_protocol(loop):
    """issue 9, item 20: a server whose protocol has no data_received (a write-only
    BaseProtocol) works as long as nothing arrives: asyncio looks a protocol method up
    only when it calls it. fastloop dropped the connection silently."""
    made = []

    def factory():
        made.append(WriteOnly())
        return made[-1]

    async def main():
        server = await loop.create_server(factory, HOST, 0)
        try:
            with socket.create_connection(server.sockets[0].getsockname()) as client:
                client.setblocking(False)
                got = await asyncio.wait_for(loop.sock_recv(client, 10), 5)
                tr = await asyncio.wait_for(made[0].made, 5)
                tr.close()
                lost = await asyncio.wait_for(made[0].lost, 5)
                rest = await asyncio.wait_for(loop.sock_recv(client, 10), 5)
        finally:
            server.close()
            await server.wait_closed()
        return got, lost, rest

    assert run(loop, main()) == (b"hello", None, b"")
