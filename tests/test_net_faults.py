"""Networking under faults: fd exhaustion at accept, peers that vanish, connection churn,
bad arguments, and writes to a transport whose peer is gone.

asyncio's loop is the reference; where the two loops legitimately differ (accepting at
EMFILE) the test says so and asserts each loop's documented behaviour separately.

fd counts come from /proc/self/fd and are taken once the server listens: fastloop's
first libuv stream opens a reserve fd (libuv's EMFILE trick, see below) that lives as
long as the loop, so a count taken before the first server would differ by one.
"""

import asyncio
import errno
import json
import logging
import os
import selectors
import socket
import struct
import subprocess
import sys
import time

import pytest

from .netutil import (
    HOST,
    NOT_A_DATAGRAM_SOCKET,
    EchoServerProtocol,
    ProtocolServer,
    Recorder,
    close_transport,
    pattern,
    raw_peer,
    recv_exactly,
    run,
    spin,
    wait_for_cond,
)

pytestmark = pytest.mark.timeout(30)

# What one large server write sends: far more than the loopback socket buffers hold, so
# the transport is still writing (with a buffer) when the peer goes away.
BIG = 16 * 1024 * 1024


def fd_count():
    """How many fds this process has open (the listing's own fd counts every time)."""
    return len(os.listdir("/proc/self/fd"))


def reset(sock):
    """Close ``sock`` with SO_LINGER 0: the kernel sends RST instead of FIN."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


# -- 1. EMFILE at accept -------------------------------------------------------------------

# The child runs a server on the named loop, then lowers RLIMIT_NOFILE so that exactly
# ``slots`` more fds can be opened. Each accepted connection costs one fd (on both
# loops). The parent drives it over stdin with one command a line and reads one JSON
# object a line from its stdout:
#   state    -> {"live": [ids of open server connections, in accept order],
#                "handler": [[message, errno] for each exception-handler call]}
#   free N   -> close the N oldest server connections (no reply)
#   quit     -> stop the loop, close everything, exit 0
# A client announces its id with a first line "<id>\n"; the server answers "hello <id>\n".
EMFILE_CHILD = r"""
import asyncio, json, os, resource, sys

name, slots = sys.argv[1], int(sys.argv[2])
if name == "fastloop":
    import fastloop
    loop = fastloop.new_event_loop()
else:
    loop = asyncio.new_event_loop()
asyncio.set_event_loop(loop)

handler_calls = []
def handler(lp, context):
    handler_calls.append([context["message"], getattr(context.get("exception"), "errno", None)])
loop.set_exception_handler(handler)

live = []
class Server(asyncio.Protocol):
    def connection_made(self, transport):
        self.transport = transport
        self.ident = None
        self.buf = b""
        live.append(self)
    def data_received(self, data):
        self.buf += data
        if self.ident is None and b"\n" in self.buf:
            self.ident = int(self.buf.split(b"\n")[0])
            self.transport.write(b"hello %d\n" % self.ident)
    def connection_lost(self, exc):
        live.remove(self)

def send(obj):
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()

pending = b""
def on_stdin():
    global pending
    chunk = os.read(0, 4096)
    if not chunk:
        loop.stop()
        return
    pending += chunk
    while b"\n" in pending:
        line, pending = pending.split(b"\n", 1)
        cmd, *args = line.decode().split()
        if cmd == "state":
            send({"live": [p.ident for p in live], "handler": handler_calls})
        elif cmd == "free":
            for p in live[: int(args[0])]:
                p.transport.close()
        elif cmd == "quit":
            loop.stop()

server = loop.run_until_complete(loop.create_server(Server, "127.0.0.1", 0, backlog=100))
loop.add_reader(0, on_stdin)

def is_open(fd):
    try:
        os.fstat(fd)
    except OSError:
        return False
    return True

soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
open_fds = [fd for fd in range(min(soft, 65536)) if is_open(fd)]
limit = 0
while limit - sum(fd < limit for fd in open_fds) < slots:
    limit += 1
resource.setrlimit(resource.RLIMIT_NOFILE, (limit, hard))
send({"port": server.sockets[0].getsockname()[1]})
loop.run_forever()
loop.remove_reader(0)
server.close()
for p in list(live):
    p.transport.abort()
