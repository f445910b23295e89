"""loop.getaddrinfo / loop.getnameinfo: the answers of the socket module, asynchronously.

Only loopback and numeric addresses are resolved, plus names under the reserved
``.invalid`` TLD, which never resolve. fastloop answers numeric queries without the
executor; the answers must still be exactly socket.getaddrinfo's (same order, same
enum types, canonical addresses).
"""

import asyncio
import logging
import socket

import pytest

from .netutil import run

pytestmark = pytest.mark.timeout(30)

AI = socket.AddressInfo
HAS_IPV6 = socket.has_ipv6

NUMERIC_QUERIES = [
    # (host, port, family, type, proto, flags)
    ("127.0.0.1", 80, 0, 0, 0, 0),
    ("127.0.0.1", 0, 0, 0, 0, 0),
    ("127.0.0.1", None, 0, 0, 0, 0),
    ("127.0.0.1", "8080", 0, 0, 0, 0),
    ("127.0.0.1", b"8080", 0, 0, 0, 0),
    ("127.0.0.1", "0080", 0, 0, 0, 0),
    ("127.0.0.1", 65535, 0, 0, 0, 0),
    (b"127.0.0.1", 80, 0, 0, 0, 0),
    ("127.0.0.1", 80, socket.AF_INET, 0, 0, 0),
    ("127.0.0.1", 80, 0, socket.SOCK_STREAM, 0, 0),
    ("127.0.0.1", 80, 0, socket.SOCK_DGRAM, 0, 0),
    ("127.0.0.1", 80, 0, 0, socket.IPPROTO_TCP, 0),
    ("127.0.0.1", 80, 0, 0, socket.IPPROTO_UDP, 0),
    ("127.0.0.1", 80, 0, socket.SOCK_STREAM, socket.IPPROTO_TCP, 0),
    ("127.0.0.1", 80, socket.AF_INET, socket.SOCK_DGRAM, socket.IPPROTO_UDP, 0),
    ("127.0.0.1", 80, 0, 0, 0, AI.AI_PASSIVE),
    ("127.0.0.1", 80, 0, 0, 0, AI.AI_NUMERICHOST | AI.AI_NUMERICSERV),
    ("127.0.0.1", 80, 2, 1, 6, 0),  # plain ints come back as enums
    ("0.0.0.0", 443, 0, socket.SOCK_STREAM, 0, 0),
    ("255.255.255.255", 9, 0, socket.SOCK_DGRAM, 0, 0),
    ("::1", 80, 0, 0, 0, 0),
    ("::1", 80, socket.AF_INET6, socket.SOCK_STREAM, 0, 0),
    ("0:0:0:0:0:0:0:1", 80, 0, 0, 0, 0),  # canonicalized to ::1
    ("::", 0, 0, socket.SOCK_DGRAM, 0, 0),
    ("::ffff:127.0.0.1", 1, 0, 0, 0, 0),
    ("FE80::1", 5, 0, socket.SOCK_STREAM, 0, 0),
    (b"::1", "7", 0, 0, 0, 0),
    # No host: loopback (or, with AI_PASSIVE, wildcard) addresses.
    (None, 80, 0, 0, 0, 0),
    (None, 80, 0, socket.SOCK_STREAM, 0, AI.AI_PASSIVE),
    (None, 0, socket.AF_INET, socket.SOCK_DGRAM, 0, 0),
    (None, "53", socket.AF_INET6, 0, 0, AI.AI_PASSIVE),
    # Not answered from the fast path, but the same answers all the same.
    ("127.0.0.1", "http", 0, socket.SOCK_STREAM, 0, 0),
    ("127.0.0.1", 80, 0, 0, 0, AI.AI_CANONNAME),
    ("127.0.0.1", 80, socket.AF_INET6, 0, 0, AI.AI_V4MAPPED),
    ("127.0.0.1", 80, 0, socket.SOCK_SEQPACKET, 0, 0),
    ("127.0.0.1", 70000, 0, 0, 0, 0),
    ("localhost", 80, socket.AF_INET, socket.SOCK_STREAM, 0, 0),
]

NUMERIC_ERRORS = [
    ("127.0.0.1", 80, socket.AF_INET6, 0, 0, 0),  # address family for hostname
    ("::1", 80, socket.AF_INET, 0, 0, 0),
    ("127.0.0.1", 80, 0, socket.SOCK_RAW, 0, 0),  # a port for a raw socket
    ("127.0.0.1", 80, 0, socket.SOCK_STREAM, socket.IPPROTO_UDP, 0),
    ("127.0.0.1", -1, 0, 0, 0, 0),
    ("127.0.0.1", "no-such-service", 0, 0, 0, 0),
    (None, None, 0, 0, 0, 0),
]


def needs_ipv6(query):
    host = query[0]
    return query[2] == socket.AF_INET6 or (
        isinstance(host, (str, bytes))
        and b":" in (host if isinstance(host, bytes) else host.encode())
    )


def ids(queries):
    return [repr(q) for q in queries]


@pytest.mark.parametrize("query", NUMERIC_QUERIES, ids=ids(NUMERIC_QUERIES))
def test_getaddrinfo_matches_socket_module(loop, query):
    if needs_ipv6(query) and not HAS_IPV6:
        pytest.skip("no IPv6")
    host, port, family, type_, proto, flags = query
    expected = socket.getaddrinfo(host, port, family, type_, proto, flags)
    got = run(
        loop, loop.getaddrinfo(host, port, family=family, type=type_, proto=proto, flags=flags)
    )
    # repr() compares the enum types as well as the values.
    assert repr(got) == repr(expected)
    assert isinstance(got, list)


