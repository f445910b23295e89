"""Pipe transports: connect_read_pipe / connect_write_pipe on the native stream.

The data path is the same native transport as TCP and Unix sockets
(cpp/stream.*) on a libuv pipe handle, in its pipe mode: end of input always
closes, write_eof() closes once the buffer drains, errors name a pipe.
Behaviour follows asyncio's unix_events pipe transports: the fd must be a
pipe, FIFO, socket or character device; connection_lost comes once; the pipe
object is closed after it.

libuv works on a duplicate of the pipe's fd and closes it; the pipe object
keeps its own fd, which the write side watches for readability: on a pipe or
socket, that means the reader has gone (asyncio's trick, kept here).
"""

from __future__ import annotations

import os
import stat
import warnings
from asyncio import base_events, transports

from ._transports import NativeFlowControl, NativeStreamBacked, _set_result_unless_cancelled

_Base = base_events.BaseEventLoop


def _pipe_fd(pipe, message: str) -> tuple[int, int]:
    """The pipe's fd and its mode; ValueError unless a pipe, socket or tty."""
    fileno = pipe.fileno()
    mode = os.fstat(fileno).st_mode
    if not (stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode) or stat.S_ISCHR(mode)):
        raise ValueError(message)
    return fileno, mode


class _PipeTransport(NativeStreamBacked):
    """What the read and write pipe transports share: the native object in pipe mode."""

    _pipe = None

    # The subclasses add theirs.
    _NATIVE_METHODS = (
        "close",
        "_force_close",
        "is_closing",
        "get_protocol",
        "set_protocol",
    )
    _WRITE_ONLY = False

    def _open_native(self, loop, pipe, fileno, protocol, waiter):
        native = self._bind_native(loop, "pipe")
        native._set_pipe_mode(self._WRITE_ONLY, fileno)
        self._pipe = pipe
        self._fileno = fileno
        # Looked up before the loop is asked for anything, as asyncio does.
        connection_made = protocol.connection_made
        fd = os.dup(fileno)
        try:
            native._open(fd)
        except BaseException:
            os.close(fd)  # libuv did not take it
            self._pipe = None
            raise
        native.set_protocol(protocol)
        loop.call_soon(connection_made, self)
        if waiter is not None:
            loop.call_soon(_set_result_unless_cancelled, waiter, None)

    def __del__(self, _warn=warnings.warn):
        # As asyncio's pipe transports: one never closed warns when collected.
        if self._pipe is not None:
            _warn(f"unclosed transport {self!r}", ResourceWarning, source=self)
            self._pipe.close()

    def _call_connection_lost(self, exc):
        """The protocol's connection_lost(exc), then the pipe is closed (as asyncio)."""
        try:
            self._native._call_connection_lost(exc)
        finally:
            pipe, self._pipe = self._pipe, None
            if pipe is not None:
                pipe.close()

    def __repr__(self):
        # asyncio's shape. A loop that closed under an open transport closed
        # its handle, but the transport was never closed: still "open".
        info = [type(self).__name__]
        if self._pipe is None:
            info.append("closed")
        elif self.is_closing() and not self._loop.is_closed():
            info.append("closing")
        info.append(f"fd={self._fileno}")
        info.append("closed" if self._pipe is None else "open")
        return "<{}>".format(" ".join(info))


class ReadPipeTransport(_PipeTransport, transports.ReadTransport):
    """asyncio's read pipe transport (unix_events._UnixReadPipeTransport)."""

    _NATIVE_METHODS = (
        *_PipeTransport._NATIVE_METHODS,
        "is_reading",
        "pause_reading",
        "resume_reading",
    )

    def __init__(self, loop, pipe, protocol, waiter=None, extra=None):
        super().__init__(extra)
        self._extra["pipe"] = pipe
        self._loop = loop
        fileno, _ = _pipe_fd(pipe, "Pipe transport is for pipes/sockets only.")
        self._open_native(loop, pipe, fileno, protocol, waiter)
        loop.call_soon(self._native._start_reading)


class WritePipeTransport(
    _PipeTransport, NativeFlowControl, transports._FlowControlMixin, transports.WriteTransport
):
    """asyncio's write pipe transport (unix_events._UnixWritePipeTransport)."""

    _WRITE_ONLY = True
    _NATIVE_METHODS = (
        *_PipeTransport._NATIVE_METHODS,
        "write",
        "writelines",
        "write_eof",
        "abort",
        "get_write_buffer_size",
    )

    def __init__(self, loop, pipe, protocol, waiter=None, extra=None):
        super().__init__(extra, loop)
        self._extra["pipe"] = pipe
        fileno, mode = _pipe_fd(
            pipe, "Pipe transport is only for pipes, sockets and character devices"
        )
        self._watching_peer = False
        self._open_native(loop, pipe, fileno, protocol, waiter)
        # Readable means the reader has gone, on a pipe or a socket (a tty
        # would deliver input instead, so it is not watched).
        if stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode):
            self._watching_peer = True
            loop.call_soon(self._watch_peer)

    def _watch_peer(self):
        if self._watching_peer and self._pipe is not None:
            self._loop._add_reader(self._fileno, self._peer_gone)

    def _stop_watching_peer(self):
        if self._watching_peer:
            self._watching_peer = False
            self._loop._remove_reader(self._fileno)

    def _peer_gone(self):
        self._stop_watching_peer()
        self._force_close(BrokenPipeError() if self.get_write_buffer_size() else None)

    def can_write_eof(self):
        return True

    def _call_connection_lost(self, exc):
        self._stop_watching_peer()
        super()._call_connection_lost(exc)


class PipeMethods:
    """connect_read_pipe / connect_write_pipe: asyncio's, making our transports."""

    connect_read_pipe = _Base.connect_read_pipe
    connect_write_pipe = _Base.connect_write_pipe

    def _make_read_pipe_transport(self, pipe, protocol, waiter=None, extra=None):
        return ReadPipeTransport(self, pipe, protocol, waiter, extra)

    def _make_write_pipe_transport(self, pipe, protocol, waiter=None, extra=None):
        return WritePipeTransport(self, pipe, protocol, waiter, extra)
