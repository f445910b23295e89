"""add_reader / add_writer / remove_reader / remove_writer on sockets and pipes."""

import asyncio
import contextvars
import errno
import os
import socket
import struct
import subprocess
import sys
import threading
import time

import pytest

from .conftest import run_briefly


def close_socks(loop, *socks):
    """Close sockets, first dropping any watcher a failed test left on them.

    Closing a watched fd is tested on its own (in a child process); everywhere
    else a leftover watcher must not turn one failure into a crash of the run.
    """
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


class FileLike:
    def __init__(self, fd):
        self._fd = fd

    def fileno(self):
        return self._fd


def run_until(loop, predicate, timeout=5.0):
    """Run the loop until predicate() holds (checked each iteration) or timeout."""
    deadline = loop.time() + timeout

    def check():
        if predicate() or loop.time() > deadline:
            loop.stop()
        else:
            loop.call_soon(check)

    loop.call_soon(check)
    loop.run_forever()
    assert predicate(), "condition not reached in time"


@pytest.mark.timeout(10)
@pytest.mark.parametrize("kind", ["socket", "int", "fileno_object"])
def test_add_reader_called_when_readable(loop, sockpair, kind):
    a, b = sockpair
    target = {"socket": a, "int": a.fileno(), "fileno_object": FileLike(a.fileno())}[kind]
    got = []

    def on_readable(*args):
        got.append((args, a.recv(100)))

    loop.add_reader(target, on_readable, "arg1", 2)
    run_briefly(loop, 3)
    assert got == []
    b.send(b"hello")
    run_until(loop, lambda: got)
    assert got == [(("arg1", 2), b"hello")]
    assert loop.remove_reader(target) is True
    assert loop.remove_reader(target) is False


@pytest.mark.timeout(10)
def test_remove_reader_by_fd_after_adding_by_socket(loop, sockpair):
    a, b = sockpair
    got = []
    loop.add_reader(a, got.append, "x")
    assert loop.remove_reader(a.fileno()) is True
    b.send(b"data")
    run_briefly(loop, 3)
    assert got == []
    assert loop.remove_reader(a) is False


def test_remove_reader_never_added(loop, sockpair):
    a, _ = sockpair
    assert loop.remove_reader(a) is False
    assert loop.remove_writer(a) is False


@pytest.mark.timeout(10)
def test_reader_is_level_triggered(loop, sockpair):
    a, b = sockpair
    calls = []
    loop.add_reader(a, calls.append, 1)
    b.send(b"x")
    # The data is never read, so the callback keeps firing, once per iteration.
    run_until(loop, lambda: len(calls) >= 5)
    assert loop.remove_reader(a) is True
    n = len(calls)
    run_briefly(loop, 3)
    assert len(calls) == n


@pytest.mark.timeout(10)
def test_replacing_a_reader(loop, sockpair):
    a, b = sockpair
    got = []
    loop.add_reader(a, lambda: got.append("first"))
    loop.add_reader(a, lambda: (got.append("second"), a.recv(10)))
    b.send(b"x")
    run_until(loop, lambda: got)
    assert got == ["second"]
    assert loop.remove_reader(a) is True


@pytest.mark.timeout(10)
def test_add_writer_called_when_writable(loop, sockpair):
    a, _ = sockpair
    got = []
    loop.add_writer(a, got.append, "writable")
    run_until(loop, lambda: got)
    assert got[0] == "writable"
    assert loop.remove_writer(a) is True
    assert loop.remove_writer(a) is False
    n = len(got)
    run_briefly(loop, 3)
    assert len(got) == n