loop.run_until_complete(server.wait_closed())
loop.close()
"""


class EmfileChild:
    """The child process above, with a line-based request/reply channel."""

    def __init__(self, loop_name, slots):
        self.proc = subprocess.Popen(
            [sys.executable, "-c", EMFILE_CHILD, loop_name, str(slots)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        self._buf = b""
        self.port = self._reply()["port"]

    def _reply(self, timeout=10.0):
        fd = self.proc.stdout.fileno()
        deadline = time.monotonic() + timeout
        with selectors.DefaultSelector() as sel:
            sel.register(fd, selectors.EVENT_READ)
            while b"\n" not in self._buf:
                left = deadline - time.monotonic()
                if left <= 0 or not sel.select(left):
                    raise AssertionError("no reply from the child in time")
                chunk = os.read(fd, 65536)
                if not chunk:
                    raise AssertionError(f"the child exited: {self.proc.stderr.read()!r}")
                self._buf += chunk
        line, self._buf = self._buf.split(b"\n", 1)
        return json.loads(line)

    def command(self, line):
        self.proc.stdin.write(line.encode() + b"\n")
        self.proc.stdin.flush()

    def state(self):
        self.command("state")
        return self._reply()

    def wait_state(self, predicate, timeout=5.0):
        deadline = time.monotonic() + timeout
        while True:
            st = self.state()
            if predicate(st):
                return st
            if time.monotonic() > deadline:
                raise AssertionError(f"child state not reached in time: {st}")
            time.sleep(0.02)

    def cpu_time(self):
        """User + system CPU seconds of the child, from /proc (10 ms resolution)."""
        with open(f"/proc/{self.proc.pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        # fields[0] is field 3 (state); utime and stime are fields 14 and 15.
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def finish(self):
        """Ask the child to quit; return (returncode, stderr)."""
        if self.proc.poll() is None:
            try:
                self.command("quit")
            except BrokenPipeError:
                pass
        try:
            _, err = self.proc.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            _, err = self.proc.communicate()
        return self.proc.returncode, err.decode(errors="replace")


def served(sock, ident):
    """Blocking: the server's greeting for ``ident`` arrives on ``sock``."""
    expected = b"hello %d\n" % ident
    return recv_exactly(sock, len(expected)) == expected


def dropped_by_server(sock):
    """Blocking: the server closed ``sock`` (EOF, or a reset as our id line was unread)."""
    try:
        return sock.recv(1) == b""
    except ConnectionResetError:
        return True


def still_pending(sock):
    """Nothing arrived on ``sock`` and it was not closed (still in the server's backlog)."""
    sock.setblocking(False)
    try:
        sock.recv(1)
    except BlockingIOError:
        return True
    finally:
        sock.settimeout(5)
    return False


@pytest.mark.timeout(30)
def test_emfile_at_accept_does_not_spin(loop_name):
    # How the loops differ once accept() fails with EMFILE (both documented):
    # - asyncio (selector_events._accept_connection) calls the exception handler with
    #   "socket.accept() out of system resource", stops watching the listening socket and
    #   retries after constants.ACCEPT_RETRY_DELAY (1 s). The excess connections wait in
    #   the kernel backlog and are accepted, oldest first, once fds are free again.
    # - fastloop (libuv's uv__emfile_trick, README "Known differences") closes a reserve
    #   fd, accepts every pending connection and closes it at once, reopens the reserve
    #   and reports nothing: the excess connections are dropped (the client sees EOF or a
    #   reset), no exception-handler call, and later connections are accepted normally
    #   once fds are free.
    # Both guarantee: the loop does not spin while connections are pending, and it
    # accepts again once fds are freed.
    slots = 4
    child = EmfileChild(loop_name, slots)
    clients = {}

    def connect(ident):
        s = socket.create_connection((HOST, child.port), timeout=5)
        s.sendall(b"%d\n" % ident)
        clients[ident] = s

    try:
        for i in range(slots):
            connect(i)
        child.wait_state(lambda st: st["live"] == list(range(slots)))
        assert all(served(clients[i], i) for i in range(slots))

        # The server is out of fds: every further connection is pending at accept().
        excess = [slots, slots + 1, slots + 2]
        for i in excess:
            connect(i)
        time.sleep(0.2)

        # ~1 s with connections arriving every 0.1 s: a loop that spins on the
        # ready-but-failing listening socket would burn ~1 s of CPU here.
        cpu_before = child.cpu_time()
        start = time.monotonic()
        while time.monotonic() - start < 1.0:
            connect(100 + len(clients))
            time.sleep(0.1)
        cpu = child.cpu_time() - cpu_before
        wall = time.monotonic() - start
        assert cpu < 0.25 * wall, f"child used {cpu:.2f} s CPU in {wall:.2f} s"
        late = [i for i in clients if i >= 100]

        st = child.state()
        assert st["live"] == list(range(slots))  # nothing more was accepted
        if loop_name == "asyncio":
            assert st["handler"], "asyncio reports EMFILE through the exception handler"
            assert all(
                call == ["socket.accept() out of system resource", errno.EMFILE]
                for call in st["handler"]
            ), st["handler"]
            assert all(still_pending(clients[i]) for i in excess + late)
        else:
            assert st["handler"] == []
            assert all(dropped_by_server(clients[i]) for i in excess + late)

        # Free two fds: the server closes its two oldest connections.
        child.command("free 2")
        for i in (0, 1):
            assert dropped_by_server(clients[i])
            clients.pop(i).close()
        for i in (200, 201):
            connect(i)
        # asyncio resumes accepting within ACCEPT_RETRY_DELAY (1 s).
        st = child.wait_state(
            lambda st: len(st["live"]) == slots and None not in st["live"], timeout=5
        )
        if loop_name == "asyncio":
            # The two oldest connections of the backlog (then EMFILE again).
            newly = excess[:2]
        else:
            # The excess ones were dropped; the new connections are accepted.
            newly = [200, 201]
        assert st["live"] == [2, 3, *newly]
        assert all(served(clients[i], i) for i in newly)
    finally:
        for s in clients.values():
            s.close()
        returncode, stderr = child.finish()
    assert returncode == 0, stderr
    assert "Traceback" not in stderr, stderr


