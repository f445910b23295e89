"""Datagram endpoints: loop.create_datagram_endpoint() and its transport.

The transport's data path is native (cpp/udp.*); its behaviour is that of
asyncio's ``_SelectorDatagramTransport`` on the running Python: the protocol
hears connection_made, then datagram_received / error_received, then
connection_lost; sendto() tries the socket at once and queues what would
block. While open, the transport owns its socket (``loop._transports``):
add_reader & co. refuse its fd. Names and messages mirror
``asyncio.selector_events`` and ``base_events``.

What changed across the supported Pythons follows asyncio's own code where it
shows (_HEADER_SIZE, _CHECKS_SOCKET_OWNER), else the version:

- 3.12 (selector_events.BaseSelectorEventLoop._make_datagram_transport):
  no endpoint can be made on a socket that an open transport owns.
- 3.13 (selector_events._SelectorDatagramTransport.sendto, gh-113812):
  sendto(b"") sends an empty datagram (3.11 and 3.12 drop it), and every
  queued datagram counts a header of 8 bytes in get_write_buffer_size().
  3.13.0 to 3.13.5 do not take the header off again when the datagram is
  sent (gh-135444); later releases do and call it ``_header_size``, and so
  does fastloop on every 3.13.
- 3.13 (base_events.create_datagram_endpoint, gh-114887): ``sock=`` may be
  any socket but a SOCK_STREAM one (SOCK_RAW, SOCK_SEQPACKET...), and the
  message says "A datagram socket was expected".
"""

from __future__ import annotations

import logging
import os
import socket
import stat
import sys
import warnings
from asyncio import selector_events, transports, trsock

from . import _core
from ._transports import NativeFlowControl, NativeMethod, _set_result_unless_cancelled

logger = logging.getLogger("asyncio")

_SENDS_EMPTY_DATAGRAMS = sys.version_info >= (3, 13)
_HEADER_SIZE = getattr(
    selector_events._SelectorDatagramTransport,
    "_header_size",
    8 if _SENDS_EMPTY_DATAGRAMS else 0,
)
_TAKES_ANY_NON_STREAM_SOCKET = sys.version_info >= (3, 13)
# Whether asyncio's loop checks the socket's owner when it makes the transport (3.12+).
_CHECKS_SOCKET_OWNER = (
    "_ensure_fd_no_transport"
    in selector_events.BaseSelectorEventLoop._make_datagram_transport.__code__.co_names
)


def _set_reuseport(sock):
    if not hasattr(socket, "SO_REUSEPORT"):
        raise ValueError("reuse_port not supported by socket module")
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    except OSError:
        raise ValueError(
            "reuse_port not supported by socket module, SO_REUSEPORT defined but not implemented."
        )


