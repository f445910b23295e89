"""Lifetimes: what happens to transports, servers and loops at loop.close(), when they
are garbage collected, and when a loop cannot get the fds it needs.

asyncio's loop is the reference. What may crash the process (a transport used after
its loop closed, fastloop's native objects dropped before use) runs in a child
interpreter, so that a crash fails the test instead of ending the run; so does what
closes fds by number (a server collected after loop.close()) or leaks them on purpose.
"""

import asyncio
import errno
import gc
import json
import os
import shutil
import socket
import warnings

import pytest

from .netutil import HOST, child_stdout, exit_status, make_self_signed_cert, run, run_child

pytestmark = pytest.mark.timeout(60)


@pytest.fixture(scope="module")
def certs(tmp_path_factory):
    """(certfile, keyfile) for the TLS cases, or None without the openssl CLI."""
    if shutil.which("openssl") is None:
        return None
    return make_self_signed_cert(str(tmp_path_factory.mktemp("lifetimes-certs")))


# -- transports left open at loop.close() (issue 9, item 2) ------------------------------

# Every public method of a stream transport, each called on a transport of the given
# kind that was left open when its loop closed. Each method gets a fresh loop and
# transport. The child prints one JSON line before each call (["call", method]) and one
# after it (["result", method, outcome]), so the parent knows which call crashed it;
# then it restarts the child with the methods left. Everything made stays referenced
# until the child exits (a crash while exiting is reported as "<exit>").
LEFT_OPEN_CHILD = r"""
import json, os, socket, ssl

kind, certfile, keyfile, methods = sys.argv[2], sys.argv[3], sys.argv[4], sys.argv[5]
keep = []


def extra(t):
    return type(t.get_extra_info("socket", t.get_extra_info("pipe"))).__name__


CALLS = {
    "write": lambda t: t.write(b"x"),
    "writelines": lambda t: t.writelines([b"x", b"y"]),
    "write_eof": lambda t: t.write_eof(),
    "can_write_eof": lambda t: t.can_write_eof(),
    "abort": lambda t: t.abort(),
    "close": lambda t: t.close(),
    "pause_reading": lambda t: t.pause_reading(),
    "resume_reading": lambda t: t.resume_reading(),
    "is_reading": lambda t: t.is_reading(),
    "is_closing": lambda t: t.is_closing(),
    "get_write_buffer_size": lambda t: t.get_write_buffer_size(),
    "get_write_buffer_limits": lambda t: list(t.get_write_buffer_limits()),
    "set_write_buffer_limits": lambda t: t.set_write_buffer_limits(high=1024),
    "get_protocol": lambda t: type(t.get_protocol()).__name__,
    "set_protocol": lambda t: t.set_protocol(asyncio.Protocol()),
    "get_extra_info": extra,
}


async def make(loop):
    P = asyncio.Protocol
    if kind == "tcp":
        lsock = socket.create_server(("127.0.0.1", 0))
        tr, _ = await loop.create_connection(P, *lsock.getsockname())
        keep.append(lsock.accept()[0])
        lsock.close()
        return tr
    if kind == "unix":
        a, b = socket.socketpair()
        keep.append(b)
        tr, _ = await loop.create_unix_connection(P, sock=a)
        return tr
    if kind in ("read_pipe", "write_pipe"):
        r, w = os.pipe()
        if kind == "read_pipe":
            keep.append(open(w, "wb"))
            tr, _ = await loop.connect_read_pipe(P, open(r, "rb"))
        else:
            keep.append(open(r, "rb"))
            tr, _ = await loop.connect_write_pipe(P, open(w, "wb"))
        return tr
    if kind == "tls":
        server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        server_ctx.load_cert_chain(certfile, keyfile)
        client_ctx = ssl.create_default_context(cafile=certfile)
        server = await loop.create_server(P, "127.0.0.1", 0, ssl=server_ctx)
        keep.append(server)
        tr, _ = await loop.create_connection(
            P, *server.sockets[0].getsockname(), ssl=client_ctx, server_hostname="localhost"
        )
        return tr
    if kind in ("subprocess_stdin", "subprocess_stdout"):
        tr, _ = await loop.subprocess_exec(
            asyncio.SubprocessProtocol, "cat", stdin=-1, stdout=-1, stderr=None
        )
        keep.append(tr)
        return tr.get_pipe_transport(0 if kind == "subprocess_stdin" else 1)
    raise ValueError(kind)


def outcome(method, transport):
    if not hasattr(transport, method):
        return ["absent"]
    try:
        value = CALLS[method](transport)
    except Exception as exc:
        return ["raises", type(exc).__name__, str(exc) if type(exc) is RuntimeError else ""]
    return ["returns", value]


for method in methods.split(","):
    loop = new_loop()
    transport = loop.run_until_complete(make(loop))
    loop.close()
    keep.append((loop, transport))
    print(json.dumps(["call", method]), flush=True)
    print(json.dumps(["result", method, outcome(method, transport)]), flush=True)
"""

