"""Datagram endpoints: loop.create_datagram_endpoint() and its transport.

The transport runs over the loop's fd watchers, in Python for now. Its
behaviour is that of asyncio's ``_SelectorDatagramTransport`` on the running
Python: the protocol hears connection_made, then datagram_received /
error_received, then connection_lost, each from its own loop callback;
sendto() tries the socket at once and queues what would block. While open,
the transport owns its socket (``loop._transports``): add_reader & co. refuse
its fd. Names and messages mirror ``asyncio.selector_events`` and
``base_events``.

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

import collections
import logging
import os
import socket
import stat
import sys
import warnings
from asyncio import constants, selector_events, transports, trsock

from ._transports import _set_result_unless_cancelled

logger = logging.getLogger("asyncio")

_RETRY = (BlockingIOError, InterruptedError)

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


class DatagramTransport(transports._FlowControlMixin, transports.DatagramTransport):
    """A datagram (UDP or Unix datagram) socket as an asyncio transport."""

    max_size = 256 * 1024  # the largest datagram read at once
    _header_size = _HEADER_SIZE  # what a queued datagram counts besides its data

    _sock = None  # set first thing in __init__; __del__ may see an instance without it

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
        self._sock = sock
        self._sock_fd = sock.fileno()
        self._protocol = protocol
        self._protocol_connected = True
        self._address = address  # the remote address of a "connected" endpoint
        self._buffer = collections.deque()  # (bytes, address) waiting to be sent
        self._buffer_size = 0
        self._conn_lost = 0  # set when connection_lost is scheduled
        self._closing = False  # set by close()
        self._paused = False  # set by pause_reading()
        self._reader_added = False
        self._writer_added = False

        loop._transports[self._sock_fd] = self
        loop.call_soon(protocol.connection_made, self)
        # Reading starts only once connection_made() has run.
        loop.call_soon(self._add_reader)
        if waiter is not None:
            # create_datagram_endpoint() returns after connection_made() too.
            loop.call_soon(_set_result_unless_cancelled, waiter, None)

    def __repr__(self):
        info = [type(self).__name__]
        if self._sock is None:
            info.append("closed")
        elif self._closing:
            info.append("closing")
        info.append(f"fd={self._sock_fd}")
        if self._loop is not None and not self._loop.is_closed():
            info.append("read=polling" if self._reader_added else "read=idle")
            state = "polling" if self._writer_added else "idle"
            info.append(f"write=<{state}, bufsize={self.get_write_buffer_size()}>")
        return "<{}>".format(" ".join(info))

    def __del__(self, _warn=warnings.warn):
        if self._sock is not None:
            _warn(f"unclosed transport {self!r}", ResourceWarning, source=self)
            self._sock.close()

    # ---- BaseTransport -----------------------------------------------------------

    def set_protocol(self, protocol):
        self._protocol = protocol
        self._protocol_connected = True

    def get_protocol(self):
        return self._protocol

    def is_closing(self):
        return self._closing

    def close(self):
        if self._closing:
            return
        self._closing = True
        self._remove_reader()
        if not self._buffer:
            self._conn_lost += 1
            self._remove_writer()
            self._loop.call_soon(self._call_connection_lost, None)
        # Else the queued datagrams go out first (_sendto_ready).

    def abort(self):
        self._force_close(None)

    # ---- reading -----------------------------------------------------------------

    def is_reading(self):
        return not self._closing and not self._paused

    def pause_reading(self):
        if not self.is_reading():
            return
        self._paused = True
        self._remove_reader()
        if self._loop.get_debug():
            logger.debug("%r pauses reading", self)

    def resume_reading(self):
        if self._closing or not self._paused:
            return
        self._paused = False
        self._add_reader()
        if self._loop.get_debug():
            logger.debug("%r resumes reading", self)

    def _add_reader(self):
        if not self.is_reading():
            return
        # The loop's private methods: the public ones refuse an fd a transport owns.
        self._loop._add_reader(self._sock_fd, self._read_ready)
        self._reader_added = True

    def _remove_reader(self):
        if self._reader_added:
            self._reader_added = False
            if not self._loop.is_closed():
                self._loop._remove_reader(self._sock_fd)

    def _read_ready(self):
        if self._conn_lost:
            return
        try:
            data, addr = self._sock.recvfrom(self.max_size)
        except _RETRY:
            pass
        except OSError as exc:
            # E.g. ConnectionRefusedError: an ICMP error for an earlier datagram.
            self._protocol.error_received(exc)
        except (SystemExit, KeyboardInterrupt):
            raise
        except BaseException as exc:
            self._fatal_error(exc, "Fatal read error on datagram transport")
        else:
            self._protocol.datagram_received(data, addr)

    # ---- writing -----------------------------------------------------------------

    def get_write_buffer_size(self):
        return self._buffer_size

    def sendto(self, data, addr=None):
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise TypeError(
                f"data argument must be a bytes-like object, not {type(data).__name__!r}"
            )
        if not data and not _SENDS_EMPTY_DATAGRAMS:
            return  # dropped before 3.13

        if self._address:
            if addr not in (None, self._address):
                raise ValueError(f"Invalid address: must be None or {self._address}")
            addr = self._address

        if self._conn_lost and self._address:
            if self._conn_lost >= constants.LOG_THRESHOLD_FOR_CONNLOST_WRITES:
                logger.warning("socket.send() raised exception.")
            self._conn_lost += 1
            return

        if not self._buffer:
            # Nothing queued: try the socket right away.
            try:
                if self._extra["peername"]:
                    self._sock.send(data)
                else:
                    self._sock.sendto(data, addr)
                return
            except _RETRY:
                self._loop._add_writer(self._sock_fd, self._sendto_ready)
                self._writer_added = True
            except OSError as exc:
                self._protocol.error_received(exc)
                return
            except (SystemExit, KeyboardInterrupt):
                raise
            except BaseException as exc:
                self._fatal_error(exc, "Fatal write error on datagram transport")
                return

        # What is queued must not change under us: keep an immutable copy.
        self._buffer.append((bytes(data), addr))
        self._buffer_size += len(data) + self._header_size
        self._maybe_pause_protocol()

    def _sendto_ready(self):
        while self._buffer:
            data, addr = self._buffer.popleft()
            self._buffer_size -= len(data) + self._header_size
            try:
                if self._extra["peername"]:
                    self._sock.send(data)
                else:
                    self._sock.sendto(data, addr)
            except _RETRY:
                self._buffer.appendleft((data, addr))  # the next writability retries
                self._buffer_size += len(data) + self._header_size
                break
            except OSError as exc:
                self._protocol.error_received(exc)
                return
            except (SystemExit, KeyboardInterrupt):
                raise
            except BaseException as exc:
                self._fatal_error(exc, "Fatal write error on datagram transport")
                return

        self._maybe_resume_protocol()  # may queue more datagrams
        if not self._buffer:
            self._remove_writer()
            if self._closing:
                self._call_connection_lost(None)

    def _remove_writer(self):
        if self._writer_added:
            self._writer_added = False
            if not self._loop.is_closed():
                self._loop._remove_writer(self._sock_fd)

    # ---- closing -------------------------------------------------------------------

    def _fatal_error(self, exc, message="Fatal error on transport"):
        # Called from an except clause only.
        if isinstance(exc, OSError):
            if self._loop.get_debug():
                logger.debug("%r: %s", self, message, exc_info=True)
        else:
            self._loop.call_exception_handler(
                {
                    "message": message,
                    "exception": exc,
                    "transport": self,
                    "protocol": self._protocol,
                }
            )
        self._force_close(exc)

    def _force_close(self, exc):
        if self._conn_lost:
            return
        if self._buffer:
            self._buffer.clear()
            self._buffer_size = 0
            self._remove_writer()
        if not self._closing:
            self._closing = True
            self._remove_reader()
        self._conn_lost += 1
        self._loop.call_soon(self._call_connection_lost, exc)

    def _call_connection_lost(self, exc):
        try:
            if self._protocol_connected:
                self._protocol.connection_lost(exc)
        finally:
            self._sock.close()
            self._sock = None
            self._protocol = None
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
