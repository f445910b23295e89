"""The low-level socket API: sock_recv & co., sock_sendall, sock_sendto, sock_connect,
sock_accept and sock_sendfile, with asyncio's checks, waiting, cancellation and errors.

Waiting operations use the loop's fd watchers, so a test that leaves a watcher behind
(after cancelling an operation, say) is caught with ``loop.remove_reader(fd)``, which
answers True only while a reader is registered.
"""

import asyncio
import errno
import io
import os
import socket
import ssl
import tempfile

import pytest

from .netutil import HOST, pattern, run

pytestmark = pytest.mark.timeout(30)


def close_socks(loop, *socks):
    """Close sockets; a failed test may have left watchers on them: drop those first."""
    for s in socks:
        if s.fileno() >= 0 and not loop.is_closed():
            loop.remove_reader(s.fileno())
            loop.remove_writer(s.fileno())
        s.close()


@pytest.fixture
def sockpair(loop):
    a, b = socket.socketpair()
    a.setblocking(False)
    b.setblocking(False)
    yield a, b
    close_socks(loop, a, b)


@pytest.fixture
def udp_pair(loop):
    a = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    b = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    for s in (a, b):
        s.setblocking(False)
        s.bind((HOST, 0))
    yield a, b
    close_socks(loop, a, b)


@pytest.fixture
def listener(loop):
    sock = socket.socket()
    sock.setblocking(False)
    sock.bind((HOST, 0))
    sock.listen(8)
    yield sock
    close_socks(loop, sock)


def free_port():
    """A TCP port on 127.0.0.1 nobody listens on (just released)."""
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


async def spin(n=3):
    for _ in range(n):
        await asyncio.sleep(0)