LEFT_OPEN_METHODS = (
    "write",
    "writelines",
    "write_eof",
    "can_write_eof",
    "abort",
    "close",
    "pause_reading",
    "resume_reading",
    "is_reading",
    "is_closing",
    "get_write_buffer_size",
    "get_write_buffer_limits",
    "set_write_buffer_limits",
    "get_protocol",
    "set_protocol",
    "get_extra_info",
)

# What the issue allows besides asyncio's own result for a transport whose loop closed.
LOOP_IS_CLOSED = ["raises", "RuntimeError", "Event loop is closed"]


def crash_line(stderr):
    """What a crashed child's stderr says happened: faulthandler's "Fatal Python error"
    line with the innermost Python frame, else the last line."""
    lines = stderr.strip().splitlines()
    for i, line in enumerate(lines):
        if line.startswith("Fatal Python error"):
            frames = [f.strip() for f in lines[i:] if f.strip().startswith("File ")]
            return f"{line} ({frames[0]})" if frames else line
    return lines[-1] if lines else ""


def left_open_outcomes(loop_name, kind, certs):
    """{method: outcome} for every method on a transport of ``kind`` left open at
    loop.close(); a crash is ["crashes", signal, line]."""
    certfile, keyfile = certs or ("", "")
    outcomes = {}
    remaining = list(LEFT_OPEN_METHODS)
    while remaining:
        out = run_child(
            loop_name, LEFT_OPEN_CHILD, kind, certfile, keyfile, ",".join(remaining), timeout=60
        )
        calling = None
        for line in out.stdout.splitlines():
            record = json.loads(line)
            if record[0] == "call":
                calling = record[1]
            else:
                outcomes[record[1]] = record[2]
                remaining.remove(record[1])
                calling = None
        if out.returncode != 0:
            crash = ["crashes", exit_status(out.returncode), crash_line(out.stderr)]
            if calling is None:
                outcomes["<exit>"] = crash
                break
            outcomes[calling] = crash
            remaining.remove(calling)
    return outcomes


_LEFT_OPEN = {}


def cached_left_open_outcomes(loop_name, kind, certs):
    """left_open_outcomes, run once per loop and kind (two tests read them)."""
    if (loop_name, kind) not in _LEFT_OPEN:
        _LEFT_OPEN[loop_name, kind] = left_open_outcomes(loop_name, kind, certs)
    return _LEFT_OPEN[loop_name, kind]


LEFT_OPEN_KINDS = [
    "tcp",
    "unix",
    "read_pipe",
    "write_pipe",
    "tls",
    "subprocess_stdin",
    "subprocess_stdout",
]


@pytest.mark.timeout(240)
@pytest.mark.parametrize("kind", LEFT_OPEN_KINDS)
def test_transport_methods_after_loop_close_do_not_crash(loop_name, kind, certs):
    """issue 9, item 2: no public method of a transport left open at loop.close() crashes
    the process, nor does the process crash at exit with such transports alive."""
    if kind == "tls" and certs is None:
        pytest.skip("needs the openssl CLI to make a certificate")
    got = cached_left_open_outcomes(loop_name, kind, certs)
    crashes = [f"{method}: {o}" for method, o in got.items() if o[0] == "crashes"]
    assert not crashes, f"{kind} transport after loop.close():\n  " + "\n  ".join(crashes)


@pytest.mark.timeout(240)
@pytest.mark.parametrize("kind", LEFT_OPEN_KINDS)
def test_transport_methods_after_loop_close_match_asyncio(loop_name, kind, certs):
    """issue 9, item 2: each public method of a transport left open at loop.close() gives
    asyncio's result (return value, or exception class and RuntimeError's message), or
    raises RuntimeError('Event loop is closed'). Where asyncio's transport has no such
    method, nothing is asked here (a crash is the test above)."""
    if kind == "tls" and certs is None:
        pytest.skip("needs the openssl CLI to make a certificate")
    got = cached_left_open_outcomes(loop_name, kind, certs)
    want = cached_left_open_outcomes("asyncio", kind, certs)
    problems = []
    for method in LEFT_OPEN_METHODS:
        mine, ref = got.get(method), want.get(method)
        if ref is None or ref == ["absent"] or mine in (ref, LOOP_IS_CLOSED):
            continue
        problems.append(f"{method}: {mine}, asyncio: {ref}")
    assert not problems, f"{kind} transport after loop.close():\n  " + "\n  ".join(problems)


