"""Datagram endpoints: create_datagram_endpoint and its transport (UDP over 127.0.0.1 /
::1, Unix datagram sockets), in asyncio's order of protocol callbacks and with its
argument checks."""

import asyncio
import errno
import json
import os
import socket
import tempfile

import pytest

from .netutil import (
    ASYNCIO_KEEPS_SENT_HEADERS,
    CHECKS_SOCKET_OWNER,
    HEADER_SIZE,
    HOST,
    NOT_A_DATAGRAM_SOCKET,
    SENDS_EMPTY_DATAGRAMS,
    TAKES_ANY_NON_STREAM_SOCKET,
    child_stdout,
    run,
    run_child,
)

pytestmark = pytest.mark.timeout(30)


class DatagramRecorder(asyncio.DatagramProtocol):
    """Records its callbacks: ``events`` (names in order), ``datagrams`` and ``errors``."""

    def __init__(self):
        loop = asyncio.get_running_loop()
        self.events = []
        self.datagrams = []
        self.errors = []
        self.transport = None
        self.lost = loop.create_future()
        self._waiters = []

    def _wake(self):
        waiters, self._waiters = self._waiters, []
        for w in waiters:
            if not w.done():
                w.set_result(None)

    def connection_made(self, transport):
        self.events.append("made")
        self.transport = transport

    def datagram_received(self, data, addr):
        self.events.append("datagram")
        self.datagrams.append((data, addr))
        self._wake()

    def error_received(self, exc):
        self.events.append("error")
        self.errors.append(exc)
        self._wake()

    def pause_writing(self):
        self.events.append("pause_writing")

    def resume_writing(self):
        self.events.append("resume_writing")

    def connection_lost(self, exc):
        self.events.append("lost")
        if not self.lost.done():
            self.lost.set_result(exc)

    async def wait_for(self, predicate, timeout=5.0):
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while not predicate():
            if loop.time() > deadline:
                raise AssertionError(f"condition not reached in time: {self.events}")
            fut = loop.create_future()
            self._waiters.append(fut)
            await asyncio.wait_for(fut, max(0.0, deadline - loop.time()) + 0.1)


class EchoDatagram(DatagramRecorder):
    def datagram_received(self, data, addr):
        super().datagram_received(data, addr)
        self.transport.sendto(data, addr)


async def close_endpoint(transport, protocol):
    if not transport.is_closing():
        transport.close()
    return await asyncio.wait_for(protocol.lost, 5)


def free_udp_port():
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def test_local_endpoint_receives(loop):
    async def main():
        tr, pr = await loop.create_datagram_endpoint(DatagramRecorder, local_addr=(HOST, 0))
        # connection_made() has run when create_datagram_endpoint returns.
        assert pr.events == ["made"] and pr.transport is tr
        addr = tr.get_extra_info("sockname")
        assert addr[0] == HOST and addr[1] > 0
        assert tr.get_extra_info("peername") is None
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as peer:
            peer.bind((HOST, 0))
            peer.sendto(b"one", addr)
            peer.sendto(b"two", addr)
            await pr.wait_for(lambda: len(pr.datagrams) == 2)
            assert pr.datagrams == [(b"one", peer.getsockname()), (b"two", peer.getsockname())]
        assert await close_endpoint(tr, pr) is None
        return pr.events

    assert run(loop, main()) == ["made", "datagram", "datagram", "lost"]


def test_extra_info_socket(loop):
    async def main():
        tr, pr = await loop.create_datagram_endpoint(DatagramRecorder, local_addr=(HOST, 0))
        sock = tr.get_extra_info("socket")
        assert isinstance(sock, asyncio.trsock.TransportSocket)
        assert sock.family == socket.AF_INET
        assert sock.type == socket.SOCK_DGRAM
        assert sock.getsockname() == tr.get_extra_info("sockname")
        assert sock.fileno() >= 0
        assert sock.gettimeout() == 0
        assert tr.get_extra_info("missing", "default") == "default"
        assert tr.get_protocol() is pr
        assert tr.get_write_buffer_size() == 0
        assert tr.is_closing() is False
        await close_endpoint(tr, pr)
        assert tr.is_closing() is True
        assert sock.fileno() == -1  # the socket is closed with the transport

    run(loop, main())


def test_echo_connected_client(loop):
    async def main():
        srv_tr, srv_pr = await loop.create_datagram_endpoint(EchoDatagram, local_addr=(HOST, 0))
        srv_addr = srv_tr.get_extra_info("sockname")
        tr, pr = await loop.create_datagram_endpoint(DatagramRecorder, remote_addr=srv_addr)
        assert tr.get_extra_info("peername") == srv_addr
        local = tr.get_extra_info("sockname")
        tr.sendto(b"ping")
        tr.sendto(bytearray(b"pong"), srv_addr)  # the peer's own address is allowed
        tr.sendto(memoryview(b"pang"), None)
        await pr.wait_for(lambda: len(pr.datagrams) == 3)
        assert pr.datagrams == [(b"ping", srv_addr), (b"pong", srv_addr), (b"pang", srv_addr)]
        assert srv_pr.datagrams == [(b"ping", local), (b"pong", local), (b"pang", local)]
        with pytest.raises(ValueError) as info:
            tr.sendto(b"x", (HOST, 9))
        assert str(info.value) == f"Invalid address: must be None or {srv_addr}"
        await close_endpoint(tr, pr)
        await close_endpoint(srv_tr, srv_pr)

    run(loop, main())