# -- 2. the peer vanishes in the middle of a large write ------------------------------------


class BigWriter(Recorder):
    """Starts one large write as soon as the connection is made."""

    def connection_made(self, transport):
        super().connection_made(transport)
        transport.write(pattern(BIG))


@pytest.mark.parametrize("read_first", [0, 256 * 1024], ids=["unread", "partly_read"])
def test_peer_reset_during_large_server_write(loop, read_first):
    async def main():
        async with ProtocolServer(BigWriter) as srv:
            await srv.start_tcp()
            before = fd_count()
            peer = socket.create_connection(srv.addr)
            peer.settimeout(10)
            (sp,) = await srv.accepted()
            if read_first:
                await loop.run_in_executor(None, recv_exactly, peer, read_first)
            else:
                await asyncio.sleep(0.02)
            # Still writing: most of the data is in the transport's buffer.
            assert sp.transport.get_write_buffer_size() > 0
            reset(peer)
            exc = await asyncio.wait_for(sp.lost, 5)
            await asyncio.sleep(0.05)
            return (
                exc,
                sp.lost_calls,
                sp.events,
                sp.transport.get_write_buffer_size(),
                sp.transport.is_closing(),
                before,
                fd_count(),
            )

    exc, calls, events, buffered, closing, before, after = run(loop, main())
    # asyncio: the read side sees ECONNRESET first (the reader callback runs before the
    # writer's); _fatal_error treats it as a connection error: connection_lost(exc), no
    # exception-handler call (the fixture checks), buffer dropped, no resume_writing.
    assert isinstance(exc, ConnectionResetError)
    assert calls == [exc]
    assert events == ["made", "pause_writing", "lost"]
    assert buffered == 0
    assert closing
    assert after == before


def test_peer_reset_during_stream_drain(loop):
    outcome = []

    async def handler(reader, writer):
        try:
            writer.write(pattern(BIG))
            await writer.drain()
        except Exception as exc:
            outcome.append(("drain", exc))
        writer.close()
        try:
            await writer.wait_closed()
        except Exception as exc:
            outcome.append(("wait_closed", exc))
        outcome.append(("done", None))

    async def main():
        server = await asyncio.start_server(handler, HOST, 0)
        try:
            before = fd_count()
            peer = socket.create_connection(server.sockets[0].getsockname())
            peer.settimeout(10)
            await loop.run_in_executor(None, recv_exactly, peer, 256 * 1024)
            reset(peer)
            await wait_for_cond(lambda: outcome and outcome[-1][0] == "done")
            await spin()
            return before, fd_count()
        finally:
            server.close()
            await server.wait_closed()

    before, after = run(loop, main())
    # asyncio 3.11: drain() raises the transport's error, and wait_closed() raises it again
    # (StreamReaderProtocol sets it on its closed future).
    assert [step for step, _ in outcome] == ["drain", "wait_closed", "done"]
    assert isinstance(outcome[0][1], ConnectionResetError)
    assert outcome[1][1] is outcome[0][1]
    assert after == before


# -- 3. connection churn -------------------------------------------------------------------


