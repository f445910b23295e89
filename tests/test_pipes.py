"""Pipe transports: loop.connect_read_pipe / loop.connect_write_pipe.

Covered: the read pipe's data / EOF / connection_lost sequence, pause_reading and
resume_reading; the write pipe's write / writelines / write_eof / close (flushing) /
abort (discarding), its buffer size and limits with pause_writing / resume_writing, and
what it reports when the reading end goes away (with and without buffered data);
connection_lost exactly once however a transport ends; get_extra_info("pipe"); FIFOs,
ptys (both ends) and sockets as pipes, regular files refused; 64 MiB from a write pipe
into a read pipe on the same loop; a StreamReader over a read pipe.
"""

import asyncio
import errno
import fcntl
import hashlib
import json
import os
import socket
import struct
import sys
import termios
import tty

import pytest

from .netutil import (
    CTX_VAR,
    ContextRecorder,
    Recorder,
    child_stdout,
    pattern,
    run,
    run_child,
    sha256,
    spin,
)

pytestmark = pytest.mark.timeout(30)

KiB = 1024
MiB = 1024 * KiB


class OwnedFds:
    """The raw fds a test owns. Each is closed once: through ``close``, by the file
    object ``wrap`` hands it to (and so by the transport given that file), or at
    teardown if still owned. (Closing a number twice could close an fd that has
    since been reused by someone else, the loop for one.)"""

    def __init__(self):
        self._owned = []

    def own(self, *fds):
        self._owned.extend(fds)
        return fds

    def pipe(self):
        return self.own(*os.pipe())

    def wrap(self, fd, mode):
        """An unbuffered file object over ``fd``, which from now on owns it."""
        self._owned.remove(fd)
        return open(fd, mode, buffering=0)

    def close(self, fd):
        self._owned.remove(fd)
        os.close(fd)

    def close_all(self):
        while self._owned:
            os.close(self._owned.pop())


@pytest.fixture
def fds():
    owned = OwnedFds()
    yield owned
    owned.close_all()


@pytest.fixture
def pipe_fds(fds):
    return fds.pipe()


def bytes_in_pipe(fd):
    """How many bytes wait in the pipe / tty whose end ``fd`` is (FIONREAD)."""
    return struct.unpack("i", fcntl.ioctl(fd, termios.FIONREAD, b"\0\0\0\0"))[0]


async def read_fd(fd, n, timeout=10.0):
    """Read exactly ``n`` bytes from the non-blocking ``fd``, polling (less at EOF)."""
    os.set_blocking(fd, False)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    chunks = []
    got = 0
    while got < n:
        try:
            chunk = os.read(fd, min(n - got, MiB))
        except BlockingIOError:
            if loop.time() > deadline:
                raise AssertionError(f"only {got} of {n} bytes arrived") from None
            await asyncio.sleep(0.001)
            continue
        if not chunk:
            break
        chunks.append(chunk)
        got += len(chunk)
    return b"".join(chunks)


async def read_until_eof(fd, timeout=10.0):
    os.set_blocking(fd, False)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    chunks = []
    while True:
        try:
            chunk = os.read(fd, MiB)
        except BlockingIOError:
            if loop.time() > deadline:
                raise AssertionError("no EOF in time") from None
            await asyncio.sleep(0.001)
            continue
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)


# -- read pipes --------------------------------------------------------------------------


def test_read_pipe_data_eof_then_lost(loop, fds, pipe_fds):
    r, w = pipe_fds

    async def main():
        rf = fds.wrap(r, "rb")
        tr, pr = await loop.connect_read_pipe(Recorder, rf)
        assert tr.get_extra_info("pipe") is rf
        assert tr.get_protocol() is pr
        assert (tr.is_reading(), tr.is_closing()) == (True, False)
        assert pr.events == ["made"]
        os.write(w, b"hello ")
        os.write(w, b"pipe")
        await pr.wait_bytes(10)
        fds.close(w)
        lost = await asyncio.wait_for(pr.lost, 5)
        await spin()
        return lost, bytes(pr.data), pr.events, pr.lost_calls, rf.closed, tr.is_closing()

    assert run(loop, main()) == (
        None,
        b"hello pipe",
        ["made", "data", "eof", "lost"],
        [None],
        True,
        True,
    )


