"""The operations of the random driver: what it calls, on what, with what.

An operation (``Op``) names a target (the loop, a stream / pipe / datagram
transport, a server or a handle, with the protocol it was made with), the
state that target is put in first, whether the call runs in a task on the
running loop, the method and its arguments. Arguments are plain values
(including the odd objects below) or ``Tok`` tokens for what only exists
when the operation runs (a socket, a callback, a closed fd...): the child
(``fuzz_driver.py``) builds those. An operation's description depends on
the seed alone, so every loop runs the same sequence.

Hypothesis draws the operations: ``generate(seed, count, visit)`` runs its
generate phase only, with ``@seed`` and no database, so a seed always gives
the same sequence (``test_api_fuzz.test_driver_is_deterministic``). The
sequence also depends on ``count``: hypothesis plans its search by it.
"""

from __future__ import annotations

import math
import signal
import socket
import subprocess
import sys
from decimal import Decimal
from fractions import Fraction

from hypothesis import HealthCheck, Phase, Verbosity, given, seed, settings
from hypothesis import strategies as st

# The longest an awaited result may take on asyncio's loop (most take
# microseconds; a getaddrinfo goes through a thread).
AWAIT_TIMEOUT = 2.0


class Oops(Exception):
    """What the driver's odd objects raise: an outcome then names who called them."""


class OopsBase(BaseException):
    """A BaseException that is neither SystemExit nor KeyboardInterrupt."""


def short_repr(value) -> str:
    """A repr for the report: huge ints as powers, long strings by their length."""
    if isinstance(value, bool) or value is None:
        return repr(value)
    if isinstance(value, int) and abs(value) > 10**20:
        sign = "-" if value < 0 else ""
        digits = len(str(abs(value))) - 1
        if abs(value) == 10**digits:
            return f"{sign}10**{digits}"
        bits = abs(value).bit_length() - 1
        if abs(value) == 1 << bits:
            return f"{sign}2**{bits}"
    if isinstance(value, float) and not math.isfinite(value):
        return f"float('{value}')"
    if isinstance(value, (bytes, str)) and len(value) > 20:
        return f"{type(value).__name__}[{len(value)}]"
    if isinstance(value, tuple):
        inner = ", ".join(map(short_repr, value))
        return f"({inner},)" if len(value) == 1 else f"({inner})"
    if isinstance(value, list):
        return f"[{', '.join(map(short_repr, value))}]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{short_repr(k)}: {short_repr(v)}" for k, v in value.items()) + "}"
    return repr(value)


class Tok:
    """A value the child builds when the operation runs (a fixture, a callback...).

    The same token is the same object wherever it appears in one operation.
    """

    __slots__ = ("name", "params")

    def __init__(self, name, *params):
        self.name = name
        self.params = params

    def __repr__(self):
        if not self.params:
            return f"<{self.name}>"
        return f"<{self.name} {' '.join(map(short_repr, self.params))}>"

    def __eq__(self, other):
        return isinstance(other, Tok) and (self.name, self.params) == (other.name, other.params)

    def __hash__(self):
        return hash((self.name, self.params))


def toks(*names):
    return [Tok(name) for name in names]


def pick(*values):
    return st.sampled_from(values)


# ---- objects with odd dunder methods (their params may hold tokens) --------------


class Odd:
    def __init__(self, *params):
        self.params = params

    def __repr__(self):
        return f"{type(self).__name__}({', '.join(map(short_repr, self.params))})"


class FloatLike(Odd):
    def __float__(self):
        return self.params[0]


class FloatRaises(Odd):
    def __float__(self):
        raise Oops("__float__")


class FloatReturnsStr(Odd):
    def __float__(self):
        return "1.5"


class IndexLike(Odd):
    def __index__(self):
        return self.params[0]


class IndexRaises(Odd):
    def __index__(self):
        raise Oops("__index__")


class IntLike(Odd):
    def __int__(self):
        return self.params[0]


class BoolRaises(Odd):
    def __bool__(self):
        raise Oops("__bool__")


class FsPath(Odd):
    def __fspath__(self):
        if self.params[0] == "raise":
            raise Oops("__fspath__")
        return self.params[0]


class FileNo(Odd):
    """A file-like object: fileno() returns (or raises) what it was given."""

    def fileno(self):
        if self.params[0] == "raise":
            raise Oops("fileno")
        return self.params[0]

    def close(self):
        pass  # it owns nothing: the driver closes the fd it names


class Opaque(Odd):
    pass