def test_sendto_unconnected(loop):
    async def main():
        a_tr, a_pr = await loop.create_datagram_endpoint(DatagramRecorder, local_addr=(HOST, 0))
        b_tr, b_pr = await loop.create_datagram_endpoint(DatagramRecorder, local_addr=(HOST, 0))
        a_tr.sendto(b"to b", b_tr.get_extra_info("sockname"))
        await b_pr.wait_for(lambda: b_pr.datagrams)
        assert b_pr.datagrams == [(b"to b", a_tr.get_extra_info("sockname"))]
        await close_endpoint(a_tr, a_pr)
        await close_endpoint(b_tr, b_pr)

    run(loop, main())


# The forms of address and data sendto() takes. fastloop's core converts the common ones
# itself (a dotted-quad (host, port) tuple, the tuple a datagram came with, bytes and
# contiguous buffers) and hands the rest to the socket object, as asyncio does with all:
# each case must end as on asyncio's loop.
class _Port(int):
    pass


SENDTO_ADDRESSES = {
    "dotted quad": lambda port: (HOST, port),
    "host name": lambda port: ("localhost", port),
    "port an int subclass": lambda port: (HOST, _Port(port)),
}


@pytest.mark.parametrize("form", sorted(SENDTO_ADDRESSES))
def test_sendto_address_forms(loop, form):
    async def main():
        a_tr, a_pr = await loop.create_datagram_endpoint(DatagramRecorder, local_addr=(HOST, 0))
        b_tr, b_pr = await loop.create_datagram_endpoint(DatagramRecorder, local_addr=(HOST, 0))
        port = b_tr.get_extra_info("sockname")[1]
        a_tr.sendto(b"hello", SENDTO_ADDRESSES[form](port))
        await b_pr.wait_for(lambda: b_pr.datagrams)
        assert b_pr.datagrams == [(b"hello", a_tr.get_extra_info("sockname"))]
        await close_endpoint(a_tr, a_pr)
        await close_endpoint(b_tr, b_pr)

    run(loop, main())