class DatagramTransport(
    NativeFlowControl, transports._FlowControlMixin, transports.DatagramTransport
):
    """A datagram (UDP or Unix datagram) socket as an asyncio transport.

    The native object (_core.DatagramTransport, cpp/udp.*) reads, sends,
    queues and closes; its hot methods are bound onto the instance. This
    class keeps what asyncio's transport keeps in Python: extra info, the
    repr, debug-mode logging, and the socket object, closed after
    connection_lost as asyncio's _call_connection_lost does.
    """

    max_size = 256 * 1024  # the largest datagram read at once (the core reads this much)
    _header_size = _HEADER_SIZE  # what a queued datagram counts besides its data

    _sock = None  # set first thing in __init__; __del__ may see an instance without it
    _native = None

    sendto = NativeMethod()
    is_closing = NativeMethod()
    get_write_buffer_size = NativeMethod()
    is_reading = NativeMethod()
    close = NativeMethod()
    abort = NativeMethod()
    _force_close = NativeMethod()
    set_protocol = NativeMethod()
    get_protocol = NativeMethod()

    def __init__(self, loop, sock, protocol, address=None, waiter=None, extra=None):
        super().__init__(extra, loop)
        self._extra["socket"] = trsock.TransportSocket(sock)
        try:
            self._extra["sockname"] = sock.getsockname()
        except OSError:
            self._extra["sockname"] = None
        if "peername" not in self._extra:
            try:
                self._extra["peername"] = sock.getpeername()
            except OSError:
                self._extra["peername"] = None
        native = _core.DatagramTransport(loop)
        native._open(
            self,
            sock,
            protocol,
            address,
            bool(self._extra["peername"]),
            self._header_size,
            _SENDS_EMPTY_DATAGRAMS,
        )
        self._native = native
        self._sock = sock
        self._sock_fd = sock.fileno()
        self._address = address  # the remote address of a "connected" endpoint

        loop._transports[self._sock_fd] = self
        loop.call_soon(protocol.connection_made, self)
        # Reading starts only once connection_made() has run.
        loop.call_soon(native._start_reading)
        if waiter is not None:
            # create_datagram_endpoint() returns after connection_made() too.
            loop.call_soon(_set_result_unless_cancelled, waiter, None)

    def __repr__(self):
        info = [type(self).__name__]
        if self._sock is None:
            info.append("closed")
        elif self.is_closing():
            info.append("closing")
        info.append(f"fd={self._sock_fd}")
        if self._loop is not None and not self._loop.is_closed() and self._native is not None:
            info.append("read=polling" if self._native._reader_polling() else "read=idle")
            state = "polling" if self._native._writer_polling() else "idle"
            info.append(f"write=<{state}, bufsize={self.get_write_buffer_size()}>")
        return "<{}>".format(" ".join(info))

    def __del__(self, _warn=warnings.warn):
        if self._sock is not None:
            _warn(f"unclosed transport {self!r}", ResourceWarning, source=self)
            if self._native is not None:
                self._native._stop()  # the handle lets go of the fd before it closes
            self._sock.close()

    def pause_reading(self):
        if not self.is_reading():
            return
        self._native.pause_reading()
        if self._loop.get_debug():
            logger.debug("%r pauses reading", self)

    def resume_reading(self):
        was_reading = self.is_reading()
        self._native.resume_reading()
        if not was_reading and self.is_reading() and self._loop.get_debug():
            logger.debug("%r resumes reading", self)

    def _call_connection_lost(self, exc):
        try:
            self._native._call_connection_lost(exc)
        finally:
            self._sock.close()
            self._sock = None
            self._loop = None