class AwaitableObj(Odd):
    def __await__(self):
        return iter(())


# ---- vocabularies ------------------------------------------------------------------

NAN = float("nan")
INF = float("inf")

EDGE_INTS = [0, 1, -1, 2**31, 2**31 - 1, 2**32, 2**53 + 1, 2**63 - 1, 2**63, 2**64]
EDGE_INTS += [-(2**63) - 1, 10**400, -(10**400), True, False]
EDGE_FLOATS = [0.0, -0.0, 0.001, 1.5, NAN, INF, -INF, 1e308, -1e308, 5e-324]
NOT_NUMBERS = [None, "1", b"1", "nan", 1j, [], Opaque(), BoolRaises()]
NUMBER_LIKE = [Decimal("1.5"), Decimal("-1"), Decimal("NaN"), Fraction(1, 3), IntLike(1)]
NUMBER_LIKE += [FloatLike(0.5), FloatLike(NAN), FloatRaises(), FloatReturnsStr()]
NUMBER_LIKE += [IndexLike(1), IndexLike(10**30), IndexRaises()]
NUMBER_EDGES = EDGE_INTS + EDGE_FLOATS + NOT_NUMBERS + NUMBER_LIKE

NUMBER = st.one_of(
    pick(*NUMBER_EDGES),
    pick(*NUMBER_EDGES),
    st.floats(),
    st.integers(min_value=-(2**70), max_value=2**70),
)
SMALL_INT = st.one_of(st.integers(min_value=-2, max_value=70000), pick(*NUMBER_EDGES))

CALLBACK = pick(
    *toks("cb_ok", "cb_ok", "cb_ok", "cb_raise", "cb_base", "cb_stop", "cb_close"),
    *toks("cb_arity0", "partial_ok", "bound_ok", "class_cb", "coro_fn", "coro"),
    *[1, None, "cb", Opaque()],
)
# Callbacks run in another thread: none that touches the loop.
THREAD_CALLBACK = pick(
    *toks("cb_ok", "cb_raise", "cb_base", "cb_arity0", "partial_ok", "class_cb", "coro_fn"),
    *[1, None],
)
CB_ARGS = st.lists(st.one_of(st.integers(-5, 5), pick(None, "a", NAN)), max_size=6)
CONTEXT = pick(None, Tok("ctx"), Tok("ctx"), 1, {}, "ctx", Opaque())
CALL_KW = {"context": CONTEXT}
WHEN = st.one_of(NUMBER, st.builds(lambda x: Tok("now+", x), pick(0, -1, 0.001, 3600, NAN, -INF)))

