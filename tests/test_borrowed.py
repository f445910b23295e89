"""asyncio's own methods that fastloop's loop borrows, one scenario per entry point.

fastloop takes the code that is not on the data path from asyncio by reference
(``create_connection = BaseEventLoop.create_connection`` and so on, in _loop.py,
_network.py, _pipes.py, _subprocess.py), so that each Python's own checks,
arguments and messages apply. That code reads what each version's own loop
provides; these scenarios run every borrowed entry point once, on both loops,
on every version `make test` runs, so a version that needs something new fails
here. The list of borrowed names is found, not written down: a name borrowed
without a scenario (or a helper no scenario reaches) fails the first test.
"""

import asyncio
import inspect
import logging
import os
import socket
import ssl
import sys
import threading
from asyncio import base_events, unix_events
from concurrent.futures import ThreadPoolExecutor

import fastloop
import pytest

from .netutil import HOST, make_self_signed_cert, run

SOURCES = (base_events.BaseEventLoop, unix_events._UnixSelectorEventLoop)


def borrowed_names():
    """Every attribute of fastloop.Loop that is the very function asyncio's loop has."""
    names = set()
    for name in dir(fastloop.Loop):
        ours = inspect.getattr_static(fastloop.Loop, name)
        if not inspect.isfunction(ours):
            continue
        for source in SOURCES:
            if inspect.getattr_static(source, name, None) is ours:
                names.add(name)
    return names


# Private helpers are reached through a public entry point's scenario.
REACHED_THROUGH = {
    "_asyncgen_finalizer_hook": "shutdown_asyncgens",
    "_asyncgen_firstiter_hook": "shutdown_asyncgens",
    "_check_callback": "run_in_executor",
    "_check_default_executor": "run_in_executor",
    "_connect_sock": "create_connection",
    "_create_connection_transport": "create_connection",
    "_create_server_getaddrinfo": "create_server",
    "_do_shutdown": "shutdown_default_executor",
    "_log_subprocess": "subprocess_exec",
    "_sendfile_fallback": "sendfile",
    "_set_coroutine_origin_tracking": "set_debug",
    "default_exception_handler": "call_exception_handler",
    "get_exception_handler": "set_exception_handler",
    "get_task_factory": "set_task_factory",
}

SCENARIOS = {}


def scenario(name):
    def register(fn):
        SCENARIOS[name] = fn
        return fn

    return register


class Echo(asyncio.Protocol):
    def connection_made(self, transport):
        self.transport = transport

    def data_received(self, data):
        self.transport.write(data.upper())


async def echo_once(reader, writer, payload=b"ping"):
    writer.write(payload)
    await writer.drain()
    data = await reader.readexactly(len(payload))
    writer.close()
    await writer.wait_closed()
    return data


async def open_streams(loop, create, *args, **kwargs):
    reader = asyncio.StreamReader()
    transport, _ = await create(lambda: asyncio.StreamReaderProtocol(reader), *args, **kwargs)
    writer = asyncio.StreamWriter(transport, transport.get_protocol(), reader, loop)
    return reader, writer


@scenario("create_server")
async def _create_server(loop, tmp_path):
    server = await loop.create_server(Echo, HOST, 0, reuse_address=True)
    port = server.sockets[0].getsockname()[1]
    async with server:
        reader, writer = await asyncio.open_connection(HOST, port)
        return await echo_once(reader, writer)


@scenario("create_connection")
async def _create_connection(loop, tmp_path):
    server = await loop.create_server(Echo, HOST, 0)
    port = server.sockets[0].getsockname()[1]
    async with server:
        # A host name, so that getaddrinfo and the connect loop run too.
        reader, writer = await open_streams(loop, loop.create_connection, "localhost", port)
        return await echo_once(reader, writer)


@scenario("connect_accepted_socket")
async def _connect_accepted_socket(loop, tmp_path):
    a, b = socket.socketpair()
    transport, protocol = await loop.connect_accepted_socket(Echo, a)
    try:
        b.setblocking(False)
        await loop.sock_sendall(b, b"abc")
        return await loop.sock_recv(b, 3)
    finally:
        transport.close()
        b.close()


@scenario("create_unix_server")
async def _create_unix_server(loop, tmp_path):
    path = str(tmp_path / "s.sock")
    server = await loop.create_unix_server(Echo, path)
    async with server:
        reader, writer = await asyncio.open_unix_connection(path)
        return await echo_once(reader, writer)