@pytest.mark.timeout(10)
def test_reader_and_writer_on_the_same_fd(loop, sockpair):
    a, b = sockpair
    events = []
    loop.add_reader(a, lambda: events.append(("r", a.recv(100))))
    loop.add_writer(a, lambda: events.append("w"))
    b.send(b"ping")
    run_until(loop, lambda: ("r", b"ping") in events and "w" in events)
    # Removing the writer leaves the reader in place, and the other way round.
    assert loop.remove_writer(a) is True
    events.clear()
    b.send(b"again")
    run_until(loop, lambda: ("r", b"again") in events)
    assert "w" not in events
    assert loop.remove_reader(a) is True
    loop.add_writer(a, lambda: events.append("w2"))
    run_until(loop, lambda: "w2" in events)
    assert loop.remove_writer(a) is True
    assert loop.remove_reader(a) is False


@pytest.mark.timeout(10)
def test_one_shot_reader_removes_itself(loop, sockpair):
    a, b = sockpair
    got = []

    def once():
        got.append(a.recv(10))
        assert loop.remove_reader(a) is True

    loop.add_reader(a, once)
    b.send(b"1")
    run_until(loop, lambda: got)
    b.send(b"2")
    run_briefly(loop, 3)
    assert got == [b"1"]


@pytest.mark.timeout(10)
def test_reader_on_a_pipe(loop):
    r, w = os.pipe()
    try:
        got = []
        loop.add_reader(r, lambda: got.append(os.read(r, 100)))
        os.write(w, b"through a pipe")
        run_until(loop, lambda: got)
        assert got == [b"through a pipe"]
        assert loop.remove_reader(r) is True
    finally:
        loop.remove_reader(r)
        os.close(r)
        os.close(w)


@pytest.mark.timeout(10)
def test_reader_callback_exception_goes_to_handler(loop, sockpair, exc_handler_calls):
    a, b = sockpair

    def bad():
        a.recv(10)
        raise ZeroDivisionError("in reader")

    loop.add_reader(a, bad)
    b.send(b"x")
    run_until(loop, lambda: exc_handler_calls)
    assert loop.remove_reader(a) is True
    ctx = exc_handler_calls[0]
    assert ctx["message"].startswith("Exception in callback")
    assert isinstance(ctx["exception"], ZeroDivisionError)
    assert "handle" in ctx
    exc_handler_calls.clear()


@pytest.mark.timeout(10)
def test_many_readers(loop):
    pairs = [socket.socketpair() for _ in range(50)]
    try:
        got = set()
        for i, (a, _) in enumerate(pairs):
            loop.add_reader(a, lambda i=i, a=a: (got.add(i), a.recv(10)))
        for _, b in pairs:
            b.send(b"x")
        run_until(loop, lambda: len(got) == 50)
        for a, _ in pairs:
            assert loop.remove_reader(a) is True
    finally:
        for a, b in pairs:
            close_socks(loop, a, b)


@pytest.mark.timeout(20)
def test_reader_wakes_a_sleeping_loop(loop, sockpair):
    a, b = sockpair
    far = loop.call_later(10, loop.stop)
    woke = []
    sent = []
    loop.add_reader(a, lambda: (woke.append(time.monotonic()), a.recv(10), loop.stop()))

    def sender():
        time.sleep(0.1)
        sent.append(time.monotonic())
        b.send(b"x")

    t = threading.Thread(target=sender)
    t.start()
    try:
        loop.run_forever()
    finally:
        t.join()
    far.cancel()
    assert loop.remove_reader(a) is True
    assert woke and woke[0] - sent[0] < 1.0


@pytest.mark.parametrize("method", ["add_reader", "add_writer"])
def test_add_on_a_closed_loop(loop, sockpair, method):
    a, _ = sockpair
    loop.close()
    with pytest.raises(RuntimeError, match="^Event loop is closed$"):
        getattr(loop, method)(a, print)


@pytest.mark.parametrize("method", ["remove_reader", "remove_writer"])
def test_remove_on_a_closed_loop(loop, sockpair, method):
    a, _ = sockpair
    loop.close()
    assert getattr(loop, method)(a) is False