FD = pick(
    *toks("pipe_r", "pipe_w", "sock", "sock_fd", "sock_closed", "file_closed", "closed_fd"),
    *toks("unopened_fd", "reg_fd", "reg_file", "devnull_fd", "listen_sock", "udp_sock"),
    *[-1, -(2**31), 2**31, 2**63, 10**30, 3.0, "3", b"3", None, True],
    *[IndexLike(Tok("pipe_r")), IndexLike(-1), FileNo(Tok("pipe_r")), FileNo(-1)],
    *[FileNo(2**31), FileNo("3"), FileNo("raise"), FileNo(Tok("closed_fd"))],
)
# Never SIGCHLD or SIGPIPE: a handler left on them would change later operations.
SIGNAL = pick(
    *[signal.SIGUSR1, signal.SIGUSR2, int(signal.SIGUSR2), signal.SIGHUP, signal.SIGWINCH],
    *[signal.SIGINT, signal.SIGKILL, signal.SIGSTOP, 0, -1, 65, signal.NSIG, 2**31, 2**64],
    *["SIGINT", None, 10.0, True, IndexLike(int(signal.SIGUSR1))],
)
SOCK = pick(
    *toks("sock", "sock", "tcp_sock", "sock_blocking", "sock_closed", "listen_sock"),
    *toks("udp_sock", "unconnected_tcp", "ssl_sock", "sock_fd"),
    *[FileNo(Tok("sock_fd")), None, 1, "sock"],
)
NBYTES = st.one_of(
    st.integers(min_value=-1, max_value=70000),
    pick(0, -1, 2**31, 2**63, 2**64, 10**30, 1.5, "10", None, True, IndexLike(10)),
)
BUFFER_KINDS = ["bytearray", "mv", "mv_strided", "mv_int32", "mv_2d", "mv_released", "array"]
BUFFER_KINDS += ["bytes_sub", "mv_bytearray"]
DATA = st.one_of(
    st.builds(lambda n: Tok("bytes", n), st.integers(0, 300)),
    st.builds(lambda n: Tok("bytes", n), st.integers(0, 300_000)),
    st.builds(lambda kind, n: Tok(kind, n), pick(*BUFFER_KINDS), st.integers(0, 70_000)),
    pick("str", 1, None, 1.5, [b"x"], (b"x",), Opaque(), "", b""),
)
# For the sock_* methods: the peer does not read, so a send of more than the
# socket's buffer would wait (and time out) on every loop.
SOCK_DATA = st.one_of(
    st.builds(lambda n: Tok("bytes", n), st.integers(0, 30_000)),
    st.builds(lambda kind, n: Tok(kind, n), pick(*BUFFER_KINDS), st.integers(0, 7_000)),
    pick("str", 1, None, 1.5, [b"x"], Opaque(), b""),
)
RECV_BUF = st.one_of(
    st.builds(
        lambda kind, n: Tok(kind, n),
        pick("bytearray", "mv_bytearray", "mv_strided_rw", "array_rw", "mv"),
        st.integers(0, 5000),
    ),
    pick(None, 1, "buf", bytearray(), Tok("mv_released", 10)),
)
ADDR = pick(
    *toks("addr_listen", "addr_listen", "addr_refused", "udp_addr", "upath_listen"),
    Tok("upath_missing"),
    *[("127.0.0.1",), ("127.0.0.1", -1), ("127.0.0.1", 65536), ("127.0.0.1", 2**70)],
    *[("127.0.0.1", "x"), ("127.0.0.1", 0), ("::1", 0, 0, 0), ("127.0.0.1", 1, 2, 3, 4)],
    *[(None, 80), (b"127.0.0.1", 1), (1, 2), "127.0.0.1", b"addr", 123, None, ()],
)
# Hosts that need no DNS: numeric, or failing before any lookup.
HOST = pick("127.0.0.1", "127.0.0.1", "::1", "0.0.0.0", None, "", 1, b"127.0.0.1")
HOST_ODD = pick(["127.0.0.1"], "a" * 64)
PORT = pick(Tok("port"), Tok("port"), Tok("closed_port"), 0, -1, 65536, 2**64, "x", None, 1.5)
FAMILY = pick(0, socket.AF_INET, socket.AF_INET6, socket.AF_UNIX, -1, 2**31, 2**64, "x", None)
SOCKTYPE = pick(0, socket.SOCK_STREAM, socket.SOCK_DGRAM, socket.SOCK_RAW, -1, 99, 2**40, "x")
AI_FLAGS = pick(0, socket.AI_PASSIVE, socket.AI_NUMERICHOST, socket.AI_CANONNAME, -1, 2**32)
BOOLISH = pick(True, False, None, 1, 0, "x", BoolRaises(), Opaque())
BACKLOG = pick(100, 0, -1, 2**31, 2**63, 1.5, "x", None, True)
FACTORY = pick(
    *toks("proto", "proto", "proto", "bproto", "baseproto", "factory_raises", "factory_none"),
    *[Tok("factory_opaque"), 1, None],
)
UPATH = pick(
    *toks("upath_new", "upath_new", "upath_listen", "upath_missing", "upath_regular"),
    *toks("upath_long", "upath_abstract", "upath_nodir", "upath_new_bytes", "upath_new_pathlib"),
    *[FsPath(Tok("upath_new")), FsPath("raise"), FsPath(1), "", None, 1],
)
PIPE_OBJ = pick(
    *toks("rfile", "wfile", "sock", "reg_file", "devnull_r", "devnull_w", "file_closed"),
    *[FileNo(Tok("closed_fd")), FileNo(Tok("unopened_fd")), FileNo(-1), FileNo(2**40)],
    *[FileNo("raise"), FileNo("x"), 1, None, "pipe"],
)
TIMEOUTISH = pick(None, 0, -1, 0.5, NAN, INF, "1", 10**400, BoolRaises())
LIMIT = st.one_of(st.integers(-1, 2**20), pick(None, 2**64, 2**63, -(2**63), 1.5, NAN, "1", True))
EXTRA_KEY = pick("peername", "sockname", "socket", "pipe", "subprocess", "sslcontext", "nope")
EXTRA_KEY_ODD = pick(1, None, b"x")


# ---- methods -----------------------------------------------------------------------