@scenario("create_unix_connection")
async def _create_unix_connection(loop, tmp_path):
    path = str(tmp_path / "c.sock")
    server = await loop.create_unix_server(Echo, path)
    async with server:
        reader, writer = await open_streams(loop, loop.create_unix_connection, path)
        return await echo_once(reader, writer)


@scenario("start_tls")
async def _start_tls(loop, tmp_path):
    certfile, keyfile = make_self_signed_cert(str(tmp_path))
    sctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    sctx.load_cert_chain(certfile, keyfile)
    cctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=certfile)

    async def handle(reader, writer):
        await writer.start_tls(sctx)
        writer.write((await reader.readexactly(4)).upper())
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, HOST, 0)
    port = server.sockets[0].getsockname()[1]
    async with server:
        reader, writer = await asyncio.open_connection(HOST, port)
        await writer.start_tls(cctx, server_hostname="localhost")
        version = writer.get_extra_info("ssl_object").version()
        return version.startswith("TLS"), await echo_once(reader, writer)


@scenario("sendfile")
async def _sendfile(loop, tmp_path):
    data = os.urandom(100_000)
    path = tmp_path / "data.bin"
    path.write_bytes(data)
    received = bytearray()
    done = loop.create_future()

    class Sink(asyncio.Protocol):
        def data_received(self, chunk):
            received.extend(chunk)

        def eof_received(self):
            done.set_result(None)

    server = await loop.create_server(Sink, HOST, 0)
    port = server.sockets[0].getsockname()[1]
    async with server:
        transport, _ = await loop.create_connection(asyncio.Protocol, HOST, port)
        with open(path, "rb") as f:
            sent = await loop.sendfile(transport, f, offset=10)
        transport.write_eof()
        await done
        transport.close()
    return sent, bytes(received) == data[10:]


def pipe_pair():
    r, w = os.pipe()
    return open(r, "rb", buffering=0), open(w, "wb", buffering=0)


@scenario("connect_read_pipe")
async def _connect_read_pipe(loop, tmp_path):
    rfile, wfile = pipe_pair()
    reader = asyncio.StreamReader()
    transport, _ = await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), rfile)
    wfile.write(b"through a pipe")
    wfile.close()
    data = await reader.read()
    transport.close()
    return data


@scenario("connect_write_pipe")
async def _connect_write_pipe(loop, tmp_path):
    rfile, wfile = pipe_pair()
    transport, _ = await loop.connect_write_pipe(asyncio.Protocol, wfile)
    transport.write(b"into a pipe")
    transport.close()
    await asyncio.sleep(0.01)
    data = rfile.read(100)
    rfile.close()
    return data


@scenario("subprocess_exec")
async def _subprocess_exec(loop, tmp_path):
    loop.set_debug(True)  # _log_subprocess runs in debug mode only
    try:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-c", "print(input()[::-1])",
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
        )  # fmt: skip
        out, _ = await proc.communicate(b"olleh\n")
    finally:
        loop.set_debug(False)
    return proc.returncode, out


@scenario("subprocess_shell")
async def _subprocess_shell(loop, tmp_path):
    proc = await asyncio.create_subprocess_shell(
        "echo $((6 * 7)); exit 3", stdout=asyncio.subprocess.PIPE
    )
    out, _ = await proc.communicate()
    return proc.returncode, out


@scenario("run_in_executor")
async def _run_in_executor(loop, tmp_path):
    results = [await loop.run_in_executor(None, pow, 2, 10)]
    loop.set_debug(True)  # run_in_executor checks the callback (_check_callback) then
    try:
        with pytest.raises(TypeError, match="coroutines cannot be used"):
            loop.run_in_executor(None, asyncio.sleep)
    finally:
        loop.set_debug(False)
    await loop.shutdown_default_executor()
    with pytest.raises(RuntimeError) as e:  # _check_default_executor
        await loop.run_in_executor(None, pow, 2, 3)
    results.append(str(e.value))
    return results


@scenario("set_default_executor")
async def _set_default_executor(loop, tmp_path):
    executor = ThreadPoolExecutor(1, thread_name_prefix="borrowed")
    loop.set_default_executor(executor)
    name = await loop.run_in_executor(None, lambda: threading.current_thread().name)
    with pytest.raises(TypeError):
        loop.set_default_executor(object())
    return name.startswith("borrowed")


@scenario("shutdown_default_executor")
async def _shutdown_default_executor(loop, tmp_path):
    await loop.run_in_executor(None, int)
    executor = loop._default_executor
    await loop.shutdown_default_executor()
    return executor._shutdown