def test_reply_to_the_address_received_and_to_an_equal_one(loop):
    """An echo server answers each datagram with the address tuple it came with (the
    core keeps that tuple's sockaddr) and with an equal tuple made anew; many round
    trips, every byte checked, with two clients so the remembered address changes."""

    async def main():
        srv_tr, srv_pr = await loop.create_datagram_endpoint(EchoDatagram, local_addr=(HOST, 0))
        srv_addr = srv_tr.get_extra_info("sockname")
        clients = [
            await loop.create_datagram_endpoint(DatagramRecorder, remote_addr=srv_addr)
            for _ in range(2)
        ]
        for i in range(200):
            tr, pr = clients[i % 2]
            payload = f"message {i}".encode() * (i % 7 + 1)
            tr.sendto(payload)
            await pr.wait_for(lambda pr=pr, i=i: len(pr.datagrams) == i // 2 + 1)
            assert pr.datagrams[-1] == (payload, srv_addr)
        # The same peer, its address as a new tuple: equal, not identical.
        data, addr = srv_pr.datagrams[-1]
        tr, pr = clients[1]
        srv_tr.sendto(b"again", (str(addr[0]), int(addr[1])))
        await pr.wait_for(lambda: pr.datagrams[-1][0] == b"again")
        assert len(srv_pr.datagrams) == 200
        for tr, pr in clients:
            await close_endpoint(tr, pr)
        await close_endpoint(srv_tr, srv_pr)

    run(loop, main())


def test_sendto_data_forms(loop):
    async def main():
        a_tr, a_pr = await loop.create_datagram_endpoint(DatagramRecorder, local_addr=(HOST, 0))
        b_tr, b_pr = await loop.create_datagram_endpoint(DatagramRecorder, local_addr=(HOST, 0))
        to = b_tr.get_extra_info("sockname")

        class Bytes(bytes):
            pass

        sent = [
            b"bytes",
            bytearray(b"bytearray"),
            memoryview(b"memoryview"),
            memoryview(b"--slice--")[2:-2],
            Bytes(b"subclass"),
            memoryview(bytearray(b"12345678")).cast("I"),
        ]
        for data in sent:
            a_tr.sendto(data, addr=to)
        await b_pr.wait_for(lambda: len(b_pr.datagrams) == len(sent))
        assert [d for d, _ in b_pr.datagrams] == [bytes(d) for d in sent]
        await close_endpoint(a_tr, a_pr)
        await close_endpoint(b_tr, b_pr)

    run(loop, main())


@pytest.mark.parametrize(
    "case",
    ["port out of range", "non-contiguous data", "address not a tuple"],
)
def test_sendto_errors_of_the_socket_are_fatal(loop, exc_handler_calls, case):
    """What the socket object refuses (not an OSError) is asyncio's fatal write error:
    reported to the exception handler, then the transport closes with that error."""
    expected = {
        "port out of range": OverflowError,
        "non-contiguous data": BufferError,
        "address not a tuple": TypeError,
    }[case]

    async def main():
        tr, pr = await loop.create_datagram_endpoint(DatagramRecorder, local_addr=(HOST, 0))
        data, addr = b"x", (HOST, 9)
        if case == "port out of range":
            addr = (HOST, 70000)
        elif case == "non-contiguous data":
            data = memoryview(b"abcdef")[::2]
        else:
            addr = f"{HOST}:9"
        tr.sendto(data, addr)
        assert tr.is_closing()
        exc = await asyncio.wait_for(pr.lost, 5)
        assert isinstance(exc, expected)
        return pr.events

    assert run(loop, main()) == ["made", "lost"]
    assert [type(c["exception"]) for c in exc_handler_calls] == [expected]
    assert exc_handler_calls[0]["message"] == "Fatal write error on datagram transport"
    exc_handler_calls.clear()


def test_sendto_argument_errors(loop):
    async def main():
        tr, pr = await loop.create_datagram_endpoint(DatagramRecorder, local_addr=(HOST, 0))
        try:
            with pytest.raises(TypeError):
                tr.sendto()
            with pytest.raises(TypeError):
                tr.sendto(b"x", (HOST, 9), None)
            with pytest.raises(TypeError):
                tr.sendto(b"x", address=(HOST, 9))
        finally:
            await close_endpoint(tr, pr)

    run(loop, main())


def test_exception_in_error_received_is_reported(loop, exc_handler_calls):
    class Failing(DatagramRecorder):
        def error_received(self, exc):
            super().error_received(exc)
            raise RuntimeError("boom")

    async def main():
        tr, pr = await loop.create_datagram_endpoint(Failing, remote_addr=(HOST, free_udp_port()))
        tr.sendto(b"anyone?")
        await pr.wait_for(lambda: pr.errors)
        assert not tr.is_closing()  # reported, not fatal
        await close_endpoint(tr, pr)

    run(loop, main())
    assert [type(c["exception"]) for c in exc_handler_calls] == [RuntimeError]
    assert exc_handler_calls[0]["message"].startswith("Exception in callback ")
    exc_handler_calls.clear()


def test_callbacks_ready_before_the_poll_run_before_datagram_received(loop):
    """As asyncio's selector queues the transport's reader behind the callbacks already
    ready, a callback scheduled before the poll that finds a datagram runs first (a task
    may be about to set up what datagram_received needs: CPython's
    test_datagram_send_to_non_listening_address depends on it)."""
    order = []

    class Recorder(DatagramRecorder):
        def datagram_received(self, data, addr):
            order.append("datagram_received")
            super().datagram_received(data, addr)

    async def main():
        tr, pr = await loop.create_datagram_endpoint(Recorder, local_addr=(HOST, 0))
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as peer:
            peer.sendto(b"x", tr.get_extra_info("sockname"))
            loop.call_soon(order.append, "callback")
            await pr.wait_for(lambda: pr.datagrams)
        await close_endpoint(tr, pr)

    run(loop, main())
    assert order == ["callback", "datagram_received"]


def test_pause_reading_in_the_middle_of_a_burst(loop):
    """Datagrams queued in the socket are delivered one by one until the protocol pauses;
    none is read while paused, and the rest follow in order after resume_reading()."""

    class Pausing(DatagramRecorder):
        def datagram_received(self, data, addr):
            super().datagram_received(data, addr)
            if len(self.datagrams) == 3:
                self.transport.pause_reading()

    async def main():
        tr, pr = await loop.create_datagram_endpoint(Pausing, local_addr=(HOST, 0))
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as peer:
            for i in range(10):
                peer.sendto(b"%d" % i, tr.get_extra_info("sockname"))
            await pr.wait_for(lambda: len(pr.datagrams) == 3)
            for _ in range(5):
                await asyncio.sleep(0)
            assert [d for d, _ in pr.datagrams] == [b"0", b"1", b"2"]
            assert not tr.is_reading()
            tr.resume_reading()
            await pr.wait_for(lambda: len(pr.datagrams) == 10)
        assert [d for d, _ in pr.datagrams] == [b"%d" % i for i in range(10)]
        await close_endpoint(tr, pr)

    run(loop, main())


def test_sendto_checks_data_type(loop):
    async def main():
        tr, pr = await loop.create_datagram_endpoint(DatagramRecorder, local_addr=(HOST, 0))
        try:
            for bad, name in (("text", "str"), (None, "NoneType"), (123, "int")):
                with pytest.raises(TypeError) as info:
                    tr.sendto(bad, (HOST, 9))
                assert str(info.value) == (
                    f"data argument must be a bytes-like object, not {name!r}"
                )
        finally:
            await close_endpoint(tr, pr)

    run(loop, main())


def test_connected_endpoint_gets_icmp_errors(loop):
    # A datagram to a closed port: the ICMP "port unreachable" comes back as
    # error_received(ConnectionRefusedError), and the endpoint stays usable.
    async def main():
        tr, pr = await loop.create_datagram_endpoint(
            DatagramRecorder, remote_addr=(HOST, free_udp_port())
        )
        tr.sendto(b"anyone?")
        await pr.wait_for(lambda: pr.errors)
        assert isinstance(pr.errors[0], ConnectionRefusedError)
        assert not tr.is_closing()
        await close_endpoint(tr, pr)
        return pr.events

    assert run(loop, main()) == ["made", "error", "lost"]


@pytest.mark.skipif(not socket.has_ipv6, reason="no IPv6")
def test_ipv6_endpoint(loop):
    async def main():
        try:
            srv_tr, srv_pr = await loop.create_datagram_endpoint(
                EchoDatagram, local_addr=("::1", 0)
            )
        except OSError:
            pytest.skip("::1 is not available")
        srv_addr = srv_tr.get_extra_info("sockname")
        assert srv_tr.get_extra_info("socket").family == socket.AF_INET6
        tr, pr = await loop.create_datagram_endpoint(
            DatagramRecorder, remote_addr=("::1", srv_addr[1])
        )
        tr.sendto(b"v6")
        await pr.wait_for(lambda: pr.datagrams)
        assert pr.datagrams == [(b"v6", srv_addr)]
        # The remote address is kept as resolved: a 4-tuple for IPv6.
        with pytest.raises(ValueError, match="Invalid address"):
            tr.sendto(b"x", ("::1", srv_addr[1]))
        await close_endpoint(tr, pr)
        await close_endpoint(srv_tr, srv_pr)

    run(loop, main())


def test_local_and_remote_addr(loop):
    async def main():
        srv_tr, srv_pr = await loop.create_datagram_endpoint(EchoDatagram, local_addr=(HOST, 0))
        srv_addr = srv_tr.get_extra_info("sockname")
        port = free_udp_port()
        tr, pr = await loop.create_datagram_endpoint(
            DatagramRecorder, local_addr=(HOST, port), remote_addr=("localhost", srv_addr[1])
        )
        assert tr.get_extra_info("sockname") == (HOST, port)
        assert tr.get_extra_info("peername") == srv_addr
        tr.sendto(b"hi")
        await pr.wait_for(lambda: pr.datagrams)
        assert srv_pr.datagrams == [(b"hi", (HOST, port))]
        await close_endpoint(tr, pr)
        await close_endpoint(srv_tr, srv_pr)

    run(loop, main())


def test_family_only_endpoint(loop):
    async def main():
        tr, pr = await loop.create_datagram_endpoint(DatagramRecorder, family=socket.AF_INET)
        assert tr.get_extra_info("sockname") == ("0.0.0.0", 0)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as peer:
            peer.bind((HOST, 0))
            peer.settimeout(5)
            tr.sendto(b"first", peer.getsockname())  # binds an ephemeral port
            assert peer.recvfrom(100)[0] == b"first"
        await close_endpoint(tr, pr)

    run(loop, main())


def test_existing_socket(loop):
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((HOST, 0))

    async def main():
        tr, pr = await loop.create_datagram_endpoint(DatagramRecorder, sock=sock)
        assert sock.gettimeout() == 0  # made non-blocking
        assert tr.get_extra_info("sockname") == sock.getsockname()
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as peer:
            peer.sendto(b"via sock=", sock.getsockname())
            await pr.wait_for(lambda: pr.datagrams)
        await close_endpoint(tr, pr)

    run(loop, main())
    assert sock.fileno() == -1


def test_existing_connected_socket(loop):
    # A connected socket given with sock=: peername is known, sendto(data, addr) sends
    # to the peer with send().
    peer = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    peer.bind((HOST, 0))
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.connect(peer.getsockname())

    async def main():
        tr, pr = await loop.create_datagram_endpoint(DatagramRecorder, sock=sock)
        assert tr.get_extra_info("peername") == peer.getsockname()
        tr.sendto(b"a")
        tr.sendto(b"b", ("127.0.0.2", 9))
        await close_endpoint(tr, pr)

    try:
        run(loop, main())
        peer.settimeout(5)
        assert [peer.recv(10), peer.recv(10)] == [b"a", b"b"]
    finally:
        peer.close()


def test_reuse_port(loop):
    if not hasattr(socket, "SO_REUSEPORT"):
        pytest.skip("no SO_REUSEPORT")

    async def main():
        tr1, pr1 = await loop.create_datagram_endpoint(
            DatagramRecorder, local_addr=(HOST, 0), reuse_port=True
        )
        port = tr1.get_extra_info("sockname")[1]
        tr2, pr2 = await loop.create_datagram_endpoint(
            DatagramRecorder, local_addr=(HOST, port), reuse_port=True
        )
        sock = tr2.get_extra_info("socket")
        assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT) != 0
        await close_endpoint(tr1, pr1)
        await close_endpoint(tr2, pr2)

    run(loop, main())