class Method:
    """How to draw the arguments of one method, and what of its result to compare.

    ``params``: (name, strategy) per positional argument; ``star``: a strategy of
    extra positional arguments; ``kw``: optional keyword arguments (at most two
    are passed: with more, which one an error is about, and so its class,
    depends on the order a loop checks them).
    ``awaits``: a returned awaitable is awaited (its outcome is the operation's).
    ``value``: the returned value is compared (it must be deterministic).
    ``fx``: the effects of the iteration after the call are compared.
    ``crash_only``: only a crash or hang counts (the outcome is not compared).
    ``states``: the target states it is drawn with (None: all of the target's).
    """

    def __init__(self, name, params=(), star=None, kw=None, **options):
        self.name = name
        self.params = tuple(params)
        self.star = star
        self.kw = kw or {}
        self.awaits = options.pop("awaits", False)
        self.value = options.pop("value", False)
        self.fx = options.pop("fx", False)
        self.crash_only = options.pop("crash_only", False)
        self.states = options.pop("states", None)
        self.weight = options.pop("weight", 1)
        self.timeout = options.pop("timeout", AWAIT_TIMEOUT)
        if options:
            raise TypeError(f"unknown options {sorted(options)}")

    def arguments(self):
        pos = st.tuples(*(s for _, s in self.params))
        star = self.star if self.star is not None else st.just([])
        kw = st.just({})
        if self.kw:
            kw = st.lists(pick(*sorted(self.kw)), max_size=2, unique=True).flatmap(
                lambda keys: st.fixed_dictionaries({k: self.kw[k] for k in keys})
            )
        return st.tuples(pos, star, kw).map(
            lambda t: (tuple(t[0]) + tuple(t[1]), tuple(sorted(t[2].items())))
        )

    def names(self, nargs):
        names = [n for n, _ in self.params]
        return names + [f"*{i}" for i in range(nargs - len(names))]


def awaited(name, params=(), star=None, kw=None, **options):
    return Method(name, params, star, kw, awaits=True, **options)


CORO_LIKE = [*toks("coro", "coro", "coro_raise", "coro_base", "future_done", "gen", "coro_fn")]
CORO_LIKE += [AwaitableObj(), 1, None]
RUN_ARG = [*toks("coro", "coro_raise", "coro_base", "coro_stop", "future_done")]
RUN_ARG += [*toks("future_cancelled", "future_other_loop", "task_done", "gen")]
RUN_ARG += [AwaitableObj(), 1, None]

# Deadlines asyncio's loop reaches at once. No NaN: asyncio's timer heap does
# not order it, so whether such a timer (and the ones after it) fires depends
# on the heap's shape.
SOON = [-INF, 0, -1, False, -1e308, 5e-324]

