"""Helpers for the networking tests (TCP, Unix sockets, servers, streams, TLS, HTTP).

Everything here works the same on both loops: it only uses the public asyncio API
through ``asyncio.get_running_loop()`` and plain blocking sockets for raw peers.
What may crash the process runs in a child interpreter (``run_child``).
"""

import asyncio
import contextlib
import contextvars
import hashlib
import os
import signal
import socket
import subprocess
import sys
from asyncio import selector_events

HOST = "127.0.0.1"

# What asyncio's datagram transport does on the running Python: the reference for both
# loops. CPython 3.13 changed it (Lib/asyncio/selector_events.py,
# _SelectorDatagramTransport.sendto, gh-113812): sendto(b"") sends an empty datagram
# (3.11 and 3.12 drop it), and each queued datagram counts a header in
# get_write_buffer_size(), so that queued empty datagrams reach the high-water mark too.
SENDS_EMPTY_DATAGRAMS = sys.version_info >= (3, 13)
# The header: 8 bytes from 3.13; later 3.13 releases name it _header_size (gh-135444).
_ASYNCIO_DGRAM = selector_events._SelectorDatagramTransport
HEADER_SIZE = getattr(_ASYNCIO_DGRAM, "_header_size", 8 if SENDS_EMPTY_DATAGRAMS else 0)
# 3.13.0 to 3.13.5 add the header when a datagram is queued but do not take it off when
# the datagram is sent (gh-135444, fixed where _header_size exists): a drained buffer's
# size stays at 8 per datagram that was queued. fastloop follows the fix.
ASYNCIO_KEEPS_SENT_HEADERS = HEADER_SIZE > 0 and not hasattr(_ASYNCIO_DGRAM, "_header_size")
# base_events.create_datagram_endpoint(sock=): 3.13 refuses only SOCK_STREAM sockets
# (so SOCK_RAW, SOCK_SEQPACKET... are taken), with another message (gh-114887).
TAKES_ANY_NON_STREAM_SOCKET = sys.version_info >= (3, 13)
if TAKES_ANY_NON_STREAM_SOCKET:
    NOT_A_DATAGRAM_SOCKET = "A datagram socket was expected"
else:
    NOT_A_DATAGRAM_SOCKET = "A UDP Socket was expected"
# 3.12 added asyncio's check that no open transport owns the socket to
# BaseSelectorEventLoop._make_datagram_transport (3.11 checks only add_reader & co.).
CHECKS_SOCKET_OWNER = sys.version_info >= (3, 12)


def run(loop, coro, timeout=10.0):
    """Run ``coro`` on ``loop`` to completion, failing with TimeoutError after ``timeout``."""
    return loop.run_until_complete(asyncio.wait_for(coro, timeout))


def sha256(data):
    return hashlib.sha256(data).hexdigest()


def pattern(size, seed=0):
    """``size`` bytes that are not all alike (so a lost or reordered chunk changes the hash)."""
    block = bytes((i * 7 + seed) % 251 for i in range(251 * 16))
    reps, rest = divmod(size, len(block))
    return block * reps + block[:rest]


def addr_of(server):
    """(host, port) of a TCP server's first socket."""
    return server.sockets[0].getsockname()[:2]


async def spin(n=5):
    """Let the running loop go round ``n`` times."""
    for _ in range(n):
        await asyncio.sleep(0)