# -- fastloop's native objects dropped before adoption (issue 9, item 4) -----------------

NATIVE_DROPPED_CHILD = """
import gc
from fastloop import _core

cls, kind = sys.argv[2], sys.argv[3]
loop = new_loop()
getattr(_core, cls)(loop, kind)  # made and dropped at once: never adopted nor started
gc.collect()
loop.close()
print("closed")
"""


@pytest.mark.parametrize("kind", ["tcp", "pipe"])
@pytest.mark.parametrize("cls", ["StreamTransport", "StreamListener"])
def test_native_stream_object_dropped_before_adoption(cls, kind):
    """issue 9, item 4 (first sentence): a _core.StreamTransport / StreamListener made and
    dropped before any transport or server adopted it, then loop.close(): no crash.

    fastloop only: these are fastloop's internal native objects, asyncio has none.
    """
    out = run_child("fastloop", NATIVE_DROPPED_CHILD, cls, kind)
    assert child_stdout(out) == "closed\n"


# -- a server left open at loop.close() (issue 9, item 8) --------------------------------

SERVER_LEFT_OPEN_CHILD = r"""
import gc, json, os

what = sys.argv[2]
loop = new_loop()
server = loop.run_until_complete(loop.create_server(asyncio.Protocol, "127.0.0.1", 0))
fd = server.sockets[0].fileno()
loop.close()


def is_open(n):
    try:
        os.fstat(n)
    except OSError:
        return False
    return True


result = {}
if what == "close":
    try:
        server.close()
    except Exception as exc:
        result["close"] = repr(exc)
    else:
        result["close"] = None
    result["sockets"] = len(server.sockets)
    result["is_serving"] = server.is_serving()
else:
    # If the loop's close() freed the listening fd's number, a new file gets it (open()
    # takes the lowest free number: the files opened on the way are closed again).
    reused = None
    if not is_open(fd):
        others = []
        while reused is None and len(others) < fd + 1:
            f = open(os.devnull, "rb")
            if f.fileno() == fd:
                reused = f
            else:
                others.append(f)
        for f in others:
            f.close()
    del server
    gc.collect()
    result["reused"] = reused is not None
    if reused is not None:
        try:
            result["file_after_gc"] = repr(reused.read(1))
        except OSError as exc:
            result["file_after_gc"] = repr(exc)
        try:
            reused.close()
        except OSError:
            pass  # its fd was closed under it
    else:
        result["fd_open_after_gc"] = is_open(fd)
print(json.dumps(result))
"""


def test_server_close_after_loop_close(loop_name):
    """issue 9, item 8: server.close() on a server still open when its loop closed does
    what asyncio's does: no error, no sockets left, not serving."""
    out = run_child(loop_name, SERVER_LEFT_OPEN_CHILD, "close")
    assert json.loads(child_stdout(out)) == {"close": None, "sockets": 0, "is_serving": False}


def test_server_collected_after_loop_close_closes_only_its_own_fd(loop_name):
    """issue 9, item 8: collecting a Server left open at loop.close() must not close a
    file that has since taken the listening fd's number; and the server's own fd is
    closed by then (asyncio: the listening socket closes when collected)."""
    out = run_child(loop_name, SERVER_LEFT_OPEN_CHILD, "gc")
    result = json.loads(child_stdout(out))
    if result["reused"]:
        assert result["file_after_gc"] == "b''", result
    else:
        assert result["fd_open_after_gc"] is False, result


# -- what loops and connections keep alive (issue 9, item 9) -----------------------------