LOOP_METHODS = [
    Method("call_soon", [("callback", CALLBACK)], CB_ARGS, CALL_KW, fx=True, weight=4),
    Method("call_soon_threadsafe", [("callback", CALLBACK)], CB_ARGS, CALL_KW, fx=True, weight=2),
    Method("call_later", [("delay", NUMBER), ("callback", CALLBACK)], CB_ARGS, CALL_KW, weight=4),
    Method("call_at", [("when", WHEN), ("callback", CALLBACK)], CB_ARGS, CALL_KW, weight=4),
    Method("time"),
    Method("create_future"),
    Method(
        "create_task",
        [("coro", pick(*CORO_LIKE))],
        kw={"name": pick(None, "t", 1, Opaque(), b"x"), "context": CONTEXT},
        fx=True,
        weight=2,
    ),
    Method("run_until_complete", [("future", pick(*RUN_ARG))], weight=2),
    Method("run_forever", states=("closed", "running", "stopped")),
    Method("stop", fx=True),
    Method("close"),
    Method("is_running", value=True),
    Method("is_closed", value=True),
    # Not BoolRaises(): asyncio's loop stores it, then fails everywhere.
    Method("set_debug", [("enabled", pick(True, False, None, 1, 0, "x", Opaque()))]),
    Method("get_debug", value=True),
    Method(
        "set_exception_handler",
        [("handler", pick(None, Tok("handler_ok"), Tok("handler_raises"), 1, "h", Opaque()))],
    ),
    Method(
        "call_exception_handler",
        [("context", pick({"message": "m"}, {}, {"exception": 1}, None, 1, "ctx"))],
    ),
    Method(
        "set_task_factory",
        [("factory", pick(None, *toks("task_factory", "task_factory_raises"), 1, Opaque()))],
    ),
    Method("get_task_factory", value=True),
    awaited(
        "run_in_executor",
        [
            ("executor", pick(None, *toks("tpe", "tpe_shutdown"), 1, Opaque())),
            ("func", THREAD_CALLBACK),
        ],
        CB_ARGS,
    ),
    Method(
        "set_default_executor",
        [("executor", pick(*toks("tpe", "tpe_shutdown"), None, 1, Opaque()))],
    ),
    awaited("shutdown_asyncgens"),
    awaited("shutdown_default_executor"),
    Method("add_reader", [("fd", FD), ("callback", CALLBACK)], CB_ARGS, weight=3),
    Method("add_writer", [("fd", FD), ("callback", CALLBACK)], CB_ARGS, weight=3),
    Method("remove_reader", [("fd", FD)], value=True, weight=2),
    Method("remove_writer", [("fd", FD)], value=True, weight=2),
    # asyncio's selector keeps a closed fd's registration, so what it does
    # next depends on its state: only a crash or hang counts.
    Method(
        "@stale_fd",
        [("variant", pick("remove", "readd", "readd_other", "writer"))],
        crash_only=True,
        weight=2,
    ),
    Method("add_signal_handler", [("sig", SIGNAL), ("callback", CALLBACK)], CB_ARGS, weight=2),
    Method("remove_signal_handler", [("sig", SIGNAL)], value=True),
    awaited("sock_recv", [("sock", SOCK), ("nbytes", NBYTES)], weight=2),
    awaited("sock_recv_into", [("sock", SOCK), ("buf", RECV_BUF)]),
    awaited("sock_recvfrom", [("sock", SOCK), ("bufsize", NBYTES)]),
    awaited("sock_recvfrom_into", [("sock", SOCK), ("buf", RECV_BUF)], kw={"nbytes": NBYTES}),
    awaited("sock_sendall", [("sock", SOCK), ("data", SOCK_DATA)], weight=2),
    awaited("sock_sendto", [("sock", SOCK), ("data", SOCK_DATA), ("address", ADDR)]),
    awaited("sock_connect", [("sock", SOCK), ("address", ADDR)], weight=2),
    awaited("sock_accept", [("sock", SOCK)]),
    awaited(
        "sock_sendfile",
        [("sock", SOCK), ("file", pick(*toks("reg_file", "reg_file_text", "file_closed"), 1))],
        kw={"offset": SMALL_INT, "count": SMALL_INT, "fallback": BOOLISH},
    ),
    awaited(
        "getaddrinfo",
        [("host", st.one_of(HOST, HOST, HOST_ODD)), ("port", PORT)],
        kw={"family": FAMILY, "type": SOCKTYPE, "proto": SMALL_INT, "flags": AI_FLAGS},
        value=True,
        weight=2,
    ),
    awaited(
        "getnameinfo",
        [
            (
                "sockaddr",
                pick(
                    *[("127.0.0.1", 80), ("127.0.0.1", 0), ("127.0.0.1",), ("127.0.0.1", 80, 0)],
                    *[("127.0.0.1", -1), ("127.0.0.1", 2**20), ("256.0.0.1", 80)],
                    *[(b"127.0.0.1", 80), "127.0.0.1", None, 1],
                ),
            )
        ],
        kw={"flags": pick(0, socket.NI_NUMERICHOST, socket.NI_NAMEREQD, -1, 2**31, "x", None)},
        value=True,
    ),
    awaited(
        "create_connection",
        [("protocol_factory", FACTORY), ("host", HOST), ("port", PORT)],
        kw={
            "sock": SOCK,
            "local_addr": pick(("127.0.0.1", 0), ("1.2.3.4", 0), Tok("addr_listen"), "x", 1),
            "server_hostname": pick("x", "", 1),
            "ssl": pick(None, False, 0),
            "ssl_handshake_timeout": TIMEOUTISH,
            "happy_eyeballs_delay": TIMEOUTISH,
            "interleave": pick(None, 0, 1, -1, 2**64, "x", 1.5),
            "family": FAMILY,
            "proto": SMALL_INT,
            "flags": AI_FLAGS,
        },
        weight=3,
    ),
    awaited(
        "create_server",
        [
            ("protocol_factory", FACTORY),
            # Loopback only: nothing listens on the machine's other interfaces.
            ("host", pick("127.0.0.1", "::1", 1, b"127.0.0.1", ["127.0.0.1"])),
            ("port", pick(0, Tok("port"), -1, 65536, 2**64, "x", 1.5)),
        ],
        kw={
            "family": FAMILY,
            "flags": AI_FLAGS,
            "sock": SOCK,
            "backlog": BACKLOG,
            "reuse_address": BOOLISH,
            "reuse_port": BOOLISH,
            "ssl_handshake_timeout": TIMEOUTISH,
            "start_serving": BOOLISH,
        },
        weight=3,
    ),
    awaited(
        "create_unix_connection",
        [("protocol_factory", FACTORY), ("path", UPATH)],
        kw={"sock": SOCK, "server_hostname": pick("x", 1)},
        weight=2,
    ),
    awaited(
        "create_unix_server",
        [("protocol_factory", FACTORY), ("path", UPATH)],
        kw={"sock": SOCK, "backlog": BACKLOG, "start_serving": BOOLISH},
        weight=2,
    ),
    awaited(
        "create_datagram_endpoint",
        [("protocol_factory", pick(Tok("dproto"), Tok("dproto"), Tok("proto"), 1))],
        kw={
            "local_addr": pick(
                *[("127.0.0.1", 0), ("127.0.0.1", 0), ("::1", 0), ("1.2.3.4", 0)],
                *[Tok("udp_addr"), Tok("upath_new"), "x", 1, ("127.0.0.1",)],
            ),
            "remote_addr": pick(
                *[Tok("udp_addr"), ("127.0.0.1", 0), ("127.0.0.1", -1), "x", 1],
                Tok("upath_missing"),
            ),
            "family": FAMILY,
            "proto": SMALL_INT,
            "flags": AI_FLAGS,
            "reuse_port": BOOLISH,
            "allow_broadcast": BOOLISH,
            "sock": SOCK,
        },
        weight=3,
    ),
    awaited("connect_read_pipe", [("protocol_factory", FACTORY), ("pipe", PIPE_OBJ)]),
    awaited("connect_write_pipe", [("protocol_factory", FACTORY), ("pipe", PIPE_OBJ)]),
    # These spawn (only /bin/true, or sh -c with a fixed command): few of them.
    awaited(
        "subprocess_exec",
        [
            ("protocol_factory", pick(Tok("sproto"), Tok("sproto"), 1)),
            (
                "program",
                pick(
                    *["/bin/true", "true", "/nonexistent/x", "", ".", 1, None, b"/bin/true"],
                    *[Tok("path_true"), FsPath("/bin/true")],
                ),
            ),
        ],
        st.lists(pick("x", 1, None, b"x"), max_size=2),
        {
            "stdin": pick(None, subprocess.PIPE, subprocess.DEVNULL, -4, 10**6, Tok("pipe_r")),
            "stdout": pick(None, subprocess.PIPE, subprocess.DEVNULL, -4, 2**40, "x"),
            "stderr": pick(None, subprocess.PIPE, subprocess.STDOUT, -4),
            "cwd": pick("", "/nonexistent", ".", 1, b"."),
            "env": pick({}, {"A": "1"}, {1: 2}, {"A=B": "1"}, {"A": None}, "x"),
            "pass_fds": pick((), (-1,), (10**6,), ("x",), 1),
            "close_fds": pick(True, False, BoolRaises()),
            "shell": pick(True, False),
            "text": pick(True, False),
            "encoding": pick("utf-8"),
            "bufsize": pick(0, 1, -1),
            "start_new_session": pick(True, False),
            "executable": pick("/bin/true", "/nonexistent"),
            "umask": pick(0o22, -1),
        },
        weight=2,
        timeout=5.0,
    ),
    awaited(
        "subprocess_shell",
        [
            ("protocol_factory", pick(Tok("sproto"), Tok("sproto"), 1)),
            ("cmd", pick("true", "exit 3", b"true", "", 1, None, ["true"])),
        ],
        kw={
            "stdin": pick(None, subprocess.PIPE, -4),
            "cwd": pick("", "/nonexistent", "."),
            "shell": pick(True, False),
            "universal_newlines": pick(True, False),
        },
        timeout=5.0,
    ),
    awaited(
        "@sleep",
        [
            (
                "delay",
                pick(
                    *[0, -1, -0.0, -INF, 5e-324, 1e-9, -(10**400), Decimal("-1")],
                    *[Decimal("0.001"), Fraction(1, 1000), "1", None, FloatLike(0.0)],
                ),
            )
        ],
        states=("fresh", "running"),
        timeout=0.5,
    ),
    awaited(
        "@timer_fires",
        [
            (
                "when",
                st.one_of(
                    pick(*SOON),
                    st.builds(lambda x: Tok("now+", x), pick(-INF, -1, 0, -0.0, 1e-9)),
                ),
            )
        ],
        value=True,
        states=("fresh", "running"),
    ),
]