def test_read_pipe_close(loop, fds, pipe_fds):
    r, w = pipe_fds

    async def main():
        rf = fds.wrap(r, "rb")
        tr, pr = await loop.connect_read_pipe(Recorder, rf)
        tr.close()
        assert (tr.is_closing(), tr.is_reading()) == (True, False)
        tr.close()  # a second close() is a no-op
        lost = await asyncio.wait_for(pr.lost, 5)
        await spin()
        # The writer now has no reader.
        with pytest.raises(BrokenPipeError):
            os.write(w, b"x")
        return lost, pr.events, pr.lost_calls, rf.closed

    assert run(loop, main()) == (None, ["made", "lost"], [None], True)


def test_read_pipe_pause_and_resume_reading(loop, fds, pipe_fds):
    r, w = pipe_fds

    async def main():
        tr, pr = await loop.connect_read_pipe(Recorder, fds.wrap(r, "rb"))
        try:
            tr.pause_reading()
            tr.pause_reading()  # pausing twice is harmless
            assert tr.is_reading() is False
            os.write(w, b"while paused")
            await asyncio.sleep(0.1)
            paused_data = bytes(pr.data)
            tr.resume_reading()
            tr.resume_reading()
            assert tr.is_reading() is True
            got = await pr.wait_bytes(12)
            return paused_data, got, list(pr.events)
        finally:
            tr.close()
            await asyncio.wait_for(pr.lost, 5)

    assert run(loop, main()) == (b"", b"while paused", ["made", "data"])


def test_stream_reader_over_read_pipe(loop, fds, pipe_fds):
    r, w = pipe_fds

    async def main():
        reader = asyncio.StreamReader()
        protocol = asyncio.StreamReaderProtocol(reader)
        tr, pr = await loop.connect_read_pipe(lambda: protocol, fds.wrap(r, "rb"))
        assert pr is protocol
        os.write(w, b"first line\nsecond ")
        lines = [await reader.readline()]
        os.write(w, b"line\nno newline")
        lines.append(await reader.readline())
        fds.close(w)
        lines.append(await reader.readline())
        lines.append(await reader.readline())
        await spin()
        return lines, reader.at_eof(), tr.is_closing()

    assert run(loop, main()) == (
        [b"first line\n", b"second line\n", b"no newline", b""],
        True,
        True,
    )


# -- write pipes ---------------------------------------------------------------------------


def test_write_pipe_write_and_write_eof(loop, fds, pipe_fds):
    r, w = pipe_fds

    async def main():
        wf = fds.wrap(w, "wb")
        tr, pr = await loop.connect_write_pipe(Recorder, wf)
        assert tr.get_extra_info("pipe") is wf
        assert tr.get_protocol() is pr
        assert tr.can_write_eof() is True
        tr.write(b"abc")
        tr.writelines([b"de", bytearray(b"f"), memoryview(b"gh")])
        assert tr.get_write_buffer_size() == 0
        tr.write_eof()
        assert tr.is_closing()
        lost = await asyncio.wait_for(pr.lost, 5)
        await spin()
        return lost, await read_until_eof(r), pr.events, pr.lost_calls, wf.closed

    assert run(loop, main()) == (None, b"abcdefgh", ["made", "lost"], [None], True)


def test_write_pipe_close_flushes_the_buffer_first(loop, fds, pipe_fds):
    r, w = pipe_fds
    data = pattern(MiB, seed=1)

    async def main():
        wf = fds.wrap(w, "wb")
        tr, pr = await loop.connect_write_pipe(Recorder, wf)
        tr.write(data)
        buffered = tr.get_write_buffer_size()
        tr.close()
        tr.close()
        await asyncio.sleep(0.05)
        # Nobody read yet: the buffered data keeps the transport open.
        still_open = (pr.lost.done(), wf.closed)
        received = await read_until_eof(r)
        lost = await asyncio.wait_for(pr.lost, 5)
        await spin()
        return buffered > 0, still_open, sha256(received), lost, pr.lost_calls, wf.closed

    assert run(loop, main()) == (True, (False, False), sha256(data), None, [None], True)


