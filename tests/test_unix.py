"""Unix-domain stream sockets: create_unix_server / create_unix_connection (path and
sock=), the abstract namespace, stale socket files, and the stream wrappers."""

import asyncio
import errno
import os
import pathlib
import shutil
import socket
import stat
import sys
import tempfile
import uuid

import pytest

from .netutil import (
    EchoServerProtocol,
    ProtocolServer,
    Recorder,
    close_transport,
    pattern,
    recv_exactly,
    run,
)
from .netutil import sha256 as digest

pytestmark = pytest.mark.timeout(30)


@pytest.fixture
def sock_dir():
    """A short directory for socket files (AF_UNIX paths are limited to ~107 bytes)."""
    d = tempfile.mkdtemp(prefix="fl-", dir="/tmp")
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def path(sock_dir):
    return os.path.join(sock_dir, "s.sock")


async def unix_roundtrip(path, payload=b"over unix"):
    loop = asyncio.get_running_loop()
    tr, pr = await loop.create_unix_connection(Recorder, path)
    try:
        tr.write(payload)
        assert await pr.wait_bytes(len(payload)) == payload
        return tr.get_extra_info("peername"), tr.get_extra_info("sockname")
    finally:
        await close_transport(tr, pr)


def test_unix_server_and_connection(loop, path):
    async def main():
        async with ProtocolServer(EchoServerProtocol) as srv:
            await srv.start_unix(path)
            server = srv.server
            (ssock,) = server.sockets
            out = dict(
                serving=server.is_serving(),
                family=ssock.family,
                type=ssock.type,
                server_sockname=ssock.getsockname(),
                is_socket_file=stat.S_ISSOCK(os.stat(path).st_mode),
            )
            tr, pr = await loop.create_unix_connection(Recorder, path)
            tr.write(b"hello unix")
            out["echo"] = await pr.wait_bytes(10)
            (sp,) = await srv.accepted()
            sock = tr.get_extra_info("socket")
            out.update(
                client_peername=tr.get_extra_info("peername"),
                client_sockname=tr.get_extra_info("sockname"),
                server_side_sockname=sp.transport.get_extra_info("sockname"),
                server_side_peername=sp.transport.get_extra_info("peername"),
                sock_family=sock.family,
                sock_sockname=sock.getsockname(),
                sslcontext=tr.get_extra_info("sslcontext"),
                can_write_eof=tr.can_write_eof(),
            )
            tr.write_eof()
            out["lost"] = await asyncio.wait_for(pr.lost, 5)
            out["events"] = pr.events
        return out

    assert run(loop, main()) == dict(
        serving=True,
        family=socket.AF_UNIX,
        type=socket.SOCK_STREAM,
        server_sockname=path,
        is_socket_file=True,
        echo=b"hello unix",
        client_peername=path,
        client_sockname="",
        server_side_sockname=path,
        server_side_peername="",
        sock_family=socket.AF_UNIX,
        sock_sockname="",
        sslcontext=None,
        can_write_eof=True,
        lost=None,
        events=["made", "data", "eof", "lost"],
    )


def test_unix_path_as_pathlib(loop, path):
    async def main():
        async with ProtocolServer(EchoServerProtocol) as srv:
            await srv.start_unix(pathlib.Path(path))
            peer, _ = await unix_roundtrip(pathlib.Path(path))
            return srv.server.sockets[0].getsockname(), peer

    assert run(loop, main()) == (path, path)


def test_unix_socket_file_after_close(loop, path):
    async def main():
        srv = ProtocolServer(EchoServerProtocol)
        await srv.start_unix(path)
        await srv.close()
        return os.path.exists(path)

    # asyncio leaves the file behind before 3.13; from 3.13 (cleanup_socket=True) it
    # removes it.
    assert run(loop, main()) == (sys.version_info < (3, 13))