STREAM_PROTOS = ("proto", "proto", "bproto", "bproto_pause", "bproto_close", "bproto_abort")
STREAM_PROTOS += ("bproto_small", "bproto_empty", "bproto_raises", "proto_raises")
STREAM_PROTOS += ("proto_eof_true", "baseproto")
STREAM_STATES = ("open", "open", "open", "paused", "closing", "closed", "aborted")
STREAM_STATES += ("peer_closed", "eof_written", "loop_closed")

TRANSPORT_COMMON = [
    Method("close", fx=True),
    Method("is_closing", value=True),
    Method(
        "get_extra_info",
        [("name", st.one_of(EXTRA_KEY, EXTRA_KEY, EXTRA_KEY_ODD))],
        kw={"default": pick(None, 1)},
        value=True,
    ),
    Method("set_protocol", [("protocol", pick(Tok("proto_inst"), None, 1, Opaque()))], fx=True),
    Method("get_protocol"),
]
WRITELINES_ARG = st.one_of(
    st.lists(DATA, max_size=4),
    st.lists(DATA, max_size=4).map(tuple),
    pick(1, None, "ab", b"ab", Tok("gen_data"), [b"a", "b", b"c"], [b"a", 1]),
)
WRITE_METHODS = [
    Method("write", [("data", DATA)], fx=True, weight=5),
    Method("writelines", [("list_of_data", WRITELINES_ARG)], fx=True, weight=3),
    Method("write_eof", fx=True, weight=2),
    Method("can_write_eof", value=True),
    Method("abort", fx=True),
    Method("get_write_buffer_size"),
    Method("get_write_buffer_limits"),
    Method("set_write_buffer_limits", kw={"high": LIMIT, "low": LIMIT}, fx=True, weight=2),
]
READ_METHODS = [
    Method("pause_reading", fx=True, weight=2),
    Method("resume_reading", fx=True, weight=2),
    Method("is_reading", value=True),
    # The peer sends n bytes (at most what its socket buffer takes at once).
    Method("@peer_send", [("n", st.integers(0, 30_000)), ("then_close", st.booleans())], fx=True),
]
DGRAM_METHODS = TRANSPORT_COMMON + [
    Method(
        "sendto",
        [("data", DATA)],
        kw={
            "addr": pick(
                *[Tok("udp_addr"), Tok("udp_addr"), None, ("127.0.0.1", 0), ("127.0.0.1",)],
                *[("::1", 1, 0, 0), "x", 1, Tok("upath_missing")],
            )
        },
        fx=True,
        weight=4,
    ),
    Method("abort", fx=True),
    Method("get_write_buffer_size"),
    Method("@peer_send", [("n", st.integers(0, 2000)), ("then_close", st.booleans())], fx=True),
]
SERVER_METHODS = [
    Method("close", fx=True, weight=2),
    Method("is_serving", value=True),
    Method("get_loop"),
    awaited("start_serving"),
    # On a server still open these wait for ever (on asyncio's loop too).
    awaited("wait_closed", states=("closed", "loop_closed")),
    awaited("serve_forever", states=("closed", "loop_closed")),
    Method("@sockets"),
    Method("@connect", fx=True, weight=2),
]
HANDLE_OTHER = pick(Tok("self"), Tok("other_timer"), 1, None)
HANDLE_METHODS = [
    Method("cancel", fx=True, weight=2),
    Method("cancelled", value=True),
    # Handle.get_context() is new in 3.12.
    *([Method("get_context")] if sys.version_info >= (3, 12) else []),
    Method("@weakref"),
    Method("@hash"),
    Method("@repr"),
    Method("@eq", [("other", HANDLE_OTHER)]),
]
TIMER_METHODS = HANDLE_METHODS + [
    Method("when"),
    Method("@lt", [("other", HANDLE_OTHER)]),
    Method("@le", [("other", HANDLE_OTHER)]),
]
PIPE_STATES = ("open", "open", "paused", "closing", "closed", "peer_closed", "loop_closed")
HANDLE_STATES = ("pending", "pending", "cancelled", "ran", "loop_closed")