@scenario("shutdown_asyncgens")
async def _shutdown_asyncgens(loop, tmp_path):
    closed = []

    async def agen():
        try:
            yield 1
            yield 2
        finally:
            closed.append(True)

    g = agen()
    first = await g.__anext__()  # the firstiter hook registers it
    await loop.shutdown_asyncgens()
    return first, closed


@scenario("call_exception_handler")
async def _call_exception_handler(loop, tmp_path):
    seen = []
    loop.set_exception_handler(lambda lp, ctx: seen.append(ctx["message"]))
    loop.call_exception_handler({"message": "through the handler"})
    loop.set_exception_handler(None)
    # With no handler set, the default one logs it (asyncio's logger).
    records = []

    class Keep(logging.Handler):
        def emit(self, record):
            records.append(record.getMessage())

    keep = Keep()
    logging.getLogger("asyncio").addHandler(keep)
    try:
        loop.call_exception_handler({"message": "to the default handler"})
    finally:
        logging.getLogger("asyncio").removeHandler(keep)
    return seen, records


@scenario("set_exception_handler")
async def _set_exception_handler(loop, tmp_path):
    def handler(lp, ctx):
        pass

    loop.set_exception_handler(handler)
    got = loop.get_exception_handler() is handler
    with pytest.raises(TypeError):
        loop.set_exception_handler(1)
    loop.set_exception_handler(None)
    return got, loop.get_exception_handler()


@scenario("set_task_factory")
async def _set_task_factory(loop, tmp_path):
    made = []

    def factory(lp, coro, **kwargs):
        # The name reaches the factory from 3.13 on, and is set on its task before.
        task = asyncio.Task(coro, loop=lp, **kwargs)
        made.append(task)
        return task

    loop.set_task_factory(factory)
    try:
        got = loop.get_task_factory() is factory
        task = loop.create_task(asyncio.sleep(0, "slept"), name="t1")
        result = await task
        made = [t is task and t.get_name() for t in made]
    finally:
        loop.set_task_factory(None)
    with pytest.raises(TypeError):
        loop.set_task_factory(1)
    return got, result, made


@scenario("set_debug")
async def _set_debug(loop, tmp_path):
    # _set_coroutine_origin_tracking: what debug mode turns on while running.
    loop.set_debug(True)
    try:
        await asyncio.sleep(0)
        depth = sys.get_coroutine_origin_tracking_depth()
    finally:
        loop.set_debug(False)
    await asyncio.sleep(0)
    return depth > 0, sys.get_coroutine_origin_tracking_depth()


EXPECTED = {
    "create_server": b"PING",
    "create_connection": b"PING",
    "connect_accepted_socket": b"ABC",
    "create_unix_server": b"PING",
    "create_unix_connection": b"PING",
    "start_tls": (True, b"PING"),
    "sendfile": (99_990, True),
    "connect_read_pipe": b"through a pipe",
    "connect_write_pipe": b"into a pipe",
    "subprocess_exec": (0, b"hello\n"),
    "subprocess_shell": (3, b"42\n"),
    "run_in_executor": [1024, "Executor shutdown has been called"],
    "set_default_executor": True,
    "shutdown_default_executor": True,
    "shutdown_asyncgens": (1, [True]),
    "call_exception_handler": (["through the handler"], ["to the default handler"]),
    "set_exception_handler": (True, None),
    "set_task_factory": (True, "slept", ["t1"]),
    "set_debug": (True, 0),
}


def test_every_borrowed_name_is_run_by_a_scenario():
    borrowed = borrowed_names()
    # The attributes that make the check meaningful are borrowed on every version.
    assert {"create_connection", "create_server", "subprocess_exec", "start_tls"} <= borrowed
    reached = set(SCENARIOS) | set(REACHED_THROUGH)
    assert borrowed - reached == set(), "borrowed from asyncio without a scenario here"
    # Names listed here that fastloop no longer borrows (set_debug is fastloop's own,
    # the way to reach _set_coroutine_origin_tracking).
    assert reached - borrowed - {"set_debug"} == set()
    assert set(REACHED_THROUGH.values()) <= set(SCENARIOS)
    assert set(EXPECTED) == set(SCENARIOS)


@pytest.mark.timeout(30)
@pytest.mark.parametrize("name", sorted(SCENARIOS))
def test_borrowed_entry_point(loop, tmp_path, name):
    assert run(loop, SCENARIOS[name](loop, tmp_path), timeout=20) == EXPECTED[name]