def test_allow_broadcast(loop):
    # With allow_broadcast the socket is not connected: the remote address is only
    # the default destination.
    async def main():
        srv_tr, srv_pr = await loop.create_datagram_endpoint(DatagramRecorder, local_addr=(HOST, 0))
        srv_addr = srv_tr.get_extra_info("sockname")
        tr, pr = await loop.create_datagram_endpoint(
            DatagramRecorder, remote_addr=srv_addr, allow_broadcast=True
        )
        sock = tr.get_extra_info("socket")
        assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST) != 0
        assert tr.get_extra_info("peername") is None
        tr.sendto(b"to the default")
        await srv_pr.wait_for(lambda: srv_pr.datagrams)
        assert srv_pr.datagrams[0][0] == b"to the default"
        with pytest.raises(ValueError, match="Invalid address"):
            tr.sendto(b"x", (HOST, 9))
        await close_endpoint(tr, pr)
        await close_endpoint(srv_tr, srv_pr)

    run(loop, main())


# ---- Unix datagram sockets ---------------------------------------------------------------


def test_unix_datagram_endpoints(loop):
    with tempfile.TemporaryDirectory() as d:
        srv_path = os.path.join(d, "srv")
        cli_path = os.path.join(d, "cli")
        # A stale socket file at the path is removed before bind().
        stale = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        stale.bind(srv_path)
        stale.close()

        async def main():
            srv_tr, srv_pr = await loop.create_datagram_endpoint(
                EchoDatagram, local_addr=srv_path, family=socket.AF_UNIX
            )
            assert srv_tr.get_extra_info("sockname") == srv_path
            tr, pr = await loop.create_datagram_endpoint(
                DatagramRecorder,
                local_addr=cli_path,
                remote_addr=srv_path,
                family=socket.AF_UNIX,
            )
            assert tr.get_extra_info("peername") == srv_path
            tr.sendto(b"unix datagram")
            await pr.wait_for(lambda: pr.datagrams)
            assert pr.datagrams == [(b"unix datagram", srv_path)]
            assert srv_pr.datagrams == [(b"unix datagram", cli_path)]
            with pytest.raises(ValueError, match="Invalid address"):
                tr.sendto(b"x", os.path.join(d, "other"))
            await close_endpoint(tr, pr)
            await close_endpoint(srv_tr, srv_pr)

        run(loop, main())
        # As asyncio, closing does not unlink the paths.
        assert os.path.exists(srv_path) and os.path.exists(cli_path)


