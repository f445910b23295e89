"""Networking on fastloop: asyncio's own orchestration over fastloop's transports.

The connection logic that is not on the data path (resolving, Happy
Eyeballs, binding, the Server object, TLS over asyncio.sslproto, sendfile's
fallback, Unix socket paths) is asyncio's own: the methods below are
asyncio's functions, called on this loop, not copies of them. They reach
fastloop through the hooks asyncio's loops provide for exactly this:
_make_socket_transport, _make_ssl_transport, _start_serving and
_stop_serving, which build the native transports and listeners of
_transports.py. Behaviour, argument checks and error messages are therefore
those of the running Python's asyncio.
"""

from __future__ import annotations

import logging
import os
from asyncio import base_events, constants, selector_events, unix_events

from . import _transports

_Base = base_events.BaseEventLoop
_Unix = unix_events._UnixSelectorEventLoop

logger = logging.getLogger("asyncio")

# Since 3.12 asyncio's loop refuses a socket an open transport already owns
# when it makes another transport on it ("File descriptor ... is used by
# transport"); read from its own code.
_CHECKS_SOCKET_OWNER = (
    "_ensure_fd_no_transport"
    in selector_events.BaseSelectorEventLoop._make_socket_transport.__code__.co_names
)


def _unlink_if_same(path, inode):
    """Remove a stopped Unix server's path if it is still that server's socket."""
    try:
        if os.stat(path).st_ino == inode:
            os.unlink(path)
    except FileNotFoundError:
        pass
    except OSError as err:
        logger.error("Unable to clean up listening UNIX socket %r: %r", path, err)


class NetworkMethods:
    """Stream networking: TCP and Unix connections and servers, TLS, sendfile."""

    create_connection = _Base.create_connection
    _create_connection_transport = _Base._create_connection_transport
    _connect_sock = _Base._connect_sock
    create_server = _Base.create_server
    _create_server_getaddrinfo = _Base._create_server_getaddrinfo
    connect_accepted_socket = _Base.connect_accepted_socket
    start_tls = _Base.start_tls
    sendfile = _Base.sendfile
    _sendfile_fallback = _Base._sendfile_fallback
    create_unix_connection = _Unix.create_unix_connection
    create_unix_server = _Unix.create_unix_server

    def _make_socket_transport(self, sock, protocol, waiter=None, *, extra=None, server=None):
        if _CHECKS_SOCKET_OWNER:
            self._ensure_fd_no_transport(sock)
        return _transports.make_socket_transport(
            self, sock, protocol, waiter, extra=extra, server=server
        )

    def _make_ssl_transport(self, rawsock, protocol, sslcontext, waiter=None, **kwargs):
        if _CHECKS_SOCKET_OWNER:
            self._ensure_fd_no_transport(rawsock)
        return _transports.make_ssl_transport(self, rawsock, protocol, sslcontext, waiter, **kwargs)

    async def _sendfile_native(self, transp, file, offset, count):
        """Zero-copy sendfile on a fastloop transport, as asyncio's selector loop does it.

        Reading pauses and the write buffer drains first; then the socket goes
        to sock_sendfile (os.sendfile), and writes are refused until it ends.
        """
        if not isinstance(transp, _transports.StreamTransport):
            return await _Base._sendfile_native(self, transp, file, offset, count)
        fd = transp._sock.fileno()
        # The socket is lent to sock_sendfile, which watches its fd itself.
        self._transports.pop(fd, None)
        resume_reading = transp.is_reading()
        transp.pause_reading()
        try:
            await transp._make_empty_waiter()
            return await self.sock_sendfile(transp._sock, file, offset, count, fallback=False)
        finally:
            transp._reset_empty_waiter()
            if resume_reading:
                transp.resume_reading()
            if not transp.is_closing():
                self._transports[fd] = transp

    def _start_serving(
        self,
        protocol_factory,
        sock,
        sslcontext=None,
        server=None,
        backlog=100,
        ssl_handshake_timeout=constants.SSL_HANDSHAKE_TIMEOUT,
        ssl_shutdown_timeout=constants.SSL_SHUTDOWN_TIMEOUT,
    ):
        if sock.fileno() in self._listeners:
            return  # already serving (Server.start_serving twice)
        self._listeners[sock.fileno()] = _transports.Listener(
            self,
            sock,
            protocol_factory,
            sslcontext,
            server,
            backlog,
            ssl_handshake_timeout,
            ssl_shutdown_timeout,
        )

    def _stop_serving(self, sock):
        # Since 3.13, create_unix_server(cleanup_socket=True) records the
        # socket with its path's inode: the path is unlinked once the server
        # stops, unless something else has taken the path meanwhile.
        inode = self._unix_server_sockets.pop(sock, None)
        path = sock.getsockname() if inode is not None else None
        listener = self._listeners.pop(sock.fileno(), None)
        if listener is not None:
            listener.close()  # libuv closes its copy of the fd
        sock.close()
        if path is not None:
            _unlink_if_same(path, inode)