# (target kinds, states, methods, weight). A state listed twice is drawn twice
# as often. "running" runs the call in a task on the running loop; the other
# targets are called from a task or from outside, both drawn.
TARGETS = [
    (("loop",), ("fresh", "fresh", "closed", "running", "running", "stopped"), LOOP_METHODS, 10),
    (
        tuple(f"{kind}/{proto}" for kind in ("tcp", "unix") for proto in STREAM_PROTOS),
        STREAM_STATES,
        TRANSPORT_COMMON + WRITE_METHODS + READ_METHODS,
        6,
    ),
    (
        ("rpipe/proto", "rpipe/proto", "rpipe/proto_raises"),
        PIPE_STATES,
        TRANSPORT_COMMON + READ_METHODS + [Method("abort"), Method("write", [("data", DATA)])],
        2,
    ),
    (
        ("wpipe/proto",),
        PIPE_STATES,
        TRANSPORT_COMMON + WRITE_METHODS + [Method("pause_reading")],
        2,
    ),
    (("udp/dproto",), ("open", "open", "closing", "closed", "loop_closed"), DGRAM_METHODS, 2),
    (
        ("server", "userver"),
        ("serving", "serving", "not_serving", "closed", "loop_closed"),
        SERVER_METHODS,
        1,
    ),
    (("handle",), HANDLE_STATES, HANDLE_METHODS, 1),
    (("timer",), HANDLE_STATES, TIMER_METHODS, 1),
]

