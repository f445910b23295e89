"""Stream transports and listeners: the Python half of cpp/stream.* and cpp/server.*.

The native classes carry the data path (reads, writes, flow control,
closing); these subclasses add what asyncio's transports keep in Python:
extra info, the repr, the server bookkeeping and the accept path.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import socket
import warnings
from asyncio import base_events, constants, sslproto, transports, trsock

from . import _core

logger = logging.getLogger("asyncio")

# Python 3.13 passes the transport to Server._attach/_detach (close_clients).
_SERVER_TRACKS_TRANSPORTS = len(inspect.signature(base_events.Server._attach).parameters) > 1

_RESOURCE_ERRNOS = frozenset(
    getattr(__import__("errno"), name) for name in ("EMFILE", "ENFILE", "ENOBUFS", "ENOMEM")
)


def _server_attach(server, transport) -> None:
    if _SERVER_TRACKS_TRANSPORTS:
        server._attach(transport)
    else:
        server._attach()


def _server_detach(server, transport) -> None:
    if _SERVER_TRACKS_TRANSPORTS:
        server._detach(transport)
    else:
        server._detach()


def _transport_error(transport, exc, message, fatal) -> None:
    """Report an error of a transport as asyncio's _fatal_error does."""
    loop = transport._loop
    if fatal and isinstance(exc, OSError):
        # Connection errors are the peer's doing: logged in debug mode only.
        if loop.get_debug():
            logger.debug("%r: %s", transport, message, exc_info=exc)
        return
    loop.call_exception_handler(
        {
            "message": message,
            "exception": exc,
            "transport": transport,
            "protocol": transport.get_protocol(),
        }
    )


def _socket_extra(sock, extra=None) -> dict:
    info = dict(extra) if extra else {}
    info["socket"] = trsock.TransportSocket(sock)
    try:
        info["sockname"] = sock.getsockname()
    except OSError:
        info["sockname"] = None
    if "peername" not in info:
        try:
            info["peername"] = sock.getpeername()
        except OSError:
            info["peername"] = None
    return info


# A class attribute serving the native object's method of the same name
# (cpp/bindings/native_method.cpp): nothing per instance, no bound object per call.
NativeMethod = _core.NativeMethod


class NativeStreamBacked:
    """What every transport on a _core.StreamTransport shares (sockets, pipes).

    The native object's methods are NativeMethod class attributes (or, for
    the classes that list them in _NATIVE_METHODS, bound onto each instance),
    so a call such as transport.write(data) goes straight to it. While its
    libuv handle is open, the loop keeps the native object alive, and the
    native object keeps this one (cpp/owner.hpp).
    """

    _NATIVE_METHODS: tuple[str, ...] = ()
    _native = None

    def _bind_native(self, loop, kind):
        native = self._native = _core.StreamTransport(loop, kind)
        for name in self._NATIVE_METHODS:
            setattr(self, name, getattr(native, name))
        native._set_transport(self)
        return native


class NativeFlowControl:
    """Write flow control of a transport on a _core.StreamTransport.

    The limits are computed and checked by asyncio's own _FlowControlMixin
    (so every Python version's rules and messages apply) and kept in its
    slots for get_write_buffer_limits; the native side gets a copy.
    """

    def set_write_buffer_limits(self, high=None, low=None):
        self._set_write_buffer_limits(high=high, low=low)
        self._native._set_limits(self._high_water, self._low_water)

    def get_write_buffer_limits(self):
        return (self._low_water, self._high_water)

    # _FlowControlMixin keeps this in a slot; the native side owns the state.
    @property
    def _protocol_paused(self):
        return self._native._protocol_paused()

    @_protocol_paused.setter
    def _protocol_paused(self, value):
        pass  # _FlowControlMixin.__init__ sets it; the native state wins


class StreamTransport(NativeStreamBacked, NativeFlowControl, transports._FlowControlMixin):
    """A TCP or Unix stream transport: an asyncio.Transport on fastloop's core.

    The native object (_core.StreamTransport) does the work.
    """

    _start_tls_compatible = True
    _sendfile_compatible = constants._SendfileMode.TRY_NATIVE

    write = NativeMethod()
    writelines = NativeMethod()
    is_closing = NativeMethod()
    get_write_buffer_size = NativeMethod()
    write_eof = NativeMethod()
    can_write_eof = NativeMethod()
    close = NativeMethod()
    abort = NativeMethod()
    _force_close = NativeMethod()
    is_reading = NativeMethod()
    pause_reading = NativeMethod()
    resume_reading = NativeMethod()
    set_protocol = NativeMethod()
    get_protocol = NativeMethod()
    _start_reading = NativeMethod()
    _call_connection_lost = NativeMethod()
    _fileno = NativeMethod()
    _set_socket = NativeMethod()
    _set_server = NativeMethod()
    _open = NativeMethod()
    _make_empty_waiter = NativeMethod()
    _reset_empty_waiter = NativeMethod()

    def __init__(self, loop, kind):
        super().__init__(loop=loop)
        self._sock = None
        self._bind_native(loop, kind)

    def __del__(self, _warn=warnings.warn):
        # As asyncio's transports: one never closed warns when it is collected
        # (its handle was closed by loop.close(), or it could not be collected).
        native = self._native
        if native is not None and native._unclosed():
            _warn(f"unclosed transport {self!r}", ResourceWarning, source=self)

    def _start(self, sock, protocol, extra, server, waiter, connection_made=None):
        """Begin as asyncio's transports do: connection_made, then reading."""
        if connection_made is None:
            connection_made = protocol.connection_made
        self._sock = sock
        self._set_socket(sock)
        self._extra = extra
        self.set_protocol(protocol)
        if server is not None:
            _server_attach(server, self)
            self._set_server(server)
        loop = self._loop
        loop._transports[sock.fileno()] = self
        loop.call_soon(connection_made, self)
        loop.call_soon(self._start_reading)
        if waiter is not None:
            loop.call_soon(_set_result_unless_cancelled, waiter, None)

    def __repr__(self):
        info = [type(self).__name__]
        if self.is_closing():
            info.append("closing")
        info.append(f"fd={self._fileno()}")
        info.append(f"read={'polling' if self.is_reading() else 'idle'}")
        info.append(f"write=<bufsize={self.get_write_buffer_size()}>")
        return "<{}>".format(" ".join(info))