def test_unix_stale_socket_file_is_replaced(loop, path):
    # A socket file nobody listens on any more (as a crashed server leaves behind).
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(path)
    stale.close()
    assert stat.S_ISSOCK(os.stat(path).st_mode)

    async def main():
        async with ProtocolServer(EchoServerProtocol) as srv:
            await srv.start_unix(path)
            await unix_roundtrip(path)

    run(loop, main())


def test_unix_path_that_is_a_regular_file_is_in_use(loop, path):
    with open(path, "w") as f:
        f.write("not a socket")

    async def main():
        with pytest.raises(OSError) as info:
            await loop.create_unix_server(Recorder, path)
        return info.value.errno

    assert run(loop, main()) == errno.EADDRINUSE
    with open(path) as f:
        assert f.read() == "not a socket"  # left alone


def test_unix_server_takes_over_a_live_path(loop, path):
    async def main():
        async with ProtocolServer(EchoServerProtocol) as srv:
            await srv.start_unix(path)
            # asyncio removes a socket file before binding even if a server still
            # listens on it: the new server takes the path over.
            async with ProtocolServer(EchoServerProtocol) as second:
                await second.start_unix(path)
                await unix_roundtrip(path)
                return len(srv.protocols), len(second.protocols)

    assert run(loop, main()) == (0, 1)


def test_unix_abstract_namespace(loop):
    name = "\0fastloop-test-" + uuid.uuid4().hex

    async def main():
        async with ProtocolServer(EchoServerProtocol) as srv:
            await srv.start_unix(name)
            server_name = srv.server.sockets[0].getsockname()
            peer, _ = await unix_roundtrip(name)
            return server_name, peer

    server_name, peer = run(loop, main())
    # Python reports abstract addresses as bytes.
    assert server_name == name.encode()
    assert peer == name.encode()


def test_unix_connection_with_sock(loop, path):
    async def main():
        async with ProtocolServer(EchoServerProtocol) as srv:
            await srv.start_unix(path)
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.connect(path)
            sock.setblocking(False)
            tr, pr = await loop.create_unix_connection(Recorder, sock=sock)
            tr.write(b"via sock")
            data = await pr.wait_bytes(8)
            await close_transport(tr, pr)
            return data, sock.fileno()

    assert run(loop, main()) == (b"via sock", -1)