def test_unix_datagram_addresses_must_be_strings(loop):
    for kwargs in (dict(local_addr=(HOST, 0)), dict(remote_addr=b"/tmp/x")):
        with pytest.raises(TypeError) as info:
            run(
                loop,
                loop.create_datagram_endpoint(DatagramRecorder, family=socket.AF_UNIX, **kwargs),
            )
        assert str(info.value) == "string is expected"


def unix_dgram_pair(directory):
    """(sender, receiver): Unix datagram sockets bound to paths, sender connected.

    Named, because an endpoint on an unnamed socket (socketpair()) has a falsy
    peername ('') and so sends with sendto(data, None), which fails.
    """
    receiver = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    receiver.bind(os.path.join(directory, "receiver"))
    receiver.setblocking(False)
    sender = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sender.bind(os.path.join(directory, "sender"))
    sender.connect(receiver.getsockname())
    return sender, receiver


def test_buffering_and_flow_control(loop, loop_name, tmp_path):
    # The receiver does not read: the sender's queue fills, sendto() buffers,
    # pause_writing() comes past the high-water mark; draining the receiver sends the
    # buffer in order, resume_writing() comes, and close() waits for the buffer before
    # connection_lost.
    a, b = unix_dgram_pair(str(tmp_path))

    async def main():
        tr, pr = await loop.create_datagram_endpoint(DatagramRecorder, sock=a)
        tr.set_write_buffer_limits(high=4000, low=1000)
        assert tr.get_write_buffer_limits() == (1000, 4000)
        sent = 0
        while tr.get_write_buffer_size() == 0:
            tr.sendto(b"%08d" % sent + b"." * 992)
            sent += 1
            assert sent < 100000
        for _ in range(10):
            tr.sendto(b"%08d" % sent + b"." * 992)
            sent += 1
        # Whole datagrams queued, each with the header of this Python (see HEADER_SIZE).
        assert tr.get_write_buffer_size() == 11 * (1000 + HEADER_SIZE)
        assert pr.events == ["made", "pause_writing"]
        tr.close()
        assert tr.is_closing()
        await asyncio.sleep(0.01)
        assert not pr.lost.done()  # the queue goes out first
        got = []
        while len(got) < sent:
            try:
                got.append(b.recv(2000))
            except BlockingIOError:
                await asyncio.sleep(0.001)
        assert await asyncio.wait_for(pr.lost, 5) is None
        assert [int(d[:8]) for d in got] == list(range(sent))
        if loop_name == "asyncio" and ASYNCIO_KEEPS_SENT_HEADERS:
            assert tr.get_write_buffer_size() == 11 * HEADER_SIZE  # gh-135444
        else:
            assert tr.get_write_buffer_size() == 0
        return pr.events

    try:
        assert run(loop, main()) == ["made", "pause_writing", "resume_writing", "lost"]
    finally:
        b.close()
        a.close()