@pytest.mark.parametrize("query", NUMERIC_ERRORS, ids=ids(NUMERIC_ERRORS))
def test_getaddrinfo_errors_match_socket_module(loop, query):
    host, port, family, type_, proto, flags = query
    with pytest.raises(socket.gaierror) as expected:
        socket.getaddrinfo(host, port, family, type_, proto, flags)
    with pytest.raises(socket.gaierror) as got:
        run(loop, loop.getaddrinfo(host, port, family=family, type=type_, proto=proto, flags=flags))
    assert got.value.args == expected.value.args


@pytest.mark.parametrize(
    "port, exc_type",
    [(1.5, OSError), ([80], OSError)],
)
def test_getaddrinfo_bad_port_type(loop, port, exc_type):
    with pytest.raises(exc_type) as expected:
        socket.getaddrinfo("127.0.0.1", port)
    with pytest.raises(exc_type) as got:
        run(loop, loop.getaddrinfo("127.0.0.1", port))
    assert type(got.value) is type(expected.value)
    assert got.value.args == expected.value.args


def test_getaddrinfo_bad_host_type(loop):
    with pytest.raises(TypeError):
        run(loop, loop.getaddrinfo(127001, 80))


def test_getaddrinfo_unknown_name(loop):
    with pytest.raises(socket.gaierror) as info:
        run(loop, loop.getaddrinfo("nonexistent.invalid", 80))
    assert info.value.errno in (
        socket.EAI_NONAME,
        socket.EAI_AGAIN,
        getattr(socket, "EAI_NODATA", 0),
    )


def test_getaddrinfo_concurrent(loop):
    # Many queries at once, numeric and not, each with its own answer.
    async def main():
        hosts = ["127.0.0.1", "localhost", "::1" if HAS_IPV6 else "127.0.0.2", None] * 5
        answers = await asyncio.gather(
            *(loop.getaddrinfo(h, 1000 + i, type=socket.SOCK_STREAM) for i, h in enumerate(hosts))
        )
        return hosts, answers

    hosts, answers = run(loop, main())
    for i, (host, answer) in enumerate(zip(hosts, answers, strict=True)):
        assert answer == socket.getaddrinfo(host, 1000 + i, type=socket.SOCK_STREAM)


def test_getaddrinfo_on_closed_loop(loop):
    loop.close()
    for host in ("127.0.0.1", "localhost"):
        coro = loop.getaddrinfo(host, 80)
        with pytest.raises(RuntimeError, match="Event loop is closed"):
            coro.send(None)


def test_getaddrinfo_after_executor_shutdown(loop):
    run(loop, loop.shutdown_default_executor())
    for host in ("127.0.0.1", "localhost"):
        with pytest.raises(RuntimeError, match="Executor shutdown has been called"):
            run(loop, loop.getaddrinfo(host, 80))


def test_getaddrinfo_debug_logging(loop, caplog):
    loop.set_debug(True)
    caplog.set_level(logging.DEBUG, logger="asyncio")
    got = run(loop, loop.getaddrinfo("127.0.0.1", 80, type=socket.SOCK_STREAM))
    assert got == socket.getaddrinfo("127.0.0.1", 80, type=socket.SOCK_STREAM)
    messages = [r.getMessage() for r in caplog.records if r.name == "asyncio"]
    assert any(m.startswith("Get address info 127.0.0.1:80, type=") for m in messages), messages
    assert any(m.startswith("Getting address info 127.0.0.1:80, type=") for m in messages)


# ---- getnameinfo --------------------------------------------------------------------


NAMEINFO_QUERIES = [
    (("127.0.0.1", 80), socket.NI_NUMERICHOST | socket.NI_NUMERICSERV),
    (("127.0.0.1", 80), socket.NI_NUMERICHOST | socket.NI_NUMERICSERV | socket.NI_DGRAM),
    (("127.0.0.1", 80), socket.NI_NUMERICHOST),
    (("127.0.0.1", 80), socket.NI_NUMERICSERV),
    (("127.0.0.1", 53), socket.NI_DGRAM),
    (("127.0.0.1", 80), 0),
    (("::1", 443, 0, 0), socket.NI_NUMERICHOST | socket.NI_NUMERICSERV),
    (("::1", 443), 0),
]


@pytest.mark.parametrize("query", NAMEINFO_QUERIES, ids=ids(NAMEINFO_QUERIES))
def test_getnameinfo_matches_socket_module(loop, query):
    sockaddr, flags = query
    if ":" in sockaddr[0] and not HAS_IPV6:
        pytest.skip("no IPv6")
    expected = socket.getnameinfo(sockaddr, flags)
    assert run(loop, loop.getnameinfo(sockaddr, flags)) == expected


@pytest.mark.parametrize(
    "sockaddr, flags",
    [
        ("127.0.0.1", socket.NI_NUMERICHOST | socket.NI_NUMERICSERV),
        (("127.0.0.1",), socket.NI_NUMERICHOST | socket.NI_NUMERICSERV),
        (("127.0.0.1", "80"), socket.NI_NUMERICHOST | socket.NI_NUMERICSERV),
        (("127.0.0.1", 80), "flags"),
        (("nonexistent.invalid", 80), 0),
    ],
)
def test_getnameinfo_errors_match_socket_module(loop, sockaddr, flags):
    with pytest.raises(Exception) as expected:
        socket.getnameinfo(sockaddr, flags)
    with pytest.raises(Exception) as got:
        run(loop, loop.getnameinfo(sockaddr, flags))
    assert type(got.value) is type(expected.value)
    assert got.value.args == expected.value.args


def test_getnameinfo_on_closed_loop(loop):
    loop.close()
    for flags in (0, socket.NI_NUMERICHOST | socket.NI_NUMERICSERV):
        coro = loop.getnameinfo(("127.0.0.1", 80), flags)
        with pytest.raises(RuntimeError, match="Event loop is closed"):
            coro.send(None)