def test_write_pipe_abort_discards_the_buffer(loop, fds, pipe_fds):
    r, w = pipe_fds
    data = pattern(MiB, seed=2)

    async def main():
        wf = fds.wrap(w, "wb")
        tr, pr = await loop.connect_write_pipe(Recorder, wf)
        tr.write(data)
        in_pipe = bytes_in_pipe(r)
        assert tr.get_write_buffer_size() == len(data) - in_pipe
        tr.abort()
        assert tr.is_closing()
        lost = await asyncio.wait_for(pr.lost, 5)
        await spin()
        # Only what had reached the pipe arrives, then EOF.
        received = await read_until_eof(r)
        return (
            lost,
            pr.lost_calls,
            wf.closed,
            tr.get_write_buffer_size(),
            received == data[:in_pipe],
        )

    assert run(loop, main()) == (None, [None], True, 0, True)


def test_write_pipe_abort_empties_the_buffer_at_once(loop, fds, pipe_fds):
    r, w = pipe_fds

    async def main():
        tr, pr = await loop.connect_write_pipe(Recorder, fds.wrap(w, "wb"))
        tr.write(b"x" * MiB)
        before = tr.get_write_buffer_size()
        tr.abort()
        # asyncio drops the buffer in abort() itself, not when connection_lost runs.
        after = tr.get_write_buffer_size()
        await asyncio.wait_for(pr.lost, 5)
        return before > 0, after

    assert run(loop, main()) == (True, 0)


def test_write_pipe_buffer_size_and_flow_control(loop, fds, pipe_fds):
    r, w = pipe_fds
    data = pattern(MiB, seed=3)
    high, low = 256 * KiB, 64 * KiB

    async def main():
        tr, pr = await loop.connect_write_pipe(Recorder, fds.wrap(w, "wb"))
        try:
            tr.set_write_buffer_limits(high=high, low=low)
            limits = tr.get_write_buffer_limits()
            for off in range(0, len(data), 64 * KiB):
                tr.write(data[off : off + 64 * KiB])
            # What the kernel took plus what the transport holds is everything written.
            accounted = tr.get_write_buffer_size() + bytes_in_pipe(r)
            events_full = list(pr.events)
            received = await read_fd(r, len(data))
            await asyncio.wait_for(_until(lambda: pr.resumes), 5)
            return limits, accounted, events_full, sha256(received), pr.pauses, pr.resumes
        finally:
            tr.close()
            await asyncio.wait_for(pr.lost, 5)

    limits, accounted, events_full, digest, pauses, resumes = run(loop, main())
    assert limits == (low, high)
    assert accounted == len(data)
    assert events_full == ["made", "pause_writing"]
    assert digest == sha256(data)
    assert len(pauses) == 1 and pauses[0] > high
    assert len(resumes) == 1 and resumes[0] <= low


async def _until(predicate):
    while not predicate():
        await asyncio.sleep(0.001)


def test_set_write_buffer_limits_rejects_low_above_high(loop, fds, pipe_fds):
    r, w = pipe_fds

    async def main():
        tr, pr = await loop.connect_write_pipe(Recorder, fds.wrap(w, "wb"))
        try:
            with pytest.raises(ValueError):
                tr.set_write_buffer_limits(high=10, low=20)
            tr.set_write_buffer_limits(high=100)
            return tr.get_write_buffer_limits()
        finally:
            tr.close()
            await asyncio.wait_for(pr.lost, 5)

    assert run(loop, main()) == (25, 100)