async def wait_for_cond(predicate, timeout=5.0, interval=0.005):
    """Sleep in small steps until ``predicate()`` holds; AssertionError after ``timeout``."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        if loop.time() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(interval)


class Recorder(asyncio.Protocol):
    """A protocol that records its callbacks.

    ``events`` lists the callback names in order, consecutive ``data_received`` calls
    folded into one "data" entry; ``data`` accumulates what was received; ``made``,
    ``eof`` and ``lost`` are futures resolved by the first call of each callback
    (``lost`` with the exception given to connection_lost). ``lost_calls`` counts
    connection_lost calls with their argument. ``eof_result`` is what
    ``eof_received`` returns.
    """

    def __init__(self, eof_result=None):
        loop = asyncio.get_running_loop()
        self.events = []
        self.data = bytearray()
        self.transport = None
        self.made = loop.create_future()
        self.eof = loop.create_future()
        self.lost = loop.create_future()
        self.lost_calls = []
        self.pauses = []
        self.resumes = []
        self.eof_result = eof_result
        self._waiters = []

    def _event(self, name):
        if name == "data" and self.events and self.events[-1] == "data":
            return
        self.events.append(name)

    def _wake(self):
        waiters, self._waiters = self._waiters, []
        for w in waiters:
            if not w.done():
                w.set_result(None)

    def connection_made(self, transport):
        self.transport = transport
        self._event("made")
        if not self.made.done():
            self.made.set_result(transport)

    def data_received(self, data):
        assert isinstance(data, bytes), type(data)
        self._event("data")
        self.data += data
        self._wake()

    def eof_received(self):
        self._event("eof")
        if not self.eof.done():
            self.eof.set_result(None)
        self._wake()
        return self.eof_result

    def pause_writing(self):
        self._event("pause_writing")
        self.pauses.append(self.transport.get_write_buffer_size())

    def resume_writing(self):
        self._event("resume_writing")
        self.resumes.append(self.transport.get_write_buffer_size())

    def connection_lost(self, exc):
        self._event("lost")
        self.lost_calls.append(exc)
        if not self.lost.done():
            self.lost.set_result(exc)
        self._wake()

    async def wait_bytes(self, n):
        """Wait until at least ``n`` bytes arrived; AssertionError if the stream ends first."""
        loop = asyncio.get_running_loop()
        while len(self.data) < n:
            if self.eof.done() or self.lost.done():
                raise AssertionError(
                    f"stream ended after {len(self.data)} of {n} bytes: {self.events}"
                )
            fut = loop.create_future()
            self._waiters.append(fut)
            await fut
        return bytes(self.data)


# The context variable the context tests set before making a transport or server; the
# protocols below note its value in each callback.
CTX_VAR = contextvars.ContextVar("fastloop_test_ctx", default="unset")


class ContextRecorder(Recorder):
    """A Recorder that also notes, in ``ctx``, the value of CTX_VAR when each of its
    callbacks is first called ("made", "data", "eof", "lost")."""

    def __init__(self, eof_result=None):
        super().__init__(eof_result)
        self.ctx = {}

    def _note(self, name):
        self.ctx.setdefault(name, CTX_VAR.get())

    def connection_made(self, transport):
        self._note("made")
        super().connection_made(transport)

    def data_received(self, data):
        self._note("data")
        super().data_received(data)

    def eof_received(self):
        self._note("eof")
        return super().eof_received()

    def connection_lost(self, exc):
        self._note("lost")
        super().connection_lost(exc)


class EchoServerProtocol(Recorder):
    """Echoes what it receives, with flow control (reading pauses while writing is paused).

    On EOF, ``eof_received`` returns None: the transport closes itself after flushing the
    echoed data, so the peer reads everything and then EOF.
    """

    def data_received(self, data):
        super().data_received(data)
        self.transport.write(data)

    def pause_writing(self):
        super().pause_writing()
        self.transport.pause_reading()

    def resume_writing(self):
        super().resume_writing()
        self.transport.resume_reading()


class ProtocolServer:
    """A server started with ``loop.create_server`` / ``create_unix_server`` that keeps
    the protocols it makes, and on exit closes the server and every connection it
    accepted (waiting for their connection_lost)."""

    def __init__(self, proto_cls=EchoServerProtocol, **kwargs):
        self.proto_cls = proto_cls
        self.kwargs = kwargs
        self.protocols = []
        self.server = None

    def factory(self):
        p = self.proto_cls()
        self.protocols.append(p)
        return p

    async def start_tcp(self, host=HOST, port=0):
        loop = asyncio.get_running_loop()
        self.server = await loop.create_server(self.factory, host, port, **self.kwargs)
        return self

    async def start_unix(self, path=None):
        loop = asyncio.get_running_loop()
        self.server = await loop.create_unix_server(self.factory, path, **self.kwargs)
        return self

    @property
    def addr(self):
        return self.server.sockets[0].getsockname()

    async def accepted(self, n=1):
        """Wait until ``n`` connections were accepted and made; return their protocols."""
        await wait_for_cond(lambda: len(self.protocols) >= n)
        await asyncio.gather(*(p.made for p in self.protocols[:n]))
        return self.protocols[:n]

    async def close(self):
        self.server.close()
        for p in self.protocols:
            if p.transport is not None and not p.lost.done():
                p.transport.abort()
        await asyncio.wait_for(asyncio.gather(*(p.lost for p in self.protocols)), 5)
        await asyncio.wait_for(self.server.wait_closed(), 5)

    async def __aenter__(self):
        return self

    async def __aexit__(self, *exc):
        await self.close()


async def tcp_echo_server(**kwargs):
    return await ProtocolServer(**kwargs).start_tcp()


async def close_transport(transport, protocol):
    """Close a client transport and wait for its connection_lost."""
    if not protocol.lost.done():
        transport.close()
    return await asyncio.wait_for(protocol.lost, 5)


@contextlib.asynccontextmanager
async def raw_peer(factory, family=socket.AF_INET, **kwargs):
    """Connect ``factory``'s protocol to a plain blocking socket the test controls.

    Yields (transport, protocol, peer_socket). The peer socket has a 10 s timeout
    so a thread blocked on it always ends. On exit the transport is aborted (if
    still open) and the peer socket closed.
    """
    loop = asyncio.get_running_loop()
    with socket.create_server((HOST, 0), family=family) as lsock:
        tr, pr = await loop.create_connection(factory, *lsock.getsockname()[:2], **kwargs)
        peer, _ = lsock.accept()
    peer.settimeout(10)
    try:
        yield tr, pr, peer
    finally:
        if not pr.lost.done():
            tr.abort()
        await asyncio.wait_for(pr.lost, 5)
        peer.close()


def recv_exactly(sock, n):
    """Blocking: read exactly ``n`` bytes from ``sock`` (less only at EOF)."""
    chunks = []
    got = 0
    while got < n:
        chunk = sock.recv(min(n - got, 1 << 20))
        if not chunk:
            break
        chunks.append(chunk)
        got += len(chunk)
    return b"".join(chunks)


def recv_until_eof(sock):
    """Blocking: read until EOF; a reset ends the read too. Returns (data, error)."""
    chunks = []
    try:
        while True:
            chunk = sock.recv(1 << 20)
            if not chunk:
                return b"".join(chunks), None
            chunks.append(chunk)
    except OSError as exc:
        return b"".join(chunks), exc


def make_self_signed_cert(directory, cn="localhost"):
    """A self-signed certificate for ``cn``, 127.0.0.1 and ::1, made with the openssl CLI.

    Returns (certfile, keyfile). An EC key keeps it fast.
    """
    certfile = os.path.join(directory, f"{cn}-cert.pem")
    keyfile = os.path.join(directory, f"{cn}-key.pem")
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-days",
            "2",
            "-subj",
            f"/CN={cn}",
            "-addext",
            f"subjectAltName=DNS:{cn},IP:127.0.0.1,IP:::1",
            "-keyout",
            keyfile,
            "-out",
            certfile,
        ],
        check=True,
        capture_output=True,
        timeout=30,
    )
    return certfile, keyfile


# -- child processes -----------------------------------------------------------------------

# What a child script starts with: LOOP_NAME (its first argument) and new_loop(), which
# makes a loop of that kind. The script's own arguments follow in sys.argv[2:].
CHILD_PRELUDE = """
import asyncio, sys
LOOP_NAME = sys.argv[1]