def test_empty_datagrams(loop):
    """sendto(b"") (any empty bytes-like object) sends an empty datagram from Python
    3.13, on unconnected and connected endpoints alike; before, it is dropped
    (SENDS_EMPTY_DATAGRAMS). Receiving one is datagram_received(b"", addr) everywhere."""

    async def main():
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as peer:
            peer.bind((HOST, 0))
            peer.settimeout(5)
            peer_addr = peer.getsockname()
            tr, pr = await loop.create_datagram_endpoint(DatagramRecorder, local_addr=(HOST, 0))
            ctr, cpr = await loop.create_datagram_endpoint(DatagramRecorder, remote_addr=peer_addr)
            addr, caddr = tr.get_extra_info("sockname"), ctr.get_extra_info("sockname")
            tr.sendto(b"", peer_addr)
            tr.sendto(memoryview(b""), peer_addr)
            ctr.sendto(bytearray())
            tr.sendto(b"end", peer_addr)
            ctr.sendto(b"end")
            got = {addr: [], caddr: []}
            while got[addr][-1:] != [b"end"] or got[caddr][-1:] != [b"end"]:
                data, src = peer.recvfrom(100)
                got[src].append(data)
            empty = [b""] if SENDS_EMPTY_DATAGRAMS else []
            assert got == {addr: empty * 2 + [b"end"], caddr: empty + [b"end"]}
            assert tr.get_write_buffer_size() == ctr.get_write_buffer_size() == 0

            peer.sendto(b"", addr)
            peer.sendto(b"", caddr)
            await pr.wait_for(lambda: pr.datagrams)
            await cpr.wait_for(lambda: cpr.datagrams)
            assert pr.datagrams == [(b"", peer_addr)]
            assert cpr.datagrams == [(b"", peer_addr)]
            assert pr.events == cpr.events == ["made", "datagram"]
            await close_endpoint(tr, pr)
            await close_endpoint(ctr, cpr)

    run(loop, main())


def test_empty_datagram_without_address(loop, exc_handler_calls):
    """From 3.13 an empty datagram goes to the socket like any other: without an
    address on an unconnected endpoint, sendto() fails on it (a TypeError: a fatal
    error that closes the endpoint, as for non-empty data). Before 3.13 it is dropped
    first and nothing happens."""

    async def main():
        tr, pr = await loop.create_datagram_endpoint(DatagramRecorder, local_addr=(HOST, 0))
        tr.sendto(b"")
        if not SENDS_EMPTY_DATAGRAMS:
            await asyncio.sleep(0.01)
            assert not tr.is_closing()
            assert await close_endpoint(tr, pr) is None
            return pr.events
        assert tr.is_closing()
        assert isinstance(await asyncio.wait_for(pr.lost, 5), TypeError)
        return pr.events

    assert run(loop, main()) == ["made", "lost"]
    if SENDS_EMPTY_DATAGRAMS:
        (context,) = exc_handler_calls
        assert context["message"] == "Fatal write error on datagram transport"
        assert isinstance(context["exception"], TypeError)
        assert isinstance(context["protocol"], DatagramRecorder)
        exc_handler_calls.clear()
    assert exc_handler_calls == []


def test_queued_empty_datagrams_count_a_header(loop, loop_name, tmp_path):
    """From 3.13 every queued datagram counts HEADER_SIZE bytes besides its data in
    get_write_buffer_size(), so queued empty datagrams reach the high-water mark too;
    the headers go with the datagrams when they are sent."""
    a, b = unix_dgram_pair(str(tmp_path))

    async def main():
        tr, pr = await loop.create_datagram_endpoint(DatagramRecorder, sock=a)
        tr.set_write_buffer_limits(high=1000 + 2 * HEADER_SIZE)
        sent = 0
        while tr.get_write_buffer_size() == 0:
            tr.sendto(b"." * 1000)
            sent += 1
            assert sent < 100000
        assert tr.get_write_buffer_size() == 1000 + HEADER_SIZE
        assert pr.events == ["made"]
        for _ in range(3):
            tr.sendto(b"")
        queued = 4 if SENDS_EMPTY_DATAGRAMS else 1
        assert tr.get_write_buffer_size() == 1000 + queued * HEADER_SIZE
        # Past high = 1000 + 2 headers only when the empty datagrams count.
        assert pr.events == (["made", "pause_writing"] if HEADER_SIZE else ["made"])
        got = []
        while len(got) < sent + queued - 1:
            try:
                got.append(b.recv(2000))
            except BlockingIOError:
                await asyncio.sleep(0.001)
        assert got == [b"." * 1000] * sent + [b""] * (queued - 1)
        await asyncio.sleep(0.01)
        with pytest.raises(BlockingIOError):
            b.recv(2000)  # nothing more was sent
        if loop_name == "asyncio" and ASYNCIO_KEEPS_SENT_HEADERS:
            assert tr.get_write_buffer_size() == queued * HEADER_SIZE  # gh-135444
        else:
            assert tr.get_write_buffer_size() == 0
        await close_endpoint(tr, pr)
        return pr.events

    try:
        expected = ["made", "pause_writing", "resume_writing"] if HEADER_SIZE else ["made"]
        assert run(loop, main()) == expected + ["lost"]
    finally:
        b.close()
        a.close()