def test_write_pipe_reader_closes_with_empty_buffer(loop, fds, pipe_fds):
    # asyncio watches the write end for readability: the read end closing wakes it,
    # and with nothing buffered the transport just closes (connection_lost(None)).
    r, w = pipe_fds

    async def main():
        wf = fds.wrap(w, "wb")
        tr, pr = await loop.connect_write_pipe(Recorder, wf)
        tr.write(b"read before the close")
        assert await read_fd(r, 21) == b"read before the close"
        fds.close(r)
        lost = await asyncio.wait_for(pr.lost, 5)
        tr.write(b"ignored after the loss")  # no exception, no handler call
        await spin()
        return lost, pr.lost_calls, pr.events, wf.closed, tr.is_closing()

    assert run(loop, main()) == (None, [None], ["made", "lost"], True, True)


def test_write_pipe_reader_closes_with_buffered_data(loop, fds, pipe_fds):
    r, w = pipe_fds

    async def main():
        wf = fds.wrap(w, "wb")
        tr, pr = await loop.connect_write_pipe(Recorder, wf)
        tr.write(b"x" * MiB)
        assert tr.get_write_buffer_size() > 0
        fds.close(r)
        lost = await asyncio.wait_for(pr.lost, 5)
        tr.write(b"ignored after the loss")
        await spin()
        return type(lost), pr.lost_calls == [lost], pr.events, wf.closed

    assert run(loop, main()) == (
        BrokenPipeError,
        True,
        ["made", "pause_writing", "lost"],
        True,
    )


def test_write_pipe_abort_and_close_after_lost_call_connection_lost_once(loop, fds, pipe_fds):
    r, w = pipe_fds

    async def main():
        tr, pr = await loop.connect_write_pipe(Recorder, fds.wrap(w, "wb"))
        tr.abort()
        await asyncio.wait_for(pr.lost, 5)
        tr.close()  # the transport is already closed: nothing more happens
        await spin()
        return pr.lost_calls, pr.events

    assert run(loop, main()) == ([None], ["made", "lost"])


# -- 64 MiB from a write pipe into a read pipe -------------------------------------------


class HashingReader(asyncio.Protocol):
    def __init__(self):
        self.hash = hashlib.sha256()
        self.size = 0
        self.events = []
        self.lost = asyncio.get_running_loop().create_future()

    def connection_made(self, transport):
        self.events.append("made")

    def data_received(self, data):
        self.hash.update(data)
        self.size += len(data)

    def eof_received(self):
        self.events.append("eof")

    def connection_lost(self, exc):
        self.events.append("lost")
        self.lost.set_result(exc)


class DrainingWriter(asyncio.Protocol):
    def __init__(self):
        self.can_write = asyncio.Event()
        self.can_write.set()
        self.pauses = 0
        self.lost = asyncio.get_running_loop().create_future()

    def pause_writing(self):
        self.pauses += 1
        self.can_write.clear()

    def resume_writing(self):
        self.can_write.set()

    def connection_lost(self, exc):
        self.lost.set_result(exc)


@pytest.mark.timeout(60)
def test_64mib_write_pipe_to_read_pipe(loop, fds, pipe_fds):
    r, w = pipe_fds
    data = pattern(64 * MiB, seed=7)

    async def main():
        rtr, rpr = await loop.connect_read_pipe(HashingReader, fds.wrap(r, "rb"))
        wtr, wpr = await loop.connect_write_pipe(DrainingWriter, fds.wrap(w, "wb"))
        view = memoryview(data)
        for off in range(0, len(data), MiB):
            await wpr.can_write.wait()
            wtr.write(view[off : off + MiB])
        wtr.close()
        wlost = await asyncio.wait_for(wpr.lost, 30)
        rlost = await asyncio.wait_for(rpr.lost, 30)
        return wlost, rlost, rpr.size, rpr.hash.hexdigest(), rpr.events, wpr.pauses > 0

    assert run(loop, main(), timeout=50) == (
        None,
        None,
        len(data),
        sha256(data),
        ["made", "eof", "lost"],
        True,
    )


# -- other kinds of "pipe" ---------------------------------------------------------------


