"""Name resolution for the loop: getaddrinfo, getnameinfo and _ensure_resolved.

asyncio runs ``socket.getaddrinfo`` in the default executor, because a name
lookup may block for seconds. So do we, except where no lookup can happen: a
numeric host address with a numeric port is answered at once, with the list
``socket.getaddrinfo`` would return, instead of a round trip through a worker
thread. Names and messages mirror ``asyncio.base_events``.
"""

from __future__ import annotations

import logging
import socket

logger = logging.getLogger("asyncio")

_HAS_IPv6 = hasattr(socket, "AF_INET6")

# The (type, proto) pairs of the entries glibc's getaddrinfo returns for a
# numeric host, keyed by the (type, proto) asked for. Anything else (raw
# sockets, SCTP, mismatched pairs) goes to the real getaddrinfo, which also
# produces its errors.
_STREAM = (socket.SOCK_STREAM, socket.IPPROTO_TCP)
_DGRAM = (socket.SOCK_DGRAM, socket.IPPROTO_UDP)
_ENTRIES_FOR = {
    (0, 0): (_STREAM, _DGRAM, (socket.SOCK_RAW, 0)),
    (socket.SOCK_STREAM, 0): (_STREAM,),
    (socket.SOCK_STREAM, socket.IPPROTO_TCP): (_STREAM,),
    (0, socket.IPPROTO_TCP): (_STREAM,),
    (socket.SOCK_DGRAM, 0): (_DGRAM,),
    (socket.SOCK_DGRAM, socket.IPPROTO_UDP): (_DGRAM,),
    (0, socket.IPPROTO_UDP): (_DGRAM,),
}

# Flags that change nothing in the answer for a numeric host and port. The
# others (AI_CANONNAME, AI_V4MAPPED, AI_ADDRCONFIG, ...) do, so they take
# the real getaddrinfo.
# A plain int: ~ of an IntFlag keeps only the bits the enum knows.
_NUMERIC_SAFE_FLAGS = int(socket.AI_PASSIVE | socket.AI_NUMERICHOST | socket.AI_NUMERICSERV)

_NUMERIC_NAMEINFO = int(socket.NI_NUMERICHOST | socket.NI_NUMERICSERV)

_FAMILIES = (socket.AF_INET, socket.AF_INET6) if _HAS_IPv6 else (socket.AF_INET,)


def _numeric_port(port):
    """`port` as getaddrinfo would read it without a service lookup, or None."""
    if port is None:
        return 0
    if type(port) is int:
        return port if 0 <= port <= 0xFFFF else None
    if isinstance(port, bytes):
        try:
            port = port.decode("ascii")
        except UnicodeDecodeError:
            return None
    if isinstance(port, str) and port.isascii() and port.isdigit():
        value = int(port)
        return value if value <= 0xFFFF else None
    return None


def _build_addrinfo(host, port, family, type, proto, flags):
    """glibc's getaddrinfo() answer when it needs no lookup, else None.

    Covers a numeric IPv4/IPv6 host (no zone index) with a numeric port, the
    common flags and the TCP/UDP socket types. The host comes back in
    canonical form (``0:0::1`` -> ``::1``), families and types as the
    socket module's enums, exactly as getaddrinfo returns them.
    """
    try:
        entries = _ENTRIES_FOR.get((type, proto))
    except TypeError:  # unhashable: getaddrinfo gives the error
        return None
    if entries is None or not isinstance(flags, int) or flags & ~_NUMERIC_SAFE_FLAGS:
        return None
    port = _numeric_port(port)
    if port is None:
        return None
    if isinstance(host, bytes):
        try:
            host = host.decode("ascii")
        except UnicodeDecodeError:
            return None
    elif not isinstance(host, str):
        return None
    if family == 0:
        families = _FAMILIES
    elif family in _FAMILIES:
        families = (family,)
    else:
        return None
    for af in families:
        try:
            packed = socket.inet_pton(af, host)
        except (OSError, ValueError):
            continue
        canonical = socket.inet_ntop(af, packed)
        address = (canonical, port) if af == socket.AF_INET else (canonical, port, 0, 0)
        af = socket.AddressFamily(af)
        return [(af, kind, pro, "", address) for kind, pro in entries]
    return None


def _libc_answers_alike():
    """Whether _build_addrinfo() answers as this C library does (checked once).

    It follows glibc (TCP, UDP, then raw entries); another C library may
    answer numeric queries otherwise, and is then called instead.
    """
    queries = [("127.0.0.1", 80, 0, 0, 0, 0), ("127.0.0.1", None, 0, socket.SOCK_DGRAM, 0, 0)]
    if _HAS_IPv6:
        queries.append(("::1", "443", 0, socket.SOCK_STREAM, 0, socket.AI_PASSIVE))
    try:
        return all(repr(_build_addrinfo(*q)) == repr(socket.getaddrinfo(*q)) for q in queries)
    except (OSError, ValueError):
        return False