@pytest.mark.parametrize("method", ["add_reader", "add_writer"])
@pytest.mark.parametrize(
    "bad",
    [object(), "not a file", 1.5, FileLike("x"), FileLike(None)],
    ids=["object", "str", "float", "fileno_returns_str", "fileno_returns_none"],
)
def test_invalid_file_object(loop, method, bad):
    with pytest.raises(ValueError, match="Invalid file object"):
        getattr(loop, method)(bad, print)


@pytest.mark.parametrize("method", ["remove_reader", "remove_writer"])
def test_remove_invalid_file_object(loop, method):
    with pytest.raises(ValueError, match="Invalid file object"):
        getattr(loop, method)(object())


@pytest.mark.parametrize("method", ["add_reader", "add_writer"])
@pytest.mark.parametrize("fd", [-1, FileLike(-1)], ids=["int", "fileno_object"])
def test_negative_fd(loop, method, fd):
    with pytest.raises(ValueError, match="Invalid file descriptor: -1"):
        getattr(loop, method)(fd, print)


@pytest.mark.parametrize("method", ["add_reader", "add_writer"])
def test_fd_that_is_not_open(loop, method):
    r, w = os.pipe()
    os.close(r)
    os.close(w)
    with pytest.raises(OSError) as info:
        getattr(loop, method)(r, print)
    assert info.value.errno == errno.EBADF
    assert loop.remove_reader(r) is False
    assert loop.remove_writer(r) is False


# ---------------------------------------------------------------------------
# Iteration semantics with I/O (asyncio.base_events._run_once)


def test_iteration_order_ready_then_io_then_timers(loop, sockpair):
    # One iteration runs what was ready, then the I/O callbacks of its poll, then
    # the timers that came due.
    a, b = sockpair
    out = []
    b.send(b"x")
    loop.add_reader(a, lambda: (out.append("io"), a.recv(10)))
    loop.call_at(loop.time() - 1, out.append, "timer")
    loop.call_soon(out.append, "soon")
    run_briefly(loop)
    assert out == ["soon", "io", "timer"]
    assert loop.remove_reader(a) is True


@pytest.mark.timeout(10)
def test_io_is_polled_every_iteration_while_callbacks_are_ready(loop, sockpair):
    # _run_once polls with timeout 0 whenever callbacks are ready, so a busy chain
    # of callbacks does not delay I/O: data sent in one iteration is seen by the
    # poll of the next one.
    a, b = sockpair
    spins = 0
    seen_at = []

    def spin():
        nonlocal spins
        spins += 1
        if not seen_at:
            loop.call_soon(spin)

    def on_readable():
        a.recv(10)
        seen_at.append(spins)
        loop.stop()

    loop.add_reader(a, on_readable)
    loop.call_soon(spin)
    loop.call_soon(b.send, b"y")  # runs in iteration 1, after spin #1
    guard = loop.call_later(5, loop.stop)
    loop.run_forever()
    guard.cancel()
    assert loop.remove_reader(a) is True
    # Iteration 2 runs spin #2, then the reader found by its poll.
    assert seen_at == [2]


# ---------------------------------------------------------------------------
# Level-triggered through EOF and errors, re-entrant changes, closed fds


@pytest.mark.timeout(10)
def test_reader_keeps_firing_at_eof(loop, sockpair):
    a, b = sockpair
    b.close()
    calls = []
    loop.add_reader(a, calls.append, "eof")
    run_briefly(loop, 5)
    assert loop.remove_reader(a) is True
    # asyncio's epoll is level-triggered: an fd at EOF stays readable.
    assert len(calls) == 5


@pytest.mark.timeout(10)
def test_writer_keeps_firing_when_peer_closed(loop, sockpair):
    a, b = sockpair
    b.close()
    calls = []
    loop.add_writer(a, calls.append, "hup")
    run_briefly(loop, 5)
    assert loop.remove_writer(a) is True
    assert len(calls) == 5