def new_loop():
    if LOOP_NAME == "fastloop":
        import fastloop
        return fastloop.new_event_loop()
    return asyncio.new_event_loop()
"""


def run_child(loop_name, script, *args, timeout=30):
    """Run CHILD_PRELUDE + ``script`` in a new interpreter; returns the CompletedProcess.

    For what may crash the process (SIGSEGV, abort): the crash stays in the child, and
    faulthandler prints its Python stack on the child's stderr.
    """
    return subprocess.run(
        [sys.executable, "-X", "faulthandler", "-c", CHILD_PRELUDE + script, loop_name]
        + [str(a) for a in args],
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def exit_status(returncode):
    """A child's exit status in words: "0", "1", "SIGSEGV"..."""
    if returncode < 0:
        try:
            return signal.Signals(-returncode).name
        except ValueError:
            return f"signal {-returncode}"
    return str(returncode)


def child_stdout(out):
    """The stdout of a child that must have exited with status 0 (AssertionError otherwise,
    with its exit status and the end of its stderr)."""
    assert out.returncode == 0, (
        f"the child exited with {exit_status(out.returncode)}; stderr:\n{out.stderr[-3000:]}"
    )
    return out.stdout


def assert_running_on(loop_name):
    """Assert that the running loop is of the kind the ``loop`` fixture named."""
    module = type(asyncio.get_running_loop()).__module__
    assert module.split(".")[0] == ("fastloop" if loop_name == "fastloop" else "asyncio"), module