PROTOCOLS_AT_CLOSE_CHILD = r"""
import gc, json, warnings, weakref

# asyncio's transports warn "unclosed transport" when collected: expected here.
warnings.simplefilter("ignore", ResourceWarning)
loop = new_loop()
refs = []


class P(asyncio.Protocol):
    def __init__(self):
        refs.append(weakref.ref(self))
        self.transport = None

    def connection_made(self, transport):
        self.transport = transport  # the usual protocol <-> transport cycle


async def main():
    server = await loop.create_server(P, "127.0.0.1", 0)
    await loop.create_connection(P, *server.sockets[0].getsockname())
    while sum(r().transport is not None for r in refs) < 2:
        await asyncio.sleep(0.005)
    server.close()


loop.run_until_complete(main())
loop.close()  # both connections still open; the loop itself stays referenced
gc.collect()
print(json.dumps([r() is not None for r in refs]))
"""


def test_protocols_of_connections_open_at_loop_close_are_collected(loop_name):
    """issue 9, item 9: the protocols of connections still open at loop.close() (each
    holding its transport, as most do) can be collected once nothing else refers to
    them."""
    out = run_child(loop_name, PROTOCOLS_AT_CLOSE_CHILD)
    assert json.loads(child_stdout(out)) == [False, False]  # client's and server's


DROPPED_LOOPS_CHILD = r"""
import gc, json, os, warnings, weakref

# Collect the ResourceWarnings by message only (a recorded warning keeps its source).
messages = []
warnings.showwarning = lambda message, category, *args, **kwargs: messages.append(
    f"{category.__name__}: {message}"
)
warnings.simplefilter("always", ResourceWarning)


class P(asyncio.Protocol):
    def connection_made(self, transport):
        self.transport = transport


def fd_count():
    return len(os.listdir("/proc/self/fd"))


def open_and_drop():
    # A loop with a server and a connection (both ends), dropped without close().
    loop = new_loop()

    async def main():
        made = []
        server = await loop.create_server(lambda: made.append(P()) or made[-1], "127.0.0.1", 0)
        await loop.create_connection(P, *server.sockets[0].getsockname())
        while not made or made[0].transport is None:
            await asyncio.sleep(0.005)

    loop.run_until_complete(main())
    return weakref.ref(loop)


open_and_drop()  # the first loop opens what lives as long as the process
gc.collect()
before = fd_count()
messages.clear()
refs = [open_and_drop() for _ in range(20)]
gc.collect()
print(json.dumps({
    "fds_grown": fd_count() - before,
    "loops_alive": sum(r() is not None for r in refs),
    "unclosed_loop_warnings": sum("unclosed event loop" in m for m in messages),
}))
"""


@pytest.mark.timeout(120)
def test_loops_dropped_without_close_are_collected(loop_name):
    """issue 9, item 9: 20 loops dropped without close(), each with a server and an open
    connection, are collected with everything they hold: no fd left, each loop warned
    "unclosed event loop" (a ResourceWarning, as asyncio's __del__ does)."""
    out = run_child(loop_name, DROPPED_LOOPS_CHILD, timeout=100)
    assert json.loads(child_stdout(out)) == {
        "fds_grown": 0,
        "loops_alive": 0,
        "unclosed_loop_warnings": 20,
    }


# -- new_event_loop() at fd exhaustion (issue 9, item 10) --------------------------------

EMFILE_NEW_LOOP_CHILD = r"""
import gc, json, os, resource

new_loop().close()  # imports done; what lives as long as the process is open
LIMIT = 256


def open_fds():
    # Counted without opening anything (listing /proc/self/fd needs a free fd).
    n = 0
    for fd in range(LIMIT):
        try:
            os.fstat(fd)
        except OSError:
            continue
        n += 1
    return n


soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (LIMIT, hard))
fillers = []


def fill():
    try:
        while True:
            fillers.append(os.open(os.devnull, os.O_RDONLY))
    except OSError:
        pass


fill()
results = []
for free in range(12):
    for _ in range(free):
        os.close(fillers.pop())
    before = open_fds()
    try:
        lp = new_loop()
    except Exception as exc:
        outcome = [type(exc).__name__, isinstance(exc, OSError), getattr(exc, "errno", None)]
    else:
        outcome = ["ok"]
        lp.close()
        del lp
    gc.collect()
    results.append([free, outcome, open_fds() - before])
    fill()
# Free the fds again: a sanitizer's checks at exit need some (LeakSanitizer reads
# /proc); the leak count above is already taken.
for fd in fillers:
    os.close(fd)
resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
print(json.dumps(results))
"""