def test_many_connections_opened_and_dropped(loop):
    batches, raw_per_batch, loop_per_batch = 10, 25, 25  # 500 connect+close cycles

    async def loop_cycle(addr, i):
        tr, pr = await loop.create_connection(Recorder, *addr)
        mode = i % 4
        if mode == 0:
            tr.close()
        elif mode == 1:
            tr.abort()
        elif mode == 2:
            tr.write(b"x" * 100)
            tr.close()
        else:
            tr.write(b"ping")
            await pr.wait_bytes(4)
            tr.close()
        return await asyncio.wait_for(pr.lost, 5)

    async def main():
        async with ProtocolServer(EchoServerProtocol, backlog=1024) as srv:
            await srv.start_tcp()
            addr = srv.addr
            before = fd_count()
            client_results = []
            for _ in range(batches):
                # Connected (the kernel completes the handshake) and closed before the
                # loop runs again, so before the server accepted them.
                for i in range(raw_per_batch):
                    s = socket.create_connection(addr)
                    if i % 3 == 0:
                        s.close()
                    elif i % 3 == 1:
                        s.sendall(b"data then FIN")
                        s.close()
                    else:
                        reset(s)
                client_results += await asyncio.gather(
                    *(loop_cycle(addr, i) for i in range(loop_per_batch))
                )
            await wait_for_cond(lambda: all(p.lost.done() for p in srv.protocols))
            await spin()
            accepted = len(srv.protocols)
            server_losses = [p.lost_calls for p in srv.protocols]
            # Still healthy: a new connection is served.
            tr, pr = await loop.create_connection(Recorder, *addr)
            tr.write(b"still alive")
            assert await pr.wait_bytes(11) == b"still alive"
            assert await close_transport(tr, pr) is None
            await wait_for_cond(lambda: all(p.lost.done() for p in srv.protocols))
            await spin()
            return client_results, accepted, server_losses, before, fd_count()

    client_results, accepted, server_losses, before, after = run(loop, main(), timeout=25)
    assert client_results == [None] * (batches * loop_per_batch)
    # Linux hands out connections closed or reset while in the accept queue as well.
    assert accepted == batches * (raw_per_batch + loop_per_batch)
    assert all(len(calls) == 1 for calls in server_losses)
    assert all(c is None or isinstance(c, ConnectionError) for (c,) in server_losses)
    assert after == before


# -- 4. bad input to the networking API -----------------------------------------------------


def _coro_cases(loop):
    P = asyncio.Protocol
    return {
        "no_host_no_sock": (lambda: loop.create_connection(P), ValueError),
        "port_out_of_range": (lambda: loop.create_connection(P, HOST, 70000), OverflowError),
        "negative_port": (lambda: loop.create_connection(P, HOST, -1), OverflowError),
        "server_port_out_of_range": (
            lambda: loop.create_server(P, HOST, 70000),
            OverflowError,
        ),
        "handshake_timeout_without_ssl": (
            lambda: loop.create_connection(P, HOST, 1, ssl_handshake_timeout=1),
            ValueError,
        ),
        "server_hostname_without_ssl": (
            lambda: loop.create_connection(P, HOST, 1, server_hostname="x"),
            ValueError,
        ),
        "server_handshake_timeout_without_ssl": (
            lambda: loop.create_server(P, HOST, 0, ssl_handshake_timeout=1),
            ValueError,
        ),
        "server_shutdown_timeout_without_ssl": (
            lambda: loop.create_server(P, HOST, 0, ssl_shutdown_timeout=1),
            ValueError,
        ),
        "unix_server_missing_dir": (
            lambda: loop.create_unix_server(P, "/nonexistent-fastloop-dir/sock"),
            FileNotFoundError,
        ),
        "unix_connection_missing_dir": (
            lambda: loop.create_unix_connection(P, "/nonexistent-fastloop-dir/sock"),
            FileNotFoundError,
        ),
        # No address: asyncio makes socket.socket(family=12345) -> EAFNOSUPPORT.
        "datagram_unknown_family": (
            lambda: loop.create_datagram_endpoint(P, family=12345),
            OSError,
        ),
        "datagram_no_family_no_address": (
            lambda: loop.create_datagram_endpoint(P),
            ValueError,
        ),
        "datagram_unknown_family_with_address": (
            lambda: loop.create_datagram_endpoint(P, local_addr=(HOST, 0), family=12345),
            socket.gaierror,
        ),
        "datagram_unix_family_with_tuple": (
            lambda: loop.create_datagram_endpoint(P, local_addr=(HOST, 0), family=socket.AF_UNIX),
            TypeError,
        ),
        "datagram_inet6_with_ipv4_address": (
            lambda: loop.create_datagram_endpoint(P, local_addr=(HOST, 0), family=socket.AF_INET6),
            socket.gaierror,
        ),
    }