METHOD_INDEX = {
    (kind.split("/")[0], method.name): method
    for kinds, _, methods, _ in TARGETS
    for kind in kinds
    for method in methods
}


class Op:
    """One operation: the target (kind, state), whether it runs in a task, the call."""

    __slots__ = ("kind", "state", "in_task", "method", "args", "kwargs")

    def __init__(self, kind, state, in_task, method, args, kwargs):
        if kind == "loop":
            in_task = state == "running"  # for the loop, the state says it
        elif state == "loop_closed":
            in_task = False
        self.kind, self.state, self.in_task = kind, state, in_task
        self.method, self.args, self.kwargs = method, args, kwargs

    def spec(self) -> Method:
        return METHOD_INDEX[(self.kind.split("/")[0], self.method)]

    def describe(self) -> str:
        where = self.state + (", in a task" if self.in_task and self.kind != "loop" else "")
        args = [short_repr(a) for a in self.args]
        args += [f"{k}={short_repr(v)}" for k, v in self.kwargs]
        return f"{self.kind}[{where}].{self.method}({', '.join(args)})"

    def kinds(self) -> dict:
        """Each argument's kind (int, nan, str, <sock>...), for the allowance table."""
        names = self.spec().names(len(self.args))
        out = {name: kind_of(v) for name, v in zip(names, self.args, strict=True)}
        out.update({k: kind_of(v) for k, v in self.kwargs})
        return out


def kind_of(value) -> str:
    if isinstance(value, bool):
        return "bool"
    if value is None:
        return "None"
    if isinstance(value, int):
        if value < 0:
            return "negative-int" if value >= -(2**31) else "huge-negative-int"
        return "int" if value < 2**31 else "huge-int"
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return "negative-float" if math.copysign(1, value) < 0 else "float"
    if isinstance(value, Tok):
        return f"<{value.name}>"
    return type(value).__name__


def _method_ops(kinds, states, method):
    allowed = tuple(s for s in states if method.states is None or s in method.states)
    return st.builds(
        lambda kind, state, in_task, args: Op(kind, state, in_task, method.name, *args),
        pick(*kinds),
        pick(*allowed),
        st.booleans(),
        method.arguments(),
    )


def op_strategy():
    branches = []
    for kinds, states, methods, weight in TARGETS:
        group = []
        for method in methods:
            group += [_method_ops(kinds, states, method)] * method.weight
        branches += [st.one_of(group)] * weight
    return st.one_of(branches)


def generate(seed_value: int, count: int, visit) -> None:
    """Call visit(index, op) for each of the `count` operations the seed gives."""
    index = [0]

    @settings(
        database=None,
        max_examples=count,
        phases=[Phase.generate],
        deadline=None,
        suppress_health_check=list(HealthCheck),
        verbosity=Verbosity.quiet,
        print_blob=False,
    )
    @seed(seed_value)
    @given(op_strategy())
    def each(op):
        visit(index[0], op)
        index[0] += 1

    each()


def generate_list(seed_value: int, count: int) -> list:
    ops = []
    generate(seed_value, count, lambda i, op: ops.append(op))
    return ops