def test_fifo(loop, tmp_path, fds):
    path = tmp_path / "fifo"
    os.mkfifo(path)
    (r,) = fds.own(os.open(path, os.O_RDONLY | os.O_NONBLOCK))
    (w,) = fds.own(os.open(path, os.O_WRONLY))  # does not block: there is a reader

    async def main():
        rtr, rpr = await loop.connect_read_pipe(Recorder, fds.wrap(r, "rb"))
        wtr, wpr = await loop.connect_write_pipe(Recorder, fds.wrap(w, "wb"))
        wtr.write(b"through a fifo")
        got = await rpr.wait_bytes(14)
        wtr.write_eof()
        lost = await asyncio.gather(asyncio.wait_for(wpr.lost, 5), asyncio.wait_for(rpr.lost, 5))
        await spin()
        return got, lost, rpr.events, wpr.events, rpr.lost_calls, wpr.lost_calls

    assert run(loop, main()) == (
        b"through a fifo",
        [None, None],
        ["made", "data", "eof", "lost"],
        ["made", "lost"],
        [None],
        [None],
    )


@pytest.fixture
def pty_fds(fds):
    master, slave = fds.own(*os.openpty())
    tty.setraw(slave)  # no echo, no line editing, no output post-processing
    return master, slave


def test_pty_tty_end_as_read_pipe(loop, fds, pty_fds):
    master, slave = pty_fds

    async def main():
        sf = fds.wrap(slave, "rb")
        tr, pr = await loop.connect_read_pipe(Recorder, sf)
        assert tr.get_extra_info("pipe") is sf
        os.write(master, b"typed at the terminal")
        got = await pr.wait_bytes(21)
        tr.close()
        lost = await asyncio.wait_for(pr.lost, 5)
        await spin()
        return got, lost, pr.events, pr.lost_calls, sf.closed

    assert run(loop, main()) == (
        b"typed at the terminal",
        None,
        ["made", "data", "lost"],
        [None],
        True,
    )


def test_pty_tty_end_as_write_pipe(loop, fds, pty_fds):
    master, slave = pty_fds

    async def main():
        sf = fds.wrap(slave, "wb")
        tr, pr = await loop.connect_write_pipe(Recorder, sf)
        tr.write(b"printed on the terminal\n")
        got = await read_fd(master, 24)
        tr.close()
        lost = await asyncio.wait_for(pr.lost, 5)
        await spin()
        return got, lost, pr.events, pr.lost_calls, sf.closed

    assert run(loop, main()) == (
        b"printed on the terminal\n",
        None,
        ["made", "lost"],
        [None],
        True,
    )


def test_pty_master_read_pipe_ends_with_eio(loop, fds, pty_fds):
    # Once the tty end is closed, reading the master fails with EIO. asyncio treats
    # that as the end of the stream: connection_lost(OSError(EIO)), no eof_received,
    # and no call of the exception handler.
    master, slave = pty_fds

    async def main():
        tr, pr = await loop.connect_read_pipe(Recorder, fds.wrap(master, "rb"))
        os.write(slave, b"last words")
        got = await pr.wait_bytes(10)
        fds.close(slave)
        lost = await asyncio.wait_for(pr.lost, 5)
        await spin()
        return got, type(lost), lost.errno, pr.events, len(pr.lost_calls)

    assert run(loop, main()) == (
        b"last words",
        OSError,
        errno.EIO,
        ["made", "data", "lost"],
        1,
    )


def test_socket_as_read_pipe(loop):
    a, b = socket.socketpair()

    async def main():
        try:
            tr, pr = await loop.connect_read_pipe(Recorder, a)
            assert tr.get_extra_info("pipe") is a
            b.sendall(b"over a socketpair")
            got = await pr.wait_bytes(17)
            b.shutdown(socket.SHUT_WR)
            lost = await asyncio.wait_for(pr.lost, 5)
            await spin()
            return got, lost, pr.events, pr.lost_calls, a.fileno()
        finally:
            b.close()

    assert run(loop, main()) == (
        b"over a socketpair",
        None,
        ["made", "data", "eof", "lost"],
        [None],
        -1,  # the transport closed the socket
    )