def test_new_event_loop_at_fd_exhaustion(loop_name):
    """issue 9, item 10: with 0, 1, ... 11 fds free, new_event_loop() either works or
    raises OSError(EMFILE) as asyncio's does, and a failed attempt leaks no fd."""
    out = run_child(loop_name, EMFILE_NEW_LOOP_CHILD)
    results = json.loads(child_stdout(out))
    problems = [
        (free, outcome, leaked)
        for free, outcome, leaked in results
        if leaked != 0 or (outcome != ["ok"] and outcome[1:] != [True, errno.EMFILE])
    ]
    assert not problems, f"(free fds, outcome, fds leaked): {problems}"
    # The range covers both: no fd free fails, 11 free is enough for either loop.
    assert results[0][1] != ["ok"] and results[-1][1] == ["ok"], results


# -- ResourceWarning for what is collected unclosed (issue 9, item 14) -------------------


def resource_warnings_when_dropped(box):
    """Empty the list ``box`` (the only reference to what it holds), collect garbage, and
    return the messages of the ResourceWarnings emitted meanwhile.

    (Not pytest.warns: it re-emits the warnings that do not match, and asyncio emits
    more than one here.)
    """
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ResourceWarning)
        box.clear()
        gc.collect()
    messages = [str(w.message) for w in caught if issubclass(w.category, ResourceWarning)]
    caught.clear()  # a recorded warning refers to its source: let it go now
    gc.collect()
    return messages


async def _stream_transport(loop, kind, keep):
    """A client transport (with a plain asyncio.Protocol) and, in ``keep``, its peer."""
    if kind == "tcp":
        with socket.create_server((HOST, 0)) as lsock:
            tr, _ = await loop.create_connection(asyncio.Protocol, *lsock.getsockname())
            keep.append(lsock.accept()[0])
    else:
        a, b = socket.socketpair()
        keep.append(b)
        tr, _ = await loop.create_unix_connection(asyncio.Protocol, sock=a)
    return tr


@pytest.mark.parametrize("kind", ["tcp", "unix"])
def test_unclosed_stream_transport_warns_when_collected(loop, kind):
    """issue 9, item 14: a TCP / Unix transport never closed warns "unclosed transport"
    (a ResourceWarning, as asyncio's) when it is collected after its loop closed."""
    keep = []
    box = [run(loop, _stream_transport(loop, kind, keep))]
    loop.close()
    try:
        messages = resource_warnings_when_dropped(box)
    finally:
        for sock in keep:
            sock.close()
    assert any(m.startswith("unclosed transport") for m in messages), messages


@pytest.mark.parametrize("direction", ["read", "write"])
def test_unclosed_pipe_transport_warns_when_collected(loop, direction):
    """issue 9, item 14 (pipes, beyond the issue's list): a pipe transport never closed
    warns "unclosed transport" when collected after its loop closed, as asyncio's
    pipe transports do (fastloop warns only about the pipe's file object)."""
    r, w = os.pipe()
    keep = open(w if direction == "read" else r, "rb" if direction == "write" else "wb")

    async def make():
        if direction == "read":
            tr, _ = await loop.connect_read_pipe(asyncio.Protocol, open(r, "rb"))
        else:
            tr, _ = await loop.connect_write_pipe(asyncio.Protocol, open(w, "wb"))
        return tr

    box = [run(loop, make())]
    loop.close()
    try:
        messages = resource_warnings_when_dropped(box)
    finally:
        keep.close()
    assert any(m.startswith("unclosed transport") for m in messages), messages


def test_unclosed_server_warns_when_collected(loop):
    """issue 9, item 14: a TCP server never closed, collected after its loop closed:
    asyncio's Server has no warning of its own, its listening socket warns "unclosed
    <socket...>"; so must fastloop's (whatever owns the listening fd). (Not a Unix
    server: asyncio 3.13 keeps its socket in the loop, so it warns only with the loop.)"""
    box = [run(loop, loop.create_server(asyncio.Protocol, HOST, 0))]
    loop.close()
    messages = resource_warnings_when_dropped(box)
    assert any(m.startswith("unclosed <socket.socket") for m in messages), messages


def test_unclosed_datagram_transport_warns_when_collected(loop):
    """issue 9, item 14: a datagram transport never closed warns "unclosed transport"
    when collected after its loop closed (asyncio's _SelectorDatagramTransport does)."""

    async def make():
        tr, _ = await loop.create_datagram_endpoint(asyncio.DatagramProtocol, local_addr=(HOST, 0))
        return tr

    box = [run(loop, make())]
    loop.close()
    messages = resource_warnings_when_dropped(box)
    assert any(m.startswith("unclosed transport") for m in messages), messages