def reset_connection():
    """A connected TCP socket whose peer has reset the connection (RST)."""
    with socket.socket() as srv:
        srv.bind(("127.0.0.1", 0))
        srv.listen()
        client = socket.create_connection(srv.getsockname())
        peer, _ = srv.accept()
    client.setblocking(False)
    peer.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    peer.close()
    return client


@pytest.mark.timeout(10)
@pytest.mark.parametrize("method", ["add_reader", "add_writer"])
def test_watchers_fire_and_keep_firing_after_connection_reset(loop, method):
    sock = reset_connection()
    try:
        calls = []
        getattr(loop, method)(sock, calls.append, "err")
        run_briefly(loop, 5)
        assert getattr(loop, method.replace("add", "remove"))(sock) is True
        # The error condition is reported to the callback, every iteration, as
        # asyncio's level-triggered epoll does (the callback then sees the error
        # from recv/send).
        assert len(calls) == 5
        with pytest.raises(ConnectionResetError):
            sock.recv(10)
    finally:
        close_socks(loop, sock)


@pytest.mark.timeout(10)
def test_reader_reports_connection_reset(loop):
    sock = reset_connection()
    try:
        got = []

        def on_readable():
            try:
                got.append(sock.recv(10))
            except OSError as e:
                got.append(type(e))
            loop.remove_reader(sock)

        loop.add_reader(sock, on_readable)
        run_until(loop, lambda: got)
        assert got == [ConnectionResetError]
    finally:
        close_socks(loop, sock)


@pytest.mark.timeout(10)
def test_replacing_a_reader_from_its_own_callback(loop, sockpair):
    a, b = sockpair
    seq = []

    def first():
        seq.append("first")
        loop.add_reader(a, second)

    def second():
        seq.append("second")
        a.recv(10)
        loop.remove_reader(a)

    b.send(b"x")  # never read by first(): still readable for second()
    loop.add_reader(a, first)
    run_briefly(loop, 3)
    assert seq == ["first", "second"]
    assert loop.remove_reader(a) is False


@pytest.mark.timeout(10)
def test_reader_removed_and_added_again_from_its_own_callback(loop, sockpair):
    a, b = sockpair
    calls = []

    def cb():
        calls.append(1)
        assert loop.remove_reader(a) is True
        if len(calls) < 3:
            loop.add_reader(a, cb)

    b.send(b"x")
    loop.add_reader(a, cb)
    run_briefly(loop, 5)
    assert len(calls) == 3
    assert loop.remove_reader(a) is False


def test_reader_removing_another_ready_reader(loop):
    # Both fds are readable in the same iteration; whichever callback runs first
    # removes the other, which must then not run.
    p1, p2 = socket.socketpair(), socket.socketpair()
    try:
        p1[1].send(b"x")
        p2[1].send(b"x")
        ran = []
        loop.add_reader(p1[0], lambda: (ran.append(1), loop.remove_reader(p2[0])))
        loop.add_reader(p2[0], lambda: (ran.append(2), loop.remove_reader(p1[0])))
        run_briefly(loop)
        assert len(ran) == 1
        loop.remove_reader(p1[0])
        loop.remove_reader(p2[0])
    finally:
        close_socks(loop, *p1, *p2)


def test_close_with_active_watchers(loop, sockpair):
    a, _ = sockpair
    loop.add_reader(a, print)
    loop.add_writer(a, print)
    loop.close()
    assert loop.remove_reader(a) is False
    assert loop.remove_writer(a) is False


@pytest.mark.parametrize("method", ["add_reader", "add_writer"])
def test_regular_file_cannot_be_watched(loop, method, tmp_path):
    # epoll refuses regular files: asyncio raises PermissionError (EPERM).
    with open(tmp_path / "f", "wb") as f:
        with pytest.raises(PermissionError):
            getattr(loop, method)(f.fileno(), print)