class DatagramMethods:
    """loop.create_datagram_endpoint() of asyncio's loop, mixed into fastloop.Loop."""

    __slots__ = ()

    def _make_datagram_transport(self, sock, protocol, address=None, waiter=None, extra=None):
        if _CHECKS_SOCKET_OWNER:
            self._ensure_fd_no_transport(sock)
        return DatagramTransport(self, sock, protocol, address, waiter, extra)

    async def create_datagram_endpoint(
        self,
        protocol_factory,
        local_addr=None,
        remote_addr=None,
        *,
        family=0,
        proto=0,
        flags=0,
        reuse_port=None,
        allow_broadcast=None,
        sock=None,
    ):
        """Create a datagram connection: (transport, protocol)."""
        if sock is not None:
            if _TAKES_ANY_NON_STREAM_SOCKET:
                if sock.type == socket.SOCK_STREAM:
                    raise ValueError(f"A datagram socket was expected, got {sock!r}")
            elif sock.type != socket.SOCK_DGRAM:
                raise ValueError(f"A UDP Socket was expected, got {sock!r}")
            if (
                local_addr
                or remote_addr
                or family
                or proto
                or flags
                or reuse_port
                or allow_broadcast
            ):
                # Name the offending keywords in the message.
                opts = dict(
                    local_addr=local_addr,
                    remote_addr=remote_addr,
                    family=family,
                    proto=proto,
                    flags=flags,
                    reuse_port=reuse_port,
                    allow_broadcast=allow_broadcast,
                )
                problems = ", ".join(f"{k}={v}" for k, v in opts.items() if v)
                raise ValueError(
                    f"socket modifier keyword arguments can not be used "
                    f"when sock is specified. ({problems})"
                )
            sock.setblocking(False)
            r_addr = None
        else:
            if not (local_addr or remote_addr):
                if family == 0:
                    raise ValueError("unexpected address family")
                addr_pairs_info = (((family, proto), (None, None)),)
            elif hasattr(socket, "AF_UNIX") and family == socket.AF_UNIX:
                for addr in (local_addr, remote_addr):
                    if addr is not None and not isinstance(addr, str):
                        raise TypeError("string is expected")
                if local_addr and local_addr[0] not in (0, "\x00"):
                    # A stale socket file from an earlier run would make
                    # bind() fail: remove it (but nothing else).
                    try:
                        if stat.S_ISSOCK(os.stat(local_addr).st_mode):
                            os.remove(local_addr)
                    except FileNotFoundError:
                        pass
                    except OSError as err:
                        # The directory may only allow creating the socket.
                        logger.error(
                            "Unable to check or remove stale UNIX socket %r: %r",
                            local_addr,
                            err,
                        )
                addr_pairs_info = (((family, proto), (local_addr, remote_addr)),)
            else:
                # Group the resolved addresses by (family, protocol), in order.
                addr_infos = {}
                for idx, addr in ((0, local_addr), (1, remote_addr)):
                    if addr is not None:
                        if not (isinstance(addr, tuple) and len(addr) == 2):
                            raise TypeError("2-tuple is expected")
                        infos = await self._ensure_resolved(
                            addr,
                            family=family,
                            type=socket.SOCK_DGRAM,
                            proto=proto,
                            flags=flags,
                            loop=self,
                        )
                        if not infos:
                            raise OSError("getaddrinfo() returned empty list")
                        for fam, _, pro, _, address in infos:
                            key = (fam, pro)
                            if key not in addr_infos:
                                addr_infos[key] = [None, None]
                            addr_infos[key][idx] = address

                # Each address given must have a candidate in the pair.
                addr_pairs_info = [
                    (key, addr_pair)
                    for key, addr_pair in addr_infos.items()
                    if not (
                        (local_addr and addr_pair[0] is None)
                        or (remote_addr and addr_pair[1] is None)
                    )
                ]
                if not addr_pairs_info:
                    raise ValueError("can not get address information")

            exceptions = []
            for (family, proto), (local_address, remote_address) in addr_pairs_info:
                sock = None
                r_addr = None
                try:
                    sock = socket.socket(family=family, type=socket.SOCK_DGRAM, proto=proto)
                    if reuse_port:
                        _set_reuseport(sock)
                    if allow_broadcast:
                        sock.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
                    sock.setblocking(False)
                    if local_addr:
                        sock.bind(local_address)
                    if remote_addr:
                        if not allow_broadcast:
                            await self.sock_connect(sock, remote_address)
                        r_addr = remote_address
                except OSError as exc:
                    if sock is not None:
                        sock.close()
                    exceptions.append(exc)
                except BaseException:
                    if sock is not None:
                        sock.close()
                    raise
                else:
                    break
            else:
                raise exceptions[0]

        protocol = protocol_factory()
        waiter = self.create_future()
        transport = self._make_datagram_transport(sock, protocol, r_addr, waiter)
        if self.get_debug():
            if local_addr:
                logger.info(
                    "Datagram endpoint local_addr=%r remote_addr=%r created: (%r, %r)",
                    local_addr,
                    remote_addr,
                    transport,
                    protocol,
                )
            else:
                logger.debug(
                    "Datagram endpoint remote_addr=%r created: (%r, %r)",
                    remote_addr,
                    transport,
                    protocol,
                )
        try:
            await waiter
        except BaseException:
            transport.close()
            raise
        return transport, protocol
