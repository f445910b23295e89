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
import os
import socket
import struct
import termios
import tty

import pytest

from .netutil import Recorder, pattern, run, sha256, spin

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