def test_socket_as_write_pipe(loop):
    a, b = socket.socketpair()

    async def main():
        try:
            tr, pr = await loop.connect_write_pipe(Recorder, a)
            assert tr.get_extra_info("pipe") is a
            tr.write(b"written to a socket")
            b.setblocking(False)
            got = await loop.sock_recv(b, 100)
            # The peer closing is noticed, as for a pipe.
            b.close()
            lost = await asyncio.wait_for(pr.lost, 5)
            await spin()
            return got, lost, pr.events, pr.lost_calls, a.fileno()
        finally:
            b.close()

    assert run(loop, main()) == (b"written to a socket", None, ["made", "lost"], [None], -1)


@pytest.mark.parametrize("direction", ["read", "write"])
def test_regular_file_is_refused(loop, tmp_path, direction):
    path = tmp_path / "regular"
    path.write_bytes(b"not a pipe")
    messages = {
        "read": "Pipe transport is for pipes/sockets only.",
        "write": "Pipe transport is only for pipes, sockets and character devices",
    }

    async def main():
        with open(path, "rb" if direction == "read" else "ab", buffering=0) as f:
            connect = loop.connect_read_pipe if direction == "read" else loop.connect_write_pipe
            with pytest.raises(ValueError) as info:
                await connect(Recorder, f)
            # The file is left to its owner, still open and blocking.
            return str(info.value), f.closed, os.get_blocking(f.fileno())

    assert run(loop, main()) == (messages[direction], False, True)


# -- character devices that cannot be polled (issue 9, item 3) ---------------------------

# The child connects a pipe transport to the device (or a pty's tty end), lets the loop
# run, closes the transport and prints, as JSON: the protocol's calls, the exception
# handler's calls as [exception class, errno], is_closing() before close(), and whether
# a timer due after all that still ran.
CHAR_DEVICE_CHILD = r"""
import json, os

direction, path = sys.argv[2], sys.argv[3]
loop = new_loop()
handler = []
loop.set_exception_handler(
    lambda lp, ctx: handler.append(
        [type(ctx.get("exception")).__name__, getattr(ctx.get("exception"), "errno", None)]
    )
)
events = []


class P(asyncio.Protocol):
    def __init__(self):
        self.lost = loop.create_future()

    def connection_made(self, transport):
        events.append("made")

    def data_received(self, data):
        events.append("data")

    def eof_received(self):
        events.append("eof")

    def connection_lost(self, exc):
        events.append(f"lost {exc!r}")
        self.lost.set_result(None)


async def main():
    if path == "tty":
        master, slave = os.openpty()
        f = open(slave, "wb", buffering=0)
    else:
        f = open(path, "rb" if direction == "read" else "wb", buffering=0)
    if direction == "read":
        tr, pr = await loop.connect_read_pipe(P, f)
    else:
        tr, pr = await loop.connect_write_pipe(P, f)
        tr.write(b"abc")
    await asyncio.sleep(0.1)
    closing = tr.is_closing()
    tr.close()
    await asyncio.wait_for(pr.lost, 5)
    ran = loop.create_future()
    loop.call_later(0.01, ran.set_result, True)
    return closing, await ran


closing, timer_ran = loop.run_until_complete(main())
loop.close()
print(json.dumps({"events": events, "handler": handler, "closing": closing, "timer": timer_ran}))
"""


@pytest.mark.parametrize(
    "direction, path",
    [
        ("read", os.devnull),
        ("read", "/dev/zero"),
        ("write", os.devnull),
        ("write", "/dev/zero"),
        ("write", "tty"),
    ],
)
def test_character_device_as_pipe(loop_name, direction, path):
    """issue 9, item 3: a read pipe on /dev/null or /dev/zero (which epoll refuses with
    EPERM) made fastloop abort inside libuv (so: a child process). asyncio makes the
    transport, reports the error to the exception handler (the reader could not be
    added) and goes on: the transport closes normally and the loop keeps running.
    Write pipes on these devices and on a tty just work on both loops."""
    if path == "tty" and not hasattr(os, "openpty"):
        pytest.skip("no os.openpty here")
    out = run_child(loop_name, CHAR_DEVICE_CHILD, direction, path)
    result = json.loads(child_stdout(out))
    handler = [["PermissionError", errno.EPERM]] if direction == "read" else []
    assert result == {
        "events": ["made", "lost None"],
        "handler": handler,
        "closing": False,
        "timer": True,
    }