def fill_send_buffer(sock):
    """Send until the kernel would block; return how many bytes went."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    total = 0
    size = 65536
    while size >= 1:
        try:
            while True:
                total += sock.send(b"x" * size)
        except BlockingIOError:
            size //= 2
    return total


async def drain(loop, sock, n):
    """sock_recv until n bytes came (or EOF); return them."""
    chunks = []
    got = 0
    while got < n:
        chunk = await loop.sock_recv(sock, 65536)
        if not chunk:
            break
        chunks.append(chunk)
        got += len(chunk)
    return b"".join(chunks)


# ---- receiving ----------------------------------------------------------------------


def test_sock_recv_ready_data(loop, sockpair):
    a, b = sockpair
    b.send(b"hello")
    assert run(loop, loop.sock_recv(a, 100)) == b"hello"


def test_sock_recv_waits_for_data(loop, sockpair):
    a, b = sockpair

    async def main():
        task = asyncio.ensure_future(loop.sock_recv(a, 100))
        await spin()
        assert not task.done()
        loop.call_later(0.01, b.send, b"later")
        return await task

    assert run(loop, main()) == b"later"
    # The watcher is gone once the operation completed.
    assert loop.remove_reader(a.fileno()) is False


def test_sock_recv_respects_n(loop, sockpair):
    a, b = sockpair
    b.send(b"0123456789")

    async def main():
        return [await loop.sock_recv(a, 4), await loop.sock_recv(a, 4), await loop.sock_recv(a, 4)]

    assert run(loop, main()) == [b"0123", b"4567", b"89"]


def test_sock_recv_eof(loop, sockpair):
    a, b = sockpair

    async def main():
        task = asyncio.ensure_future(loop.sock_recv(a, 100))
        await spin()
        b.shutdown(socket.SHUT_WR)
        return await task

    assert run(loop, main()) == b""


def test_sock_recv_error_while_waiting(loop):
    # A reset while waiting reaches the caller as ConnectionResetError.
    lsock = socket.create_server((HOST, 0))
    client = socket.socket()
    client.setblocking(False)

    async def main():
        await loop.sock_connect(client, lsock.getsockname())
        server, _ = lsock.accept()
        task = asyncio.ensure_future(loop.sock_recv(client, 100))
        await spin()
        # SO_LINGER 0: close() sends a RST.
        server.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        server.close()
        with pytest.raises(ConnectionResetError):
            await task

    try:
        run(loop, main())
    finally:
        close_socks(loop, client, lsock)


def test_sock_recv_into(loop, sockpair):
    a, b = sockpair
    buf = bytearray(10)

    async def main():
        b.send(b"abc")
        n1 = await loop.sock_recv_into(a, buf)
        task = asyncio.ensure_future(loop.sock_recv_into(a, memoryview(buf)[3:]))
        await spin()
        assert not task.done()
        b.send(b"defghijklmnop")
        n2 = await task
        return n1, n2

    assert run(loop, main()) == (3, 7)
    assert buf == b"abcdefghij"
    assert loop.remove_reader(a.fileno()) is False


# The first try of sock_recv/sock_recv_into is made natively for a plain non-blocking
# socket.socket (cpp/sockwait.hpp); anything else gets its own method called, errors
# included, as asyncio calls it.


class CountingSocket(socket.socket):
    calls = 0

    def recv(self, n):
        CountingSocket.calls += 1
        return super().recv(n)

    def recv_into(self, buf):
        CountingSocket.calls += 1
        return super().recv_into(buf)


def test_sock_recv_calls_a_recv_the_socket_class_replaced(loop):
    a = CountingSocket(socket.AF_UNIX, socket.SOCK_STREAM)
    b = None
    path = tempfile.mktemp(prefix="fl-sock-")
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(path)
    server.listen(1)
    try:
        a.connect(path)
        b, _ = server.accept()
        for s in (a, b):
            s.setblocking(False)
        CountingSocket.calls = 0
        b.send(b"ready")
        assert run(loop, loop.sock_recv(a, 100)) == b"ready"
        b.send(b"into")
        buf = bytearray(10)
        assert run(loop, loop.sock_recv_into(a, buf)) == 4
        assert buf[:4] == b"into"
        assert CountingSocket.calls == 2
    finally:
        close_socks(loop, *(s for s in (a, b, server) if s is not None))
        os.unlink(path)


def test_sock_recv_errors_are_the_socket_methods(loop, sockpair):
    a, b = sockpair
    with pytest.raises(ValueError, match="negative buffersize in recv"):
        run(loop, loop.sock_recv(a, -1))
    with pytest.raises(TypeError, match="integer"):
        run(loop, loop.sock_recv(a, 1.5))
    with pytest.raises(TypeError, match="read-write bytes-like object, not bytes"):
        run(loop, loop.sock_recv_into(a, b"read only"))
    b.send(b"x")
    assert run(loop, loop.sock_recv(a, 0)) == b""
    assert run(loop, loop.sock_recv(a, 10)) == b"x"
    a.close()
    with pytest.raises(OSError) as info:
        run(loop, loop.sock_recv(a, 10))
    assert info.value.errno == errno.EBADF


def test_sock_recv_of_nothing_on_a_listening_socket(loop, listener):
    # The socket module asks the kernel for nothing when there is no room: b'' and 0,
    # where a recv(2) of 0 bytes on a listening socket fails with ENOTCONN.
    assert run(loop, loop.sock_recv(listener, 0)) == b""
    assert run(loop, loop.sock_recv_into(listener, bytearray())) == 0


def test_sock_recv_on_a_socket_with_a_timeout_calls_its_recv(loop, sockpair):
    # asyncio calls sock.recv(), which for a socket with a timeout waits (blocking the
    # loop) up to that timeout; without data it raises TimeoutError, not a wait.
    a, b = sockpair
    a.settimeout(0.01)
    with pytest.raises(TimeoutError, match="^timed out$"):  # the socket's, not wait_for's
        run(loop, loop.sock_recv(a, 10), timeout=5)
    a.setblocking(False)


def test_sock_recvfrom(loop, udp_pair):
    a, b = udp_pair

    async def main():
        b.sendto(b"first", a.getsockname())
        got = [await loop.sock_recvfrom(a, 100)]
        task = asyncio.ensure_future(loop.sock_recvfrom(a, 3))
        await spin()
        assert not task.done()
        b.sendto(b"second", a.getsockname())
        got.append(await task)  # truncated to bufsize, as recvfrom does
        return got

    assert run(loop, main()) == [(b"first", b.getsockname()), (b"sec", b.getsockname())]


def test_sock_recvfrom_into(loop, udp_pair):
    a, b = udp_pair
    buf = bytearray(8)

    async def main():
        b.sendto(b"abcdef", a.getsockname())
        first = await loop.sock_recvfrom_into(a, buf)
        task = asyncio.ensure_future(loop.sock_recvfrom_into(a, buf, 2))
        await spin()
        b.sendto(b"xyz", a.getsockname())
        return first, await task

    first, second = run(loop, main())
    assert first == (6, b.getsockname())
    assert second == (2, b.getsockname())
    assert buf == b"xycdef\x00\x00"


# ---- sending --------------------------------------------------------------------------


def test_sock_sendall_small(loop, sockpair):
    a, b = sockpair

    async def main():
        assert await loop.sock_sendall(a, b"ping") is None
        assert await loop.sock_sendall(a, bytearray(b"-")) is None
        assert await loop.sock_sendall(a, memoryview(b"pong")) is None
        assert await loop.sock_sendall(a, b"") is None
        return await drain(loop, b, 9)

    assert run(loop, main()) == b"ping-pong"


@pytest.mark.parametrize("size", [1 << 20, 8 << 20])
def test_sock_sendall_large_partial_writes(loop, sockpair, size):
    # Far more than the socket buffers hold: sock_sendall sends in pieces while the
    # reader drains, and the data arrives whole and in order.
    a, b = sockpair
    data = pattern(size)

    async def main():
        reader = asyncio.ensure_future(drain(loop, b, size))
        await loop.sock_sendall(a, data)
        return await reader

    assert run(loop, main()) == data
    assert loop.remove_writer(a.fileno()) is False


def test_sock_sendall_waits_for_room(loop, sockpair):
    a, b = sockpair
    filled = fill_send_buffer(a)

    async def main():
        task = asyncio.ensure_future(loop.sock_sendall(a, b"tail"))
        await spin()
        assert not task.done()
        received = await drain(loop, b, filled + 4)
        await task
        return received

    received = run(loop, main())
    assert len(received) == filled + 4 and received.endswith(b"tail")


def test_sock_sendall_broken_pipe(loop, sockpair):
    a, b = sockpair
    b.close()
    with pytest.raises((BrokenPipeError, ConnectionResetError)):
        run(loop, loop.sock_sendall(a, b"x" * 100))


def test_sock_sendto(loop, udp_pair):
    a, b = udp_pair

    async def main():
        n = await loop.sock_sendto(a, b"datagram", b.getsockname())
        data = await loop.sock_recvfrom(b, 100)
        return n, data

    assert run(loop, main()) == (8, (b"datagram", a.getsockname()))


# ---- connecting and accepting ------------------------------------------------------------


def test_sock_connect_and_accept(loop, listener):
    client = socket.socket()
    client.setblocking(False)

    async def main():
        accept = asyncio.ensure_future(loop.sock_accept(listener))
        await loop.sock_connect(client, listener.getsockname())
        conn, addr = await accept
        try:
            assert conn.gettimeout() == 0  # non-blocking
            assert addr == client.getsockname()
            assert client.getpeername() == listener.getsockname()
            await loop.sock_sendall(client, b"hi")
            return await loop.sock_recv(conn, 10)
        finally:
            conn.close()

    try:
        assert run(loop, main()) == b"hi"
    finally:
        close_socks(loop, client)


def test_sock_accept_pending_connection(loop, listener):
    # A connection already queued is accepted without waiting.
    client = socket.create_connection(listener.getsockname())
    try:
        conn, addr = run(loop, loop.sock_accept(listener))
        with conn:
            assert conn.gettimeout() == 0
            assert addr == client.getsockname()
    finally:
        client.close()


def test_sock_connect_resolves_names(loop, listener):
    # "localhost" goes through getaddrinfo (restricted to the socket's family).
    client = socket.socket(socket.AF_INET)
    client.setblocking(False)

    async def main():
        await loop.sock_connect(client, ("localhost", listener.getsockname()[1]))
        conn, _ = await loop.sock_accept(listener)
        conn.close()
        return client.getpeername()

    try:
        assert run(loop, main()) == listener.getsockname()
    finally:
        close_socks(loop, client)


def test_sock_connect_unresolvable_name(loop):
    client = socket.socket()
    client.setblocking(False)
    try:
        with pytest.raises(socket.gaierror):
            run(loop, loop.sock_connect(client, ("nonexistent.invalid", 80)))
    finally:
        close_socks(loop, client)


def test_sock_connect_refused(loop):
    client = socket.socket()
    client.setblocking(False)
    try:
        with pytest.raises(ConnectionRefusedError):
            run(loop, loop.sock_connect(client, (HOST, free_port())))
    finally:
        close_socks(loop, client)
    assert client.fileno() == -1


@pytest.mark.skipif(not socket.has_ipv6, reason="no IPv6")
def test_sock_connect_ipv6(loop):
    try:
        lsock = socket.create_server(("::1", 0), family=socket.AF_INET6)
    except OSError:
        pytest.skip("::1 is not available")
    client = socket.socket(socket.AF_INET6)
    client.setblocking(False)

    async def main():
        await loop.sock_connect(client, lsock.getsockname()[:2])
        conn, addr = await loop.sock_accept(lsock)
        conn.close()
        return addr

    try:
        assert run(loop, main()) == client.getsockname()
    finally:
        close_socks(loop, client, lsock)


def test_sock_unix_connect_accept(loop):
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "sock")
        lsock = socket.socket(socket.AF_UNIX)
        lsock.bind(path)
        lsock.listen(1)
        lsock.setblocking(False)
        client = socket.socket(socket.AF_UNIX)
        client.setblocking(False)

        async def main():
            await loop.sock_connect(client, path)
            conn, _ = await loop.sock_accept(lsock)
            with conn:
                await loop.sock_sendall(conn, b"over unix")
                return await loop.sock_recv(client, 100)

        try:
            assert run(loop, main()) == b"over unix"
            missing = socket.socket(socket.AF_UNIX)
            missing.setblocking(False)
            with missing, pytest.raises(FileNotFoundError):
                run(loop, loop.sock_connect(missing, os.path.join(d, "missing")))
        finally:
            close_socks(loop, client, lsock)


def test_cancel_sock_accept(loop, listener):
    # CPython's test_cancel_sock_accept: a timed-out sock_accept leaves no watcher
    # behind, and the listener closes cleanly.
    sockaddr = listener.getsockname()
    with pytest.raises(asyncio.TimeoutError):
        loop.run_until_complete(asyncio.wait_for(loop.sock_accept(listener), 0.05))
    assert loop.remove_reader(listener.fileno()) is False
    listener.close()
    client = socket.socket()
    client.setblocking(False)
    try:
        with pytest.raises(ConnectionRefusedError):
            run(loop, loop.sock_connect(client, sockaddr))
    finally:
        client.close()


# ---- cancellation and watchers ---------------------------------------------------------


@pytest.mark.parametrize("op", ["recv", "recv_into", "recvfrom", "recvfrom_into", "accept"])
def test_cancel_removes_reader(loop, op):
    sock = socket.socket(
        socket.AF_INET, socket.SOCK_STREAM if op == "accept" else socket.SOCK_DGRAM
    )
    sock.setblocking(False)
    sock.bind((HOST, 0))
    if op == "accept":
        sock.listen(1)
    calls = {
        "recv": lambda: loop.sock_recv(sock, 10),
        "recv_into": lambda: loop.sock_recv_into(sock, bytearray(10)),
        "recvfrom": lambda: loop.sock_recvfrom(sock, 10),
        "recvfrom_into": lambda: loop.sock_recvfrom_into(sock, bytearray(10)),
        "accept": lambda: loop.sock_accept(sock),
    }

    async def main():
        task = asyncio.ensure_future(calls[op]())
        await spin()
        assert not task.done()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await spin()

    try:
        run(loop, main())
        assert loop.remove_reader(sock.fileno()) is False
    finally:
        close_socks(loop, sock)


def test_cancel_sock_sendall_removes_writer(loop, sockpair):
    a, b = sockpair
    fill_send_buffer(a)

    async def main():
        task = asyncio.ensure_future(loop.sock_sendall(a, b"blocked"))
        await spin()
        assert not task.done()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await spin()

    run(loop, main())
    assert loop.remove_writer(a.fileno()) is False


def test_cancelled_operation_leaves_the_next_one_alone(loop, sockpair):
    # CPython's _basetest_sock_recv_racing: cancel a waiting sock_recv and at once
    # start another on the same socket. The cancelled one's clean-up must not remove
    # the watcher the new one installed.
    a, b = sockpair

    async def main():
        task = asyncio.ensure_future(loop.sock_recv(a, 100))
        await asyncio.sleep(0)
        task.cancel()
        loop.call_later(0.02, b.send, b"for the second")
        data = await loop.sock_recv(a, 100)
        assert task.cancelled()
        return data

    assert run(loop, main()) == b"for the second"


def test_cancelled_sendall_leaves_the_next_one_alone(loop, sockpair):
    # CPython's _basetest_sock_send_racing.
    a, b = sockpair
    filled = fill_send_buffer(a)

    async def main():
        task = asyncio.ensure_future(loop.sock_sendall(a, b"hello"))
        await asyncio.sleep(0)
        task.cancel()
        reader = asyncio.ensure_future(drain(loop, b, filled + 5))
        await loop.sock_sendall(a, b"world")
        a.shutdown(socket.SHUT_WR)
        return await reader

    received = run(loop, main())
    assert received.endswith(b"world")


def test_concurrent_sock_recv_last_one_wins(loop, sockpair):
    # asyncio 3.11: the second sock_recv on a socket replaces the first one's
    # watcher; the first then waits until it is cancelled, and its cancellation
    # does not disturb the second.
    a, b = sockpair

    async def main():
        first = asyncio.ensure_future(loop.sock_recv(a, 100))
        await spin()
        second = asyncio.ensure_future(loop.sock_recv(a, 100))
        await spin()
        b.send(b"data")
        assert await asyncio.wait_for(second, 5) == b"data"
        await spin()
        assert not first.done()
        first.cancel()
        await spin()
        assert first.cancelled()
        b.send(b"more")
        return await loop.sock_recv(a, 100)

    assert run(loop, main()) == b"more"
    assert loop.remove_reader(a.fileno()) is False


def test_sock_recv_on_closed_loop(loop, sockpair):
    # Data already there is returned without the loop; waiting needs it.
    a, b = sockpair
    loop.close()
    b.send(b"x")
    coro = loop.sock_recv(a, 10)
    with pytest.raises(StopIteration) as info:
        coro.send(None)
    assert info.value.value == b"x"
    coro = loop.sock_recv(a, 10)
    with pytest.raises(RuntimeError, match="Event loop is closed"):
        coro.send(None)


# ---- argument checks ---------------------------------------------------------------------


def sock_calls(loop, sock):
    return {
        "sock_recv": lambda: loop.sock_recv(sock, 10),
        "sock_recv_into": lambda: loop.sock_recv_into(sock, bytearray(10)),
        "sock_recvfrom": lambda: loop.sock_recvfrom(sock, 10),
        "sock_recvfrom_into": lambda: loop.sock_recvfrom_into(sock, bytearray(10)),
        "sock_sendall": lambda: loop.sock_sendall(sock, b"x"),
        "sock_sendto": lambda: loop.sock_sendto(sock, b"x", (HOST, 9)),
        "sock_connect": lambda: loop.sock_connect(sock, (HOST, 9)),
        "sock_accept": lambda: loop.sock_accept(sock),
        "sock_sendfile": lambda: loop.sock_sendfile(sock, io.BytesIO(b"x")),
    }


SOCK_METHODS = list(sock_calls(None, None))


@pytest.mark.parametrize("method", SOCK_METHODS)
def test_debug_mode_rejects_blocking_socket(loop, method):
    loop.set_debug(True)
    sock = socket.socket()  # blocking
    try:
        with pytest.raises(ValueError, match="^the socket must be non-blocking$"):
            run(loop, sock_calls(loop, sock)[method]())
    finally:
        sock.close()


@pytest.mark.parametrize("method", SOCK_METHODS)
def test_ssl_socket_rejected(loop, method):
    ctx = ssl.create_default_context()
    sslsock = ctx.wrap_socket(socket.socket(), server_hostname="localhost")
    sslsock.setblocking(False)
    try:
        with pytest.raises(TypeError, match="^Socket cannot be of type SSLSocket$"):
            run(loop, sock_calls(loop, sslsock)[method]())
    finally:
        sslsock.close()


def test_blocking_socket_allowed_outside_debug_mode(loop, sockpair):
    a, b = sockpair
    a.setblocking(True)
    b.send(b"ready")
    assert run(loop, loop.sock_recv(a, 10)) == b"ready"


# ---- sock_sendfile -----------------------------------------------------------------------


@pytest.fixture
def data_file(tmp_path):
    data = pattern(3 << 20, seed=3)
    path = tmp_path / "data.bin"
    path.write_bytes(data)
    with open(path, "rb") as f:
        yield f, data


def sendfile_and_read(loop, a, b, file, expected_len, **kwargs):
    async def main():
        reader = asyncio.ensure_future(drain(loop, b, expected_len))
        sent = await loop.sock_sendfile(a, file, **kwargs)
        received = await reader
        return sent, received

    return run(loop, main())


def test_sock_sendfile_whole_file(loop, sockpair, data_file):
    a, b = sockpair
    f, data = data_file
    sent, received = sendfile_and_read(loop, a, b, f, len(data))
    assert sent == len(data)
    assert received == data
    assert f.tell() == len(data)
    assert loop.remove_writer(a.fileno()) is False


def test_sock_sendfile_offset_and_count(loop, sockpair, data_file):
    a, b = sockpair
    f, data = data_file
    sent, received = sendfile_and_read(loop, a, b, f, 1_000_000, offset=1000, count=1_000_000)
    assert sent == 1_000_000
    assert received == data[1000:1_001_000]
    assert f.tell() == 1_001_000


def test_sock_sendfile_count_past_end(loop, sockpair, data_file):
    a, b = sockpair
    f, data = data_file
    sent, received = sendfile_and_read(loop, a, b, f, 100, offset=len(data) - 100, count=5000)
    assert sent == 100
    assert received == data[-100:]
    assert f.tell() == len(data)


def test_sock_sendfile_empty_file(loop, sockpair, tmp_path):
    a, b = sockpair
    path = tmp_path / "empty"
    path.write_bytes(b"")
    with open(path, "rb") as f:
        assert run(loop, loop.sock_sendfile(a, f)) == 0
        assert f.tell() == 0


def test_sock_sendfile_fallback(loop, sockpair):
    # BytesIO has no fileno(): no zero-copy path, asyncio's read-and-send fallback.
    a, b = sockpair
    data = pattern(600_000, seed=5)
    f = io.BytesIO(data)
    sent, received = sendfile_and_read(loop, a, b, f, 500_000, offset=100_000)
    assert sent == 500_000
    assert received == data[100_000:]
    assert f.tell() == 600_000


def test_sock_sendfile_fallback_with_count(loop, sockpair):
    a, b = sockpair
    f = io.BytesIO(b"0123456789")
    sent, received = sendfile_and_read(loop, a, b, f, 4, offset=2, count=4)
    assert (sent, received) == (4, b"2345")
    assert f.tell() == 6


def test_sock_sendfile_no_fallback(loop, sockpair):
    a, b = sockpair
    with pytest.raises(asyncio.SendfileNotAvailableError, match="not a regular file"):
        run(loop, loop.sock_sendfile(a, io.BytesIO(b"data"), fallback=False))


def test_sock_sendfile_from_pipe(loop, sockpair):
    # os.sendfile() cannot read a pipe. Without a count, asyncio takes the pipe's size
    # (0) for an empty file; with one, the fallback sends the data, then fails to seek
    # the pipe to the end of what it sent (asyncio's behaviour).
    a, b = sockpair
    r, w = os.pipe()
    with os.fdopen(r, "rb", buffering=0) as rf, os.fdopen(w, "wb") as wf:
        wf.write(b"piped data")
        wf.flush()
        assert run(loop, loop.sock_sendfile(a, rf)) == 0
        with pytest.raises(asyncio.SendfileNotAvailableError, match="os.sendfile call failed"):
            run(loop, loop.sock_sendfile(a, rf, count=5, fallback=False))
        with pytest.raises(OSError) as info:
            run(loop, loop.sock_sendfile(a, rf, count=5))
        assert info.value.errno == errno.ESPIPE
        assert run(loop, drain(loop, b, 5)) == b"piped"


def test_sock_sendfile_cancelled(loop, loop_name, sockpair, data_file):
    # Cancelled midway: asyncio documents that "the file position is always updated,
    # even when this method raises an error", so that file.tell() tells how much was
    # sent. fastloop does so; asyncio 3.11 leaves the position where it was on
    # cancellation (its clean-up callback is removed with the writer).
    a, b = sockpair
    f, data = data_file

    async def main():
        task = asyncio.ensure_future(loop.sock_sendfile(a, f))
        await spin(5)
        assert not task.done()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        a.shutdown(socket.SHUT_WR)
        chunks = []
        while chunk := await loop.sock_recv(b, 65536):
            chunks.append(chunk)
        return b"".join(chunks)

    received = run(loop, main())
    assert 0 < len(received) < len(data)
    assert received == data[: len(received)]
    assert f.tell() == (0 if loop_name == "asyncio" else len(received))
    assert loop.remove_writer(a.fileno()) is False


def test_sock_sendfile_argument_checks(loop, sockpair, data_file, tmp_path):
    a, _ = sockpair
    f, _ = data_file
    text = tmp_path / "text.txt"
    text.write_text("text")
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp.setblocking(False)
    cases = [
        (dict(sock=a, file=open(text)), ValueError, "file should be opened in binary mode"),
        (dict(sock=udp, file=f), ValueError, "only SOCK_STREAM type sockets are supported"),
        (dict(sock=a, file=f, count="1"), TypeError, "count must be a positive integer (got '1')"),
        (dict(sock=a, file=f, count=0), ValueError, "count must be a positive integer (got 0)"),
        (dict(sock=a, file=f, count=-1), ValueError, "count must be a positive integer (got -1)"),
        (
            dict(sock=a, file=f, offset=1.5),
            TypeError,
            "offset must be a non-negative integer (got 1.5)",
        ),
        (
            dict(sock=a, file=f, offset=-1),
            ValueError,
            "offset must be a non-negative integer (got -1)",
        ),
    ]
    try:
        for kwargs, exc_type, message in cases:
            with pytest.raises(exc_type) as info:
                run(loop, loop.sock_sendfile(**kwargs))
            assert str(info.value) == message
    finally:
        cases[0][0]["file"].close()
        udp.close()


# ---- one socket waited on again and again -----------------------------------------------
# fastloop keeps a socket registered with the kernel from one wait to the next
# (cpp/sockwait.hpp); asyncio registers it for each wait. Either way, these hold.


def count_iterations(loop, coro):
    """Run coro on loop; return how many iterations the loop made meanwhile."""
    count = 0
    original = loop._run_once

    def counting():
        nonlocal count
        count += 1
        original()

    loop._run_once = counting
    try:
        run(loop, coro)
    finally:
        del loop._run_once
    return count


def test_a_new_socket_on_the_number_of_a_closed_one_is_waited_on(loop):
    # A socket is waited on, then closed while a copy of it (dup) keeps its file open;
    # a new socket gets its fd number. Waits on the new socket are served, and data
    # arriving for the old file wakes the loop once per arrival, not in a spin.
    a, b = socket.socketpair()
    c, d = socket.socketpair()
    keep = a.dup()
    new = None
    for s in (a, b, c, d, keep):
        s.setblocking(False)
    try:

        async def first():
            loop.call_later(0.01, b.send, b"one")
            return await loop.sock_recv(a, 100)

        assert run(loop, first()) == b"one"
        number = a.fileno()
        a.close()
        new = socket.socket(fileno=os.dup2(c.fileno(), number))
        new.setblocking(False)
        c.close()

        async def second():
            loop.call_later(0.01, b.send, b"to the old file")
            loop.call_later(0.03, d.send, b"two")
            return await loop.sock_recv(new, 100)

        assert run(loop, second(), timeout=5) == b"two"

        async def unwatched_arrivals():
            for _ in range(5):
                b.send(b"x" * 100)  # to the old file, which nobody waits on
                await asyncio.sleep(0.02)

        # About 2 per sleep; a loop woken at every poll makes thousands.
        assert count_iterations(loop, unwatched_arrivals()) < 100
        assert loop.remove_reader(number) is False
    finally:
        close_socks(loop, *(s for s in (a, b, c, d, keep, new) if s is not None))


def test_remove_reader_takes_a_pending_sock_recv_away(loop, sockpair):
    a, b = sockpair

    async def main():
        task = asyncio.ensure_future(loop.sock_recv(a, 100))
        await spin()
        # The operation's wait is the fd's reader, as asyncio registers it.
        assert loop.remove_reader(a.fileno()) is True
        b.send(b"nobody reads this")
        await asyncio.sleep(0.02)
        assert not task.done()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    run(loop, main())
    assert a.recv(100) == b"nobody reads this"
    assert loop.remove_reader(a.fileno()) is False


def test_add_reader_replaces_a_pending_sock_recv(loop, sockpair):
    a, b = sockpair
    got = []

    async def main():
        task = asyncio.ensure_future(loop.sock_recv(a, 100))
        await spin()
        loop.add_reader(a.fileno(), lambda: got.append(a.recv(100)))
        b.send(b"to the reader")
        while not got:
            await asyncio.sleep(0.005)
        assert not task.done()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    run(loop, main())
    assert got == [b"to the reader"]


def test_sock_recv_after_the_socket_was_waited_on_and_read_directly(loop, sockpair):
    # Between two waits the program reads the socket itself, many times: the
    # registration kept for it must not lose the next wait's wake-up.
    a, b = sockpair

    async def main():
        got = []
        for i in range(40):
            if i % 3 == 0:
                loop.call_later(0.001, b.send, b"%d," % i)
                got.append(await loop.sock_recv(a, 100))
            else:
                b.send(b"%d," % i)
                await spin(1)
                got.append(a.recv(100))
        return b"".join(got)

    assert run(loop, main()) == b"".join(b"%d," % i for i in range(40))