async def echo_server_on_bound_socket(loop, path):
    """An echo server made by create_unix_server(sock=) on a socket bound to `path`."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(path)
    srv = ProtocolServer(EchoServerProtocol)
    srv.server = await loop.create_unix_server(srv.factory, sock=sock)
    return srv, sock


def test_unix_server_with_sock(loop, path):
    async def main():
        srv, sock = await echo_server_on_bound_socket(loop, path)
        async with srv:
            assert srv.server.sockets[0].getsockname() == path
            await unix_roundtrip(path)
        return sock.fileno()

    assert run(loop, main()) == -1


def test_unix_socketpair_connection(loop):
    async def main():
        a, b = socket.socketpair()
        a.setblocking(False)
        with b:
            tr, pr = await loop.create_unix_connection(Recorder, sock=a)
            b.sendall(b"from the pair")
            data = await pr.wait_bytes(13)
            tr.write(b"back")
            got = await loop.run_in_executor(None, recv_exactly, b, 4)
            await close_transport(tr, pr)
            return data, got

    assert run(loop, main()) == (b"from the pair", b"back")


def test_unix_argument_errors(loop, path):
    async def main():
        with socket.socket(socket.AF_INET) as s:
            with pytest.raises(ValueError):
                await loop.create_unix_server(Recorder, sock=s)
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
            with pytest.raises(ValueError):
                await loop.create_unix_connection(Recorder, sock=s)
        with socket.socket(socket.AF_UNIX) as s:
            with pytest.raises(ValueError):
                await loop.create_unix_connection(Recorder, path, sock=s)
        with pytest.raises(ValueError):
            await loop.create_unix_connection(Recorder)

    run(loop, main())


def test_unix_connect_errors(loop, path):
    async def main():
        with pytest.raises(FileNotFoundError):
            await loop.create_unix_connection(Recorder, path)
        # A socket file with nobody listening.
        stale = socket.socket(socket.AF_UNIX)
        stale.bind(path)
        stale.close()
        with pytest.raises(ConnectionRefusedError):
            await loop.create_unix_connection(Recorder, path)

    run(loop, main())


def test_unix_start_serving_false(loop, path):
    async def main():
        async with ProtocolServer(EchoServerProtocol, start_serving=False) as srv:
            await srv.start_unix(path)
            assert not srv.server.is_serving()
            await srv.server.start_serving()
            assert srv.server.is_serving()
            await unix_roundtrip(path)

    run(loop, main())


def test_unix_streams(loop, path):
    async def handler(reader, writer):
        line = await reader.readline()
        writer.write(line.upper())
        data = await reader.read()
        writer.write(b"%d" % len(data))
        await writer.drain()
        writer.close()
        await writer.wait_closed()

    async def main():
        server = await asyncio.start_unix_server(handler, path)
        async with server:
            reader, writer = await asyncio.open_unix_connection(path)
            writer.write(b"shout\n" + b"z" * 100_000)
            writer.write_eof()
            line = await reader.readline()
            rest = await reader.read()
            writer.close()
            await writer.wait_closed()
            return line, rest, writer.get_extra_info("peername")

    assert run(loop, main()) == (b"SHOUT\n", b"100000", path)


@pytest.mark.timeout(60)
def test_unix_large_transfer(loop, path):
    size = 16 * 1024 * 1024
    payload = pattern(size, seed=2)

    async def main():
        async with ProtocolServer(EchoServerProtocol) as srv:
            await srv.start_unix(path)
            tr, pr = await loop.create_unix_connection(Recorder, path)
            tr.write(payload)
            tr.write_eof()
            await asyncio.wait_for(pr.lost, 40)
            return len(pr.data), digest(pr.data)

    assert run(loop, main(), timeout=50) == (size, digest(payload))


# Python 3.13 added create_unix_server(cleanup_socket=True): closing the server removes
# its socket file (a path given or the name of a sock= given), unless the path names
# another file by then (unix_events._UnixSelectorEventLoop.create_unix_server and
# _stop_serving compare the inode, gh-111246). Before, the file stays and the keyword
# is unknown.
CLEANS_UP_SOCKET_FILES = sys.version_info >= (3, 13)


def test_unix_server_cleanup_socket_false(loop, path):
    async def main():
        if not CLEANS_UP_SOCKET_FILES:
            with pytest.raises(TypeError):
                await loop.create_unix_server(Recorder, path, cleanup_socket=False)
            return os.path.exists(path)
        async with ProtocolServer(EchoServerProtocol, cleanup_socket=False) as srv:
            await srv.start_unix(path)
            await unix_roundtrip(path)
        return os.path.exists(path)

    assert run(loop, main()) is CLEANS_UP_SOCKET_FILES


def test_unix_server_with_sock_socket_file_after_close(loop, path):
    async def main():
        srv, sock = await echo_server_on_bound_socket(loop, path)
        async with srv:
            await unix_roundtrip(path)
        return sock.fileno(), os.path.exists(path)

    assert run(loop, main()) == (-1, not CLEANS_UP_SOCKET_FILES)


def test_unix_server_leaves_a_file_that_replaced_its_socket(loop, path):
    """The path names another socket when the server closes: it stays (3.13+), as it
    does before 3.13, when no socket file is removed."""

    async def main():
        async with ProtocolServer(EchoServerProtocol) as srv:
            await srv.start_unix(path)
            os.unlink(path)
            other = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            other.bind(path)
            inode = os.stat(path).st_ino
        with other:
            return os.stat(path).st_ino == inode

    assert run(loop, main())