_BUILD_ANSWERS = _libc_answers_alike()


def _numeric_addrinfo(host, port, family, type, proto, flags):
    """socket.getaddrinfo()'s answer when it needs no lookup, else None."""
    infos = _build_addrinfo(host, port, family, type, proto, flags)
    if infos is None or _BUILD_ANSWERS:
        return infos
    # Numeric, so no lookup: the C library answers at once.
    return socket.getaddrinfo(host, port, family, type, proto, flags)


def _ipaddr_info(host, port, family, type, proto, flowinfo=0, scopeid=0):
    """One addrinfo entry for an already resolved host, or None.

    This is asyncio's shortcut for create_connection() & co.: the host is
    kept as given (not canonicalized) and a single entry of the socket type
    asked for is returned.
    """
    if proto not in (0, socket.IPPROTO_TCP, socket.IPPROTO_UDP) or host is None:
        return None
    if type == socket.SOCK_STREAM:
        proto = socket.IPPROTO_TCP
    elif type == socket.SOCK_DGRAM:
        proto = socket.IPPROTO_UDP
    else:
        return None

    if port is None or port == b"" or port == "":
        port = 0
    else:
        # A service name such as "http" needs getaddrinfo.
        try:
            port = int(port)
        except (TypeError, ValueError):
            return None

    if family == socket.AF_UNSPEC:
        families = _FAMILIES
    else:
        families = (family,)

    if isinstance(host, bytes):
        host = host.decode("idna")
    if "%" in host:
        # Linux's inet_pton rejects a zone index ("::1%lo"): let getaddrinfo
        # read it.
        return None

    for af in families:
        try:
            socket.inet_pton(af, host)
        except OSError:
            continue
        if _HAS_IPv6 and af == socket.AF_INET6:
            return af, type, proto, "", (host, port, flowinfo, scopeid)
        return af, type, proto, "", (host, port)
    return None


class DnsMethods:
    """getaddrinfo / getnameinfo of asyncio's loop, mixed into fastloop.Loop."""

    __slots__ = ()

    def _getaddrinfo_debug(self, host, port, family, type, proto, flags):
        # Runs in a worker thread in debug mode: logs the query and its time.
        msg = [f"{host}:{port!r}"]
        if family:
            msg.append(f"family={family!r}")
        if type:
            msg.append(f"type={type!r}")
        if proto:
            msg.append(f"proto={proto!r}")
        if flags:
            msg.append(f"flags={flags!r}")
        msg = ", ".join(msg)
        logger.debug("Get address info %s", msg)

        t0 = self.time()
        addrinfo = socket.getaddrinfo(host, port, family, type, proto, flags)
        dt = self.time() - t0

        msg = f"Getting address info {msg} took {dt * 1e3:.3f}ms: {addrinfo!r}"
        if dt >= self.slow_callback_duration:
            logger.info(msg)
        else:
            logger.debug(msg)
        return addrinfo

    def _check_resolver(self):
        # An answer given without the executor fails where run_in_executor(None)
        # would have failed, as asyncio's always goes through it.
        self._check_closed()
        if getattr(self, "_executor_shutdown_called", False):
            raise RuntimeError("Executor shutdown has been called")

    async def getaddrinfo(self, host, port, *, family=0, type=0, proto=0, flags=0):
        if self.get_debug():
            # As asyncio: every query is logged from the executor.
            return await self.run_in_executor(
                None, self._getaddrinfo_debug, host, port, family, type, proto, flags
            )
        if host is None:
            # No name to look up: the C library answers from its own tables
            # (loopback or wildcard addresses), unless the port is a service
            # name, which may need a lookup.
            if _numeric_port(port) is not None:
                self._check_resolver()
                return socket.getaddrinfo(host, port, family, type, proto, flags)
        else:
            infos = _numeric_addrinfo(host, port, family, type, proto, flags)
            if infos is not None:
                self._check_resolver()
                return infos
        return await self.run_in_executor(
            None, socket.getaddrinfo, host, port, family, type, proto, flags
        )

    async def getnameinfo(self, sockaddr, flags=0):
        if isinstance(flags, int) and flags & _NUMERIC_NAMEINFO == _NUMERIC_NAMEINFO:
            # Numeric host and service: formatting only, no lookup.
            self._check_resolver()
            return socket.getnameinfo(sockaddr, flags)
        return await self.run_in_executor(None, socket.getnameinfo, sockaddr, flags)

    async def _ensure_resolved(
        self, address, *, family=0, type=socket.SOCK_STREAM, proto=0, flags=0, loop=None
    ):
        """[addrinfo] for `address`, without a lookup when its host is numeric."""
        host, port = address[:2]
        info = _ipaddr_info(host, port, family, type, proto, *address[2:])
        if info is not None:
            return [info]
        return await (loop if loop is not None else self).getaddrinfo(
            host, port, family=family, type=type, proto=proto, flags=flags
        )