# -- errors from protocol callbacks (issue 9, item 7) ------------------------------------


def test_read_pipe_data_received_error_is_reported_and_reading_goes_on(
    loop, exc_handler_calls, fds, pipe_fds
):
    """issue 9, item 7: data_received raising on a read pipe is not fatal (asyncio calls
    the protocol from the reader's Handle: the exception handler gets it, with
    "message" and "exception" (asyncio adds the "handle"), and the next chunk is
    delivered as usual). fastloop closed the pipe: the writer got BrokenPipeError."""
    r, w = pipe_fds
    boom = ZeroDivisionError("boom")

    class P(Recorder):
        def data_received(self, data):
            super().data_received(data)
            raise boom

    async def main():
        tr, pr = await loop.connect_read_pipe(P, fds.wrap(r, "rb"))
        for i in range(5):
            os.write(w, b"chunk%d;" % i)
            await pr.wait_bytes(7 * (i + 1))
        still_open = (tr.is_closing(), pr.lost.done())
        fds.close(w)
        lost = await asyncio.wait_for(pr.lost, 5)
        return bytes(pr.data), still_open, lost

    data, still_open, lost = run(loop, main())
    assert data == b"chunk0;chunk1;chunk2;chunk3;chunk4;"
    assert still_open == (False, False)
    assert lost is None
    assert len(exc_handler_calls) == 5
    assert all(ctx["exception"] is boom and "message" in ctx for ctx in exc_handler_calls)
    exc_handler_calls.clear()


# -- the context protocol callbacks run in (issue 9, item 12) ----------------------------


def test_read_pipe_callbacks_run_in_the_context_of_connect_read_pipe(loop, fds, pipe_fds):
    """issue 9, item 12: a read pipe's protocol callbacks run in a copy of the context
    current when connect_read_pipe() was called (asyncio: the reader's Handle is made
    then), not in whatever context is current later."""
    r, w = pipe_fds

    async def main():
        CTX_VAR.set("at connect_read_pipe")
        tr, pr = await loop.connect_read_pipe(ContextRecorder, fds.wrap(r, "rb"))
        CTX_VAR.set("later")
        os.write(w, b"data")
        await pr.wait_bytes(4)
        fds.close(w)
        await asyncio.wait_for(pr.lost, 5)
        return pr.ctx

    assert run(loop, main()) == dict.fromkeys(
        ["made", "data", "eof", "lost"], "at connect_read_pipe"
    )


def test_subprocess_pipe_data_received_runs_in_the_context_of_subprocess_exec(loop):
    """issue 9, item 12: a subprocess protocol's connection_made and pipe_data_received
    run in a copy of the context current when subprocess_exec() was called.
    (process_exited is left out: asyncio 3.11 calls it from its child watcher, in
    whatever context that has.)"""

    class P(asyncio.SubprocessProtocol):
        def __init__(self):
            self.ctx = {}
            self.exited = asyncio.get_running_loop().create_future()

        def connection_made(self, transport):
            self.ctx.setdefault("made", CTX_VAR.get())

        def pipe_data_received(self, fd, data):
            self.ctx.setdefault("pipe_data", CTX_VAR.get())

        def process_exited(self):
            self.exited.set_result(None)

    async def main():
        CTX_VAR.set("at subprocess_exec")
        tr, pr = await loop.subprocess_exec(
            P, sys.executable, "-c", "print('hi')", stdin=None, stdout=-1, stderr=None
        )
        CTX_VAR.set("later")
        try:
            await asyncio.wait_for(pr.exited, 20)
            await asyncio.sleep(0.05)
        finally:
            tr.close()
        return pr.ctx

    assert run(loop, main(), timeout=30) == {
        "made": "at subprocess_exec",
        "pipe_data": "at subprocess_exec",
    }
