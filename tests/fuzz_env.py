"""The fixtures of one operation of the random driver: a new loop, the values.

``Env`` makes a new loop of the given kind and, on demand, what an
operation's tokens stand for (``<sock>`` is a connected non-blocking socket
with data waiting, ``<closed_fd>`` an fd number that was open and is not,
``<cb_raise>`` a callback raising ``Oops``...); its clean-up closes all of it.
The protocols record their events in ``env.fx``, which the driver compares.
Every file it makes is in the operation's own temporary directory.
"""

from __future__ import annotations

import array
import asyncio
import concurrent.futures
import contextvars
import errno as errno_mod
import functools
import os
import socket
import traceback
from pathlib import Path

from .fuzz_ops import Odd, Oops, OopsBase, Opaque, Tok

# A contextvar the callbacks report, to compare the context they run in.
VAR = contextvars.ContextVar("fuzz_var", default="-")


class BytesSub(bytes):
    def __repr__(self):
        return f"BytesSub[{len(self)}]"


# fds no file has: well past every fd the child opens (the kernel hands out
# the lowest free number). CLOSED_FD was open once.
CLOSED_FD = 900
UNOPENED_FD = 1000


def new_loop(name):
    if name == "asyncio":
        return asyncio.new_event_loop()
    import fastloop

    return fastloop.new_event_loop()


class Proto(asyncio.Protocol):
    """Records its events in the env's effect log (sizes summed, not chunked)."""

    variant = "proto"

    def __init__(self, env, tag="p"):
        self.env = env
        self.tag = tag
        self.transport = None
        self.received = 0

    def connection_made(self, transport):
        self.transport = transport
        self.env.fx.append(f"{self.tag}.made")

    def data_received(self, data):
        self.received += len(data)
        if self.variant == "proto_raises":
            raise Oops("data_received")

    def eof_received(self):
        self.env.fx.append(f"{self.tag}.eof")
        return True if self.variant == "proto_eof_true" else None

    def connection_lost(self, exc):
        self.env.fx.append(f"{self.tag}.lost:{type(exc).__name__ if exc else None}")

    def pause_writing(self):
        self.env.fx.append(f"{self.tag}.pause_writing")

    def resume_writing(self):
        self.env.fx.append(f"{self.tag}.resume_writing")


class BProto(asyncio.BufferedProtocol):
    variant = "bproto"

    def __init__(self, env, tag="p"):
        self.env = env
        self.tag = tag
        self.transport = None
        self.received = 0
        self.buf = bytearray(64 if self.variant == "bproto_small" else 65536)

    def connection_made(self, transport):
        self.transport = transport
        self.env.fx.append(f"{self.tag}.made")

    def get_buffer(self, sizehint):
        v = self.variant
        if v == "bproto_pause":
            self.transport.pause_reading()
        elif v == "bproto_close":
            self.transport.close()
        elif v == "bproto_abort":
            self.transport.abort()
        elif v == "bproto_empty":
            return bytearray()
        elif v == "bproto_raises":
            raise Oops("get_buffer")
        return self.buf

    def buffer_updated(self, nbytes):
        self.received += nbytes

    def eof_received(self):
        self.env.fx.append(f"{self.tag}.eof")

    def connection_lost(self, exc):
        self.env.fx.append(f"{self.tag}.lost:{type(exc).__name__ if exc else None}")


class BaseProto(asyncio.BaseProtocol):
    def __init__(self, env, tag="p"):
        self.env = env
        self.tag = tag
        self.received = 0

    def connection_made(self, transport):
        self.env.fx.append(f"{self.tag}.made")

    def connection_lost(self, exc):
        self.env.fx.append(f"{self.tag}.lost:{type(exc).__name__ if exc else None}")