def test_remove_reader_by_fd_after_the_fd_was_closed(loop, sockpair):
    a, b = sockpair
    fd = a.fileno()
    loop.add_reader(fd, print)
    a.close()
    assert loop.remove_reader(fd) is True
    run_briefly(loop)


def test_remove_reader_by_closed_socket_object(loop, sockpair):
    # asyncio's selector finds a closed socket (fileno() == -1) by identity.
    a, _ = sockpair
    fd = a.fileno()
    loop.add_reader(a, print)
    a.close()
    try:
        assert loop.remove_reader(a) is True
    finally:
        # Whatever happened, do not leave a watcher on the closed fd (see the
        # child-process test below for what that does).
        loop.remove_reader(fd)
    run_briefly(loop)


FD_CLOSED_WHILE_WATCHED = """
import asyncio, socket, sys
if sys.argv[1] == "fastloop":
    import fastloop
    loop = fastloop.new_event_loop()
else:
    loop = asyncio.new_event_loop()
a, b = socket.socketpair()
fd = a.fileno()
loop.add_reader(fd, print, "reader")
a.close()          # closed while still watched: asyncio tolerates it
loop.call_later(0.05, loop.stop)
loop.run_forever()
print("removed", loop.remove_reader(fd))
b.close()
loop.close()
print("survived")
"""


@pytest.mark.timeout(30)
def test_fd_closed_while_watched_does_not_crash(loop_name):
    # Run in a child process: a loop that aborts on this must not take the test
    # run down with it.
    out = subprocess.run(
        [sys.executable, "-c", FD_CLOSED_WHILE_WATCHED, loop_name],
        capture_output=True,
        text=True,
        timeout=20,
    )
    assert out.returncode == 0, f"rc={out.returncode} stderr:\n{out.stderr}"
    assert out.stdout.splitlines()[-2:] == ["removed True", "survived"]


@pytest.mark.timeout(10)
def test_reader_runs_in_a_copy_of_the_context_at_registration(loop, sockpair):
    a, b = sockpair
    var = contextvars.ContextVar("var", default="unset")
    seen = []

    def on_readable():
        a.recv(10)
        seen.append(var.get())
        var.set("changed by reader")

    token = var.set("at add_reader")
    try:
        loop.add_reader(a, on_readable)
        var.set("later")
        b.send(b"x")
        run_until(loop, lambda: seen)
        b.send(b"x")
        run_until(loop, lambda: len(seen) == 2)
        # Each call starts from the registration-time copy (asyncio's Handle
        # runs in the same copied Context every time, so the change persists).
        assert seen == ["at add_reader", "changed by reader"]
        assert var.get() == "later"
        assert loop.remove_reader(a) is True
    finally:
        var.reset(token)


@pytest.mark.timeout(20)
def test_fd_number_reused_by_a_connection_after_watching(loop):
    # Watch an fd, stop watching it, close it; the next connection usually
    # gets the same fd number. That connection must work: fastloop keeps
    # stopped watchers for reuse (and evicts one when a transport takes its
    # fd number), so watching must leave nothing behind that a new
    # connection on the same number would trip over.
    async def main():
        received = asyncio.Queue()

        async def handle(reader, writer):
            writer.write(await reader.readexactly(5))
            await writer.drain()
            writer.close()

        server = await asyncio.start_server(handle, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        for _ in range(3):
            a, b = socket.socketpair()
            a.setblocking(False)
            loop.add_reader(a, received.put_nowait, "spurious")
            loop.remove_reader(a)
            freed = a.fileno()
            a.close()
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            reused = writer.get_extra_info("socket").fileno() == freed
            writer.write(b"hello")
            assert await asyncio.wait_for(reader.readexactly(5), 5) == b"hello"
            writer.close()
            await writer.wait_closed()
            b.close()
        server.close()
        await server.wait_closed()
        assert received.empty()
        return reused

    loop.run_until_complete(main())