BAD_CALLS = list(_coro_cases(None))


@pytest.mark.parametrize("case", BAD_CALLS)
def test_bad_networking_arguments(loop, case):
    make, expected = _coro_cases(loop)[case]

    async def main():
        with pytest.raises(expected) as info:
            await make()
        return info.value

    exc = run(loop, main())
    assert type(exc) is expected
    if case == "datagram_unknown_family":
        assert exc.errno == errno.EAFNOSUPPORT


def test_create_connection_host_and_sock(loop):
    async def main():
        with socket.socket() as s:
            with pytest.raises(ValueError, match="can not be specified at the same time"):
                await loop.create_connection(asyncio.Protocol, HOST, 1, sock=s)
            assert s.fileno() != -1  # the caller's socket is left alone

    run(loop, main())


def test_create_datagram_endpoint_with_stream_socket(loop):
    async def main():
        with socket.socket() as s:
            with pytest.raises(ValueError, match=NOT_A_DATAGRAM_SOCKET):
                await loop.create_datagram_endpoint(asyncio.Protocol, sock=s)

    run(loop, main())


def test_bad_transport_calls(loop):
    async def main():
        async with raw_peer(Recorder) as (tr, pr, peer):
            with pytest.raises(TypeError):
                tr.write("str")
            with pytest.raises(ValueError) as info:
                tr.set_write_buffer_limits(high=1, low=2)
            assert str(info.value) == "high (1) must be >= low (2) must be >= 0"
            with pytest.raises(ValueError):
                tr.set_write_buffer_limits(high=-1)
            tr.write(b"ok")
            tr.write_eof()
            with pytest.raises(RuntimeError, match="Cannot call write\\(\\) after write_eof\\(\\)"):
                tr.write(b"more")
            assert await loop.run_in_executor(None, recv_exactly, peer, 2) == b"ok"
            assert not tr.is_closing()

    run(loop, main())


def test_sock_calls_on_a_blocking_socket(loop):
    async def main():
        a, b = socket.socketpair()
        with a, b:
            b.send(b"x")
            # asyncio checks the socket only in debug mode ...
            loop.set_debug(True)
            with pytest.raises(ValueError, match="the socket must be non-blocking"):
                await loop.sock_recv(a, 10)
            with pytest.raises(ValueError, match="the socket must be non-blocking"):
                await loop.sock_sendall(a, b"y")
            loop.set_debug(False)
            # ... otherwise it calls recv() at once, which returns as data is ready.
            assert await loop.sock_recv(a, 10) == b"x"

    run(loop, main())


# -- 5. writes after the peer closed ---------------------------------------------------------

SEND_RAISED = "socket.send() raised exception."


@pytest.mark.parametrize("how", ["peer_close", "peer_reset", "local_close", "local_abort"])
def test_writes_after_connection_lost(loop, caplog, how):
    async def main():
        async with raw_peer(Recorder) as (tr, pr, peer):
            if how == "peer_close":
                peer.close()  # EOF: eof_received returns None, the transport closes
            elif how == "peer_reset":
                reset(peer)
            elif how == "local_close":
                tr.close()
            else:
                tr.abort()
            exc = await asyncio.wait_for(pr.lost, 5)
            logged = []
            with caplog.at_level(logging.WARNING, logger="asyncio"):
                for _ in range(8):
                    tr.write(b"into the void")  # never raises
                    logged.append(sum(r.getMessage() == SEND_RAISED for r in caplog.records))
            await spin()
            return exc, pr.lost_calls, logged

    exc, calls, logged = run(loop, main())
    assert calls == [exc]
    if how == "peer_reset":
        assert isinstance(exc, ConnectionResetError)
    else:
        assert exc is None
    # asyncio counts a lost connection as 1 and each later write adds 1; from 5
    # (constants.LOG_THRESHOLD_FOR_CONNLOST_WRITES) on, a write logs a warning: the 5th
    # write after connection_lost is the first to log.
    assert logged == [0, 0, 0, 0, 1, 2, 3, 4]


def test_writes_after_close_before_connection_lost(loop, caplog):
    async def main():
        async with raw_peer(Recorder) as (tr, pr, peer):
            tr.close()
            logged = []
            with caplog.at_level(logging.WARNING, logger="asyncio"):
                for _ in range(6):
                    tr.write(b"x")  # connection_lost has not run yet
                    logged.append(sum(r.getMessage() == SEND_RAISED for r in caplog.records))
                assert pr.lost_calls == []
            assert await asyncio.wait_for(pr.lost, 5) is None
            return logged

    assert run(loop, main()) == [0, 0, 0, 0, 1, 2]