class DProto(asyncio.DatagramProtocol):
    def __init__(self, env, tag="p"):
        self.env = env
        self.tag = tag
        self.received = 0

    def connection_made(self, transport):
        self.env.fx.append(f"{self.tag}.made")

    def datagram_received(self, data, addr):
        self.received += len(data)

    def error_received(self, exc):
        self.env.fx.append(f"{self.tag}.error:{type(exc).__name__}")

    def connection_lost(self, exc):
        self.env.fx.append(f"{self.tag}.lost:{type(exc).__name__ if exc else None}")


class SProto(asyncio.SubprocessProtocol):
    def __init__(self, env):
        self.env = env
        self.exited = None

    def process_exited(self):
        self.exited = True


def proto_class(variant):
    if variant.startswith("bproto"):
        return type(variant, (BProto,), {"variant": variant})
    if variant == "baseproto":
        return BaseProto
    return type(variant, (Proto,), {"variant": variant})


def _errno_name(exc):
    code = getattr(exc, "errno", None)
    if isinstance(exc, socket.gaierror):
        return f"EAI{code}"
    if isinstance(code, int):
        return errno_mod.errorcode.get(code, str(code))
    return None


def outcome_of(exc: BaseException) -> str:
    name = type(exc).__name__
    code = _errno_name(exc) if isinstance(exc, OSError) else None
    return f"raise:{name}[{code}]" if code else f"raise:{name}"