def test_socket_of_another_non_stream_type(loop):
    """create_datagram_endpoint(sock=) takes any socket that is not SOCK_STREAM from
    3.13 (e.g. SOCK_SEQPACKET or SOCK_RAW, gh-114887); before, only SOCK_DGRAM."""
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)

    async def main():
        if not TAKES_ANY_NON_STREAM_SOCKET:
            with pytest.raises(ValueError) as info:
                await loop.create_datagram_endpoint(DatagramRecorder, sock=a)
            assert str(info.value) == f"{NOT_A_DATAGRAM_SOCKET}, got {a!r}"
            return
        tr, pr = await loop.create_datagram_endpoint(DatagramRecorder, sock=a)
        assert tr.get_extra_info("socket").type == socket.SOCK_SEQPACKET
        b.send(b"one record")
        b.send(b"another")
        await pr.wait_for(lambda: len(pr.datagrams) == 2)
        assert [data for data, _ in pr.datagrams] == [b"one record", b"another"]
        await close_endpoint(tr, pr)
        assert a.fileno() == -1

    try:
        run(loop, main())
    finally:
        a.close()
        b.close()


def test_socket_of_an_open_endpoint_is_taken(loop):
    """While an endpoint is open its transport owns the socket: watching its fd with
    add_reader & co. raises RuntimeError, and from 3.12 (CHECKS_SOCKET_OWNER) so does
    making a second endpoint on it; the endpoint goes on working."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((HOST, 0))

    async def main():
        tr, pr = await loop.create_datagram_endpoint(DatagramRecorder, sock=sock)
        try:
            for method, args in (
                (loop.add_reader, (print,)),
                (loop.add_writer, (print,)),
                (loop.remove_reader, ()),
                (loop.remove_writer, ()),
            ):
                for fd in (sock, sock.fileno()):
                    with pytest.raises(RuntimeError) as info:
                        method(fd, *args)
                    assert str(info.value) == f"File descriptor {fd!r} is used by transport {tr!r}"
            if CHECKS_SOCKET_OWNER:
                with pytest.raises(RuntimeError, match="is used by transport"):
                    await loop.create_datagram_endpoint(DatagramRecorder, sock=sock)
                assert sock.fileno() != -1
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as peer:
                peer.sendto(b"still open", sock.getsockname())
                await pr.wait_for(lambda: pr.datagrams)
            assert pr.datagrams[0][0] == b"still open"
        finally:
            await close_endpoint(tr, pr)
        return pr.events

    try:
        assert run(loop, main()) == ["made", "datagram", "lost"]
    finally:
        sock.close()


def test_abort_drops_the_buffer(loop, tmp_path):
    a, b = unix_dgram_pair(str(tmp_path))

    async def main():
        tr, pr = await loop.create_datagram_endpoint(DatagramRecorder, sock=a)
        while tr.get_write_buffer_size() == 0:
            tr.sendto(b"." * 1000)
        tr.abort()
        assert tr.is_closing()
        assert await asyncio.wait_for(pr.lost, 5) is None
        return pr.events

    try:
        assert run(loop, main()) == ["made", "lost"]
    finally:
        b.close()
        a.close()


def test_pause_and_resume_reading(loop):
    async def main():
        tr, pr = await loop.create_datagram_endpoint(DatagramRecorder, local_addr=(HOST, 0))
        addr = tr.get_extra_info("sockname")
        assert tr.is_reading()
        tr.pause_reading()
        assert not tr.is_reading()
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as peer:
            peer.sendto(b"held", addr)
            await asyncio.sleep(0.02)
            assert pr.datagrams == []
            tr.resume_reading()
            assert tr.is_reading()
            await pr.wait_for(lambda: pr.datagrams)
            assert pr.datagrams[0][0] == b"held"
        await close_endpoint(tr, pr)
        assert not tr.is_reading()

    run(loop, main())


def test_close_is_idempotent_and_connection_lost_once(loop):
    async def main():
        tr, pr = await loop.create_datagram_endpoint(DatagramRecorder, local_addr=(HOST, 0))
        tr.close()
        tr.close()
        tr.abort()
        await asyncio.wait_for(pr.lost, 5)
        await asyncio.sleep(0.01)
        return pr.events

    assert run(loop, main()) == ["made", "lost"]


def test_close_before_connection_made(loop):
    # Closed in the protocol factory's wake, before its callbacks ran: still made, then
    # lost, and no reading in between.
    async def main():
        made = []

        def factory():
            pr = DatagramRecorder()
            made.append(pr)
            return pr

        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.bind((HOST, 0))
        task = asyncio.ensure_future(loop.create_datagram_endpoint(factory, sock=sock))
        await asyncio.sleep(0)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        (pr,) = made
        assert await asyncio.wait_for(pr.lost, 5) is None
        return pr.events

    assert run(loop, main()) == ["made", "lost"]


def test_exception_in_datagram_received(loop, exc_handler_calls):
    class Failing(DatagramRecorder):
        def datagram_received(self, data, addr):
            super().datagram_received(data, addr)
            if data == b"boom":
                raise RuntimeError("boom")

    async def main():
        tr, pr = await loop.create_datagram_endpoint(Failing, local_addr=(HOST, 0))
        addr = tr.get_extra_info("sockname")
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as peer:
            peer.sendto(b"boom", addr)
            peer.sendto(b"after", addr)
            await pr.wait_for(lambda: len(pr.datagrams) == 2)
        await close_endpoint(tr, pr)

    run(loop, main())
    assert len(exc_handler_calls) == 1
    assert isinstance(exc_handler_calls[0]["exception"], RuntimeError)
    assert exc_handler_calls[0]["message"].startswith("Exception in callback ")
    exc_handler_calls.clear()


# ---- argument checks ---------------------------------------------------------------------


def test_argument_errors(loop):
    tcp = socket.socket()
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)

    async def main():
        with pytest.raises(ValueError) as info:
            await loop.create_datagram_endpoint(DatagramRecorder, sock=tcp)
        assert str(info.value) == f"{NOT_A_DATAGRAM_SOCKET}, got {tcp!r}"
        with pytest.raises(ValueError) as info:
            await loop.create_datagram_endpoint(
                DatagramRecorder, sock=udp, local_addr=(HOST, 0), reuse_port=True
            )
        assert str(info.value) == (
            "socket modifier keyword arguments can not be used when sock is specified. "
            f"(local_addr={(HOST, 0)}, reuse_port=True)"
        )
        with pytest.raises(ValueError) as info:
            await loop.create_datagram_endpoint(DatagramRecorder)
        assert str(info.value) == "unexpected address family"
        for bad in ((HOST,), [HOST, 0], "127.0.0.1:0", (HOST, 0, 0)):
            with pytest.raises(TypeError) as info:
                await loop.create_datagram_endpoint(DatagramRecorder, local_addr=bad)
            assert str(info.value) == "2-tuple is expected"
        with pytest.raises(TypeError, match="reuse_address"):
            await loop.create_datagram_endpoint(
                DatagramRecorder, local_addr=(HOST, 0), reuse_address=True
            )
        with pytest.raises(socket.gaierror):
            await loop.create_datagram_endpoint(
                DatagramRecorder, remote_addr=("nonexistent.invalid", 53)
            )
        with pytest.raises(ValueError) as info:
            await loop.create_datagram_endpoint(
                DatagramRecorder, local_addr=("127.0.0.1", 0), remote_addr=("::1", 53)
            )
        assert str(info.value) == "can not get address information"

    try:
        run(loop, main())
    finally:
        tcp.close()
        udp.close()


def test_bind_error(loop):
    async def main():
        tr, pr = await loop.create_datagram_endpoint(DatagramRecorder, local_addr=(HOST, 0))
        try:
            with pytest.raises(OSError) as info:
                await loop.create_datagram_endpoint(
                    DatagramRecorder, local_addr=tr.get_extra_info("sockname")
                )
            assert isinstance(info.value, OSError)
            assert info.value.errno == errno.EADDRINUSE
        finally:
            await close_endpoint(tr, pr)

    run(loop, main())


UNOPENED_NATIVE_CHILD = """
import json
from fastloop import _core
lp = new_loop()
out = {}
calls = {
    "sendto": lambda d: d.sendto(b"x", ("127.0.0.1", 9)),
    "sendto_none": lambda d: d.sendto(b"x"),
    "close": lambda d: d.close(),
    "abort": lambda d: d.abort(),
    "force_close": lambda d: d._force_close(None),
}
for name, call in calls.items():
    try:
        call(_core.DatagramTransport(lp))
        out[name] = "ok"
    except Exception as exc:
        out[name] = [type(exc).__name__, str(exc)]
lp.close()
print(json.dumps(out))
"""


def test_native_datagram_transport_used_before_it_is_open():
    """fastloop's private native half, made by hand and used before _open(): each call
    raises RuntimeError. sendto() crashed the process (SIGSEGV) and close()/abort() raised
    pybind11's internal error. fastloop-only: asyncio has no such object."""
    out = run_child("fastloop", UNOPENED_NATIVE_CHILD, timeout=30)
    assert out.returncode == 0, out.stderr
    result = json.loads(child_stdout(out))
    message = "the datagram transport is not open"
    assert result == {name: ["RuntimeError", message] for name in result}
    assert len(result) == 5