def _set_result_unless_cancelled(fut, result):
    if not fut.cancelled():
        fut.set_result(result)


def make_socket_transport(loop, sock, protocol, waiter=None, *, extra=None, server=None):
    """asyncio's _make_socket_transport: wrap a connected socket."""
    kind = "pipe" if sock.family == socket.AF_UNIX else "tcp"
    # Looked up before the loop is asked for anything, as asyncio does.
    connection_made = protocol.connection_made
    transport = StreamTransport(loop, kind)
    transport._open(sock.fileno())  # on failure the socket is still the caller's
    transport._start(sock, protocol, _socket_extra(sock, extra), server, waiter, connection_made)
    return transport


def make_ssl_transport(
    loop,
    rawsock,
    protocol,
    sslcontext,
    waiter=None,
    *,
    server_side=False,
    server_hostname=None,
    extra=None,
    server=None,
    ssl_handshake_timeout=constants.SSL_HANDSHAKE_TIMEOUT,
    ssl_shutdown_timeout=constants.SSL_SHUTDOWN_TIMEOUT,
    call_connection_made=True,
):
    """asyncio's _make_ssl_transport: asyncio's SSLProtocol over our transport."""
    ssl_protocol = sslproto.SSLProtocol(
        loop,
        protocol,
        sslcontext,
        waiter,
        server_side,
        server_hostname,
        ssl_handshake_timeout=ssl_handshake_timeout,
        ssl_shutdown_timeout=ssl_shutdown_timeout,
        call_connection_made=call_connection_made,
    )
    make_socket_transport(loop, rawsock, ssl_protocol, extra=extra, server=server)
    return ssl_protocol._app_transport


class Listener(_core.StreamListener):
    """A listening socket serving an asyncio Server (asyncio's _start_serving)."""

    def __init__(
        self,
        loop,
        sock,
        protocol_factory,
        sslcontext,
        server,
        backlog,
        ssl_handshake_timeout,
        ssl_shutdown_timeout,
    ):
        self._kind = "pipe" if sock.family == socket.AF_UNIX else "tcp"
        super().__init__(loop, self._kind)
        self._loop = loop
        self._sock = sock
        self._protocol_factory = protocol_factory
        self._sslcontext = sslcontext
        self._server = server
        self._ssl_handshake_timeout = ssl_handshake_timeout
        self._ssl_shutdown_timeout = ssl_shutdown_timeout
        # libuv listens on a copy of the fd; the socket stays the Server's.
        self._open(sock.fileno(), backlog)

    def close(self):
        """Stop listening (the socket itself is the Server's to close)."""
        self._close()

    def _on_connection(self):
        loop = self._loop
        transport = StreamTransport(loop, self._kind)
        try:
            self._accept(transport._native)
        except OSError as exc:
            self._on_accept_error(exc)
            return
        sock = socket.socket(fileno=transport._fileno())
        protocol = None
        try:
            protocol = self._protocol_factory()
            if self._sslcontext:
                ssl_protocol = sslproto.SSLProtocol(
                    loop,
                    protocol,
                    self._sslcontext,
                    None,
                    server_side=True,
                    ssl_handshake_timeout=self._ssl_handshake_timeout,
                    ssl_shutdown_timeout=self._ssl_shutdown_timeout,
                )
                transport._start(sock, ssl_protocol, _socket_extra(sock), self._server, None)
            else:
                transport._start(sock, protocol, _socket_extra(sock), self._server, None)
        except (SystemExit, KeyboardInterrupt):
            raise
        except BaseException as exc:
            # As asyncio's _accept_connection2: reported in debug mode only.
            if loop.get_debug():
                context = {
                    "message": "Error on transport creation for incoming connection",
                    "exception": exc,
                }
                if protocol is not None:
                    context["protocol"] = protocol
                context["transport"] = transport
                loop.call_exception_handler(context)
            transport._set_socket(sock)
            transport.abort()

    def _on_accept_error(self, exc):
        message = (
            "socket.accept() out of system resource"
            if exc.errno in _RESOURCE_ERRNOS
            else "Error on accepting a connection"
        )
        self._loop.call_exception_handler(
            {"message": message, "exception": exc, "socket": trsock.TransportSocket(self._sock)}
        )


_core._install_hooks(
    buffered_protocol_type=asyncio.BufferedProtocol,
    transport_error=_transport_error,
    server_detach=_server_detach,
    log_warning=logger.warning,
)