class Env:
    """The fixtures of one operation: a new loop, lazily built values, cleanup."""

    def __init__(self, loop_name, tmp):
        self.loop_name = loop_name
        self.tmp = tmp
        self.fx: list[str] = []
        self.handler_calls: list[str] = []
        self.cache: dict = {}
        self.owned: list = []  # objects with close(): sockets, files, loops
        self.made: list = []  # transports and servers the operation made
        self.executors: list = []
        self.counter = 0
        self.trace = None  # a list: --only collects the tracebacks
        self.loop = new_loop(loop_name)
        self.loop.set_exception_handler(self._record)

    def _record(self, loop, context):
        exc = context.get("exception")
        self.handler_calls.append(type(exc).__name__ if exc is not None else "no-exception")

    def path(self, name):
        self.counter += 1
        return os.path.join(self.tmp, f"{name}{self.counter}")

    def own(self, obj):
        self.owned.append(obj)
        return obj

    # -- values ----------------------------------------------------------------

    def val(self, value):
        if isinstance(value, Tok):
            if value not in self.cache:
                self.cache[value] = getattr(self, "mk_" + value.name.replace("+", "_plus"))(
                    *value.params
                )
            return self.cache[value]
        if isinstance(value, Odd):
            return type(value)(*(self.val(p) for p in value.params))
        if isinstance(value, tuple):
            return tuple(self.val(v) for v in value)
        if isinstance(value, list):
            return [self.val(v) for v in value]
        if isinstance(value, dict):
            return {k: self.val(v) for k, v in value.items()}
        return value

    # callbacks
    def mk_cb_ok(self):
        def cb_ok(*args):
            self.fx.append(f"cb{args!r}:{VAR.get()}")

        return cb_ok

    def mk_cb_raise(self):
        def cb_raise(*args):
            self.fx.append("cb_raise")
            raise Oops("callback")

        return cb_raise

    def mk_cb_base(self):
        def cb_base(*args):
            self.fx.append("cb_base")
            raise OopsBase("callback")

        return cb_base

    def mk_cb_stop(self):
        return lambda *args: self.loop.stop()

    def mk_cb_close(self):
        return lambda *args: self.loop.close()

    def mk_cb_arity0(self):
        def cb_arity0():
            self.fx.append("cb_arity0")

        return cb_arity0

    def mk_partial_ok(self):
        return functools.partial(self.mk_cb_ok(), "p")

    def mk_bound_ok(self):
        env = self

        class Holder:
            def method(self, *args):
                env.fx.append(f"bound{args!r}")

        return Holder().method

    def mk_class_cb(self):
        env = self

        class Called:
            def __init__(self, *args):
                env.fx.append(f"class{args!r}")

        return Called

    def mk_coro_fn(self):
        async def coro_fn(*args):
            self.fx.append("coro_fn ran")

        return coro_fn

    def _coro(self, body):
        coro = body()
        self.owned.append(coro)  # closed at the end if never run
        return coro

    def mk_coro(self):
        async def coro():
            self.fx.append("coro ran")
            return 1

        return self._coro(coro)

    def mk_coro_raise(self):
        async def coro_raise():
            raise Oops("coro")

        return self._coro(coro_raise)

    def mk_coro_base(self):
        async def coro_base():
            raise OopsBase("coro")

        return self._coro(coro_base)

    def mk_coro_stop(self):
        async def coro_stop():
            asyncio.get_running_loop().stop()
            await asyncio.sleep(0)
            return 2

        return self._coro(coro_stop)

    def mk_gen(self):
        def gen():
            yield 1

        return gen()

    def mk_gen_data(self):
        def gen():
            yield b"ab"
            yield b"cd"

        return gen()

    def mk_future_done(self):
        fut = asyncio.Future(loop=self.loop)  # create_future() raises on a closed loop
        fut.set_result(3)
        return fut

    def mk_future_cancelled(self):
        fut = asyncio.Future(loop=self.loop)
        fut.cancel()
        return fut

    def helper_loop(self):
        if "helper" not in self.cache:
            self.cache["helper"] = self.own(new_loop(self.loop_name))
        return self.cache["helper"]

    def mk_future_other_loop(self):
        fut = self.helper_loop().create_future()
        fut.set_result(4)
        return fut

    def mk_task_done(self):
        async def done():
            return 5

        # A task of the helper loop, finished there.
        helper = self.helper_loop()
        task = helper.create_task(done())
        helper.run_until_complete(task)
        return task

    def mk_ctx(self):
        ctx = contextvars.copy_context()
        ctx.run(VAR.set, "ctx")
        return ctx

    def mk_now_plus(self, delta):
        return self.loop.time() + delta

    def mk_handler_ok(self):
        return lambda loop, context: self.fx.append("handler_ok")

    def mk_handler_raises(self):
        def handler(loop, context):
            raise Oops("handler")

        return handler

    def mk_task_factory(self):
        def factory(loop, coro, **kwargs):
            self.fx.append("task_factory")
            return asyncio.Task(coro, loop=loop, **kwargs)

        return factory

    def mk_task_factory_raises(self):
        def factory(loop, coro, **kwargs):
            coro.close()
            raise Oops("task factory")

        return factory

    def mk_tpe(self):
        ex = concurrent.futures.ThreadPoolExecutor(max_workers=1)
        self.executors.append(ex)
        return ex

    def mk_tpe_shutdown(self):
        ex = concurrent.futures.ThreadPoolExecutor(max_workers=1)
        ex.shutdown()
        return ex

    # fds, files and sockets
    def _pipe(self):
        if "pipe" not in self.cache:
            r, w = os.pipe()
            rf = self.own(os.fdopen(r, "rb", buffering=0))
            wf = self.own(os.fdopen(w, "wb", buffering=0))
            wf.write(b"data")  # the read end is readable
            self.cache["pipe"] = (rf, wf)
        return self.cache["pipe"]

    def mk_pipe_r(self):
        return self._pipe()[0].fileno()

    def mk_pipe_w(self):
        return self._pipe()[1].fileno()

    def mk_rfile(self):
        return self._pipe()[0]

    def mk_wfile(self):
        return self._pipe()[1]

    def _socketpair(self):
        if "socketpair" not in self.cache:
            a, b = socket.socketpair()
            self.own(a)
            self.own(b)
            a.setblocking(False)
            b.setblocking(False)
            b.send(b"x" * 100)  # a has data waiting
            self.cache["socketpair"] = (a, b)
        return self.cache["socketpair"]

    def mk_sock(self):
        return self._socketpair()[0]

    def mk_sock_fd(self):
        return self._socketpair()[0].fileno()

    def mk_sock_blocking(self):
        # Blocking as far as asyncio can tell (gettimeout() != 0), but a call
        # that would block forever (sock_sendall of more than the socket's
        # buffer on asyncio's loop) ends with TimeoutError.
        a, b = socket.socketpair()
        self.own(a)
        self.own(b)
        b.send(b"y" * 100)
        a.settimeout(0.5)
        return a

    def mk_sock_closed(self):
        s = socket.socket()
        s.close()
        return s

    def mk_file_closed(self):
        f = open(os.devnull, "rb")  # noqa: SIM115 - closed at once: a closed file object
        f.close()
        return f

    def mk_closed_fd(self):
        # A number no file has: past every fd the child opens (the kernel hands
        # out the lowest free number), and closed.
        fd = os.open(os.devnull, os.O_RDONLY)
        try:
            os.dup2(fd, CLOSED_FD)
        finally:
            os.close(fd)
        os.close(CLOSED_FD)
        return CLOSED_FD

    def mk_unopened_fd(self):
        return UNOPENED_FD

    def mk_reg_file(self):
        path = self.path("regular")
        with open(path, "wb") as f:
            f.write(b"r" * 4096)
        return self.own(open(path, "rb"))  # noqa: SIM115 - closed by the env

    def mk_reg_file_text(self):
        path = self.path("text")
        with open(path, "w") as f:
            f.write("t" * 100)
        return self.own(open(path))  # noqa: SIM115 - closed by the env

    def mk_reg_fd(self):
        return self.mk_reg_file().fileno()

    def mk_devnull_fd(self):
        return self.own(open(os.devnull, "rb")).fileno()  # noqa: SIM115

    def mk_devnull_r(self):
        return self.own(open(os.devnull, "rb"))  # noqa: SIM115

    def mk_devnull_w(self):
        return self.own(open(os.devnull, "wb"))  # noqa: SIM115

    def _listener(self):
        if "listener" not in self.cache:
            ls = self.own(socket.socket())
            ls.bind(("127.0.0.1", 0))
            ls.listen(16)
            ls.setblocking(False)
            c = self.own(socket.socket())
            c.connect(ls.getsockname())  # one connection waits in the backlog
            self.cache["listener"] = ls
        return self.cache["listener"]

    def mk_listen_sock(self):
        return self._listener()

    def mk_addr_listen(self):
        return self._listener().getsockname()

    def mk_port(self):
        return self._listener().getsockname()[1]

    def mk_closed_port(self):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        s.close()
        return port

    def mk_addr_refused(self):
        return ("127.0.0.1", self.mk_closed_port())

    def mk_tcp_sock(self):
        ls = socket.socket()
        ls.bind(("127.0.0.1", 0))
        ls.listen(1)
        c = self.own(socket.socket())
        c.connect(ls.getsockname())
        s, _ = ls.accept()
        ls.close()
        self.own(s)
        s.send(b"t" * 100)
        c.setblocking(False)
        return c

    def mk_unconnected_tcp(self):
        s = self.own(socket.socket())
        s.setblocking(False)
        return s

    def udp_peer(self):
        if "udp_peer" not in self.cache:
            u = self.own(socket.socket(socket.AF_INET, socket.SOCK_DGRAM))
            u.bind(("127.0.0.1", 0))
            u.setblocking(False)
            self.cache["udp_peer"] = u
        return self.cache["udp_peer"]

    def mk_udp_addr(self):
        return self.udp_peer().getsockname()

    def mk_udp_sock(self):
        u = self.own(socket.socket(socket.AF_INET, socket.SOCK_DGRAM))
        u.bind(("127.0.0.1", 0))
        u.setblocking(False)
        self.udp_peer().sendto(b"d" * 50, u.getsockname())  # a datagram waits
        return u

    def mk_ssl_sock(self):
        import ssl

        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        raw = socket.socket()
        s = self.own(ctx.wrap_socket(raw, server_hostname="x", do_handshake_on_connect=False))
        s.setblocking(False)
        return s

    def mk_upath_listen(self):
        path = self.path("listen.sock")
        s = self.own(socket.socket(socket.AF_UNIX))
        s.bind(path)
        s.listen(16)
        return path

    def mk_upath_missing(self):
        return self.path("missing.sock")

    def mk_upath_new(self):
        return self.path("new.sock")

    def mk_upath_new_bytes(self):
        return os.fsencode(self.path("newb.sock"))

    def mk_upath_new_pathlib(self):
        return Path(self.path("newp.sock"))

    def mk_upath_regular(self):
        path = self.path("regular.file")
        Path(path).write_bytes(b"")
        return path

    def mk_upath_long(self):
        return os.path.join(self.tmp, "l" * 200)

    def mk_upath_abstract(self):
        return f"\0fastloop-fuzz-{os.getpid()}-{self.counter}"

    def mk_upath_nodir(self):
        return os.path.join(self.tmp, "nodir", "x.sock")

    def mk_path_true(self):
        return Path("/bin/true")

    # protocol factories
    def mk_proto(self):
        return lambda: Proto(self, "f")

    def mk_bproto(self):
        return lambda: proto_class("bproto")(self, "f")

    def mk_baseproto(self):
        return lambda: BaseProto(self, "f")

    def mk_dproto(self):
        return lambda: DProto(self, "f")

    def mk_sproto(self):
        return lambda: SProto(self)

    def mk_factory_raises(self):
        def factory():
            raise Oops("factory")

        return factory

    def mk_factory_none(self):
        return lambda: None

    def mk_factory_opaque(self):
        return lambda: Opaque()

    def mk_proto_inst(self):
        return Proto(self, "q")

    # data
    def mk_bytes(self, n):
        return b"w" * n

    def mk_bytearray(self, n):
        return bytearray(b"w" * n)

    def mk_mv(self, n):
        return memoryview(b"w" * n)

    def mk_mv_bytearray(self, n):
        return memoryview(bytearray(n))

    def mk_mv_strided(self, n):
        return memoryview(b"w" * (2 * n))[::2]

    def mk_mv_strided_rw(self, n):
        return memoryview(bytearray(2 * n))[::2]

    def mk_mv_int32(self, n):
        return memoryview(array.array("i", [7] * n))

    def mk_mv_2d(self, n):
        n = max(n // 2 * 2, 2)
        return memoryview(b"w" * n).cast("B", (2, n // 2))

    def mk_mv_released(self, n):
        mv = memoryview(b"w" * n)
        mv.release()
        return mv

    def mk_array(self, n):
        return array.array("b", [1] * n)

    def mk_array_rw(self, n):
        return array.array("b", [0] * n)

    def mk_bytes_sub(self, n):
        return BytesSub(b"s" * n)

    # -- running the loop ---------------------------------------------------------

    def note_trace(self):
        if self.trace is not None:
            self.trace.append(traceback.format_exc())

    def usable(self):
        return not self.loop.is_closed() and not self.loop.is_running()

    def iterate(self, n=1):
        for _ in range(n):
            if not self.usable():
                return
            self.loop.stop()
            try:
                self.loop.run_forever()
            except BaseException as exc:
                self.fx.append(f"run_forever {outcome_of(exc)}")

    def run(self, coro_or_future, timeout):
        """Run an awaitable to completion on the loop, bounded; its outcome."""

        async def bounded():
            return await asyncio.wait_for(coro_or_future, timeout)

        task = self.loop.create_task(bounded())
        for _ in range(5):
            try:
                return "ok", self.loop.run_until_complete(task)
            except TimeoutError:
                return "timeout", None
            except RuntimeError as exc:
                # stopped before the future completed: a call in the op stopped it
                if task.done() or not self.usable():
                    self.note_trace()
                    return outcome_of(exc), None
            except BaseException as exc:
                self.note_trace()
                return outcome_of(exc), None
        task.cancel()
        return "stopped-before-complete", None
