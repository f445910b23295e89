"""HTTP servers under load from httpx, on both loops: uvicorn (httptools) serving a raw
ASGI app, and an aiohttp web application, each run as a task of the loop under test and
sent the same 200 requests by one httpx AsyncClient (sequential, concurrent, with
bodies, streamed, and not found), every response's status and body checked against
values computed here. Everything stays on 127.0.0.1; httpx reads no proxy settings.

(tests/test_integration_http.py covers more of aiohttp's client and server: websockets,
sendfile, big bodies; this file is the load both servers get alike.)
"""

import asyncio
import contextlib
import json
from urllib.parse import parse_qs

# Installed by requirements-test.txt: a missing one is an error, not a skip.
import httpx
import pytest
import uvicorn
from aiohttp import web

from .netutil import HOST, assert_running_on, pattern, run, sha256

pytestmark = pytest.mark.timeout(60)

HELLO = b"Hello, world"
NOT_FOUND = b"not found"
N_ITEMS = 100
N_ECHO = 50
STREAMS = range(5, 15)
N_MISSING = 20
N_HELLO = 20


def item(i):
    return {"i": i, "square": i * i}


def echo_body(i):
    return pattern(997 * i, seed=i)


def stream_lines(n):
    return [f"chunk {k:03d}" for k in range(n)]


# -- uvicorn: a raw ASGI app ---------------------------------------------------------------


async def _asgi_respond(send, status, body, headers=()):
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-length", str(len(body)).encode()), *headers],
        }
    )
    await send({"type": "http.response.body", "body": body})


async def asgi_app(scope, receive, send):
    assert scope["type"] == "http"
    path, method = scope["path"], scope["method"]
    if method == "GET" and path == "/hello":
        await _asgi_respond(send, 200, HELLO, [(b"content-type", b"text/plain")])
    elif method == "GET" and path.startswith("/item/"):
        body = json.dumps(item(int(path.rsplit("/", 1)[1]))).encode()
        await _asgi_respond(send, 200, body, [(b"content-type", b"application/json")])
    elif method == "POST" and path == "/echo":
        body = bytearray()
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        await _asgi_respond(send, 200, bytes(body), [(b"x-len", str(len(body)).encode())])
    elif method == "GET" and path == "/stream":
        n = int(parse_qs(scope["query_string"].decode())["n"][0])
        # No content-length: HTTP/1.1 sends the body chunked, a piece per send().
        await send({"type": "http.response.start", "status": 200, "headers": []})
        for line in stream_lines(n):
            body = (line + "\n").encode()
            await send({"type": "http.response.body", "body": body, "more_body": True})
        await send({"type": "http.response.body", "body": b""})
    else:
        await _asgi_respond(send, 404, NOT_FOUND)


@contextlib.asynccontextmanager
async def uvicorn_server():
    """uvicorn's Server.serve() as a task of the running loop (loop="none": uvicorn
    installs no loop of its own); yields the base URL, then asks it to exit and waits."""
    config = uvicorn.Config(
        asgi_app,
        host=HOST,
        port=0,
        http="httptools",
        loop="none",
        lifespan="off",
        log_config=None,  # leave the logging configuration of the test run alone
        log_level="warning",
        access_log=False,
    )
    server = uvicorn.Server(config)
    task = asyncio.get_running_loop().create_task(server.serve())
    try:
        while not server.started:
            if task.done():
                task.result()  # its exception, if it has one
                raise AssertionError("uvicorn's serve() returned before it started")
            await asyncio.sleep(0.01)
        host, port = server.servers[0].sockets[0].getsockname()[:2]
        yield f"http://{host}:{port}"
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, 10)


# -- aiohttp: the same routes --------------------------------------------------------------


def aiohttp_app():
    async def hello(request):
        return web.Response(body=HELLO, content_type="text/plain")

    async def get_item(request):
        return web.json_response(item(int(request.match_info["i"])))

    async def echo(request):
        body = await request.read()
        return web.Response(body=body, headers={"X-Len": str(len(body))})

    async def stream(request):
        resp = web.StreamResponse()
        await resp.prepare(request)
        for line in stream_lines(int(request.query["n"])):
            await resp.write((line + "\n").encode())
        await resp.write_eof()
        return resp

    async def missing(request):
        return web.Response(status=404, body=NOT_FOUND)

    app = web.Application()
    app.add_routes(
        [
            web.get("/hello", hello),
            web.get("/item/{i}", get_item),
            web.post("/echo", echo),
            web.get("/stream", stream),
            web.route("*", "/{tail:.*}", missing),
        ]
    )
    return app


@contextlib.asynccontextmanager
async def aiohttp_server():
    runner = web.AppRunner(aiohttp_app(), access_log=None, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, HOST, 0)
    await site.start()
    try:
        host, port = runner.addresses[0][:2]
        yield f"http://{host}:{port}"
    finally:
        await asyncio.wait_for(runner.cleanup(), 10)


SERVERS = {"uvicorn": uvicorn_server, "aiohttp": aiohttp_server}


# -- the load ------------------------------------------------------------------------------


async def load(base):
    """Send the 200 requests; returns one observation per response, in a fixed order."""
    seen = []
    limits = httpx.Limits(max_connections=8)
    async with httpx.AsyncClient(base_url=base, trust_env=False, limits=limits) as client:
        # Sequential, over a kept-alive connection.
        for _ in range(N_HELLO):
            r = await client.get("/hello")
            seen.append(("hello", r.status_code, r.content))
        # Concurrent: more requests in flight than connections.
        rs = await asyncio.gather(*(client.get(f"/item/{i}") for i in range(N_ITEMS)))
        seen += [("item", r.status_code, r.json()) for r in rs]
        # Concurrent, with bodies of 0 to ~48 KiB.
        rs = await asyncio.gather(
            *(client.post("/echo", content=echo_body(i)) for i in range(N_ECHO))
        )
        seen += [("echo", r.status_code, r.headers["x-len"], sha256(r.content)) for r in rs]

        # Streamed responses, read line by line as they come.
        async def streamed(n):
            async with client.stream("GET", "/stream", params={"n": n}) as r:
                lines = [line async for line in r.aiter_lines()]
            return ("stream", r.status_code, r.headers.get("transfer-encoding"), lines)

        seen += await asyncio.gather(*(streamed(n) for n in STREAMS))
        rs = await asyncio.gather(*(client.get(f"/missing/{i}") for i in range(N_MISSING)))
        seen += [("missing", r.status_code, r.content) for r in rs]
    return seen


def expected_load():
    return (
        [("hello", 200, HELLO)] * N_HELLO
        + [("item", 200, item(i)) for i in range(N_ITEMS)]
        + [("echo", 200, str(len(echo_body(i))), sha256(echo_body(i))) for i in range(N_ECHO)]
        + [("stream", 200, "chunked", stream_lines(n)) for n in STREAMS]
        + [("missing", 404, NOT_FOUND)] * N_MISSING
    )


@pytest.mark.parametrize("server", sorted(SERVERS))
def test_httpx_load(loop, loop_name, server):
    async def main():
        assert_running_on(loop_name)
        async with SERVERS[server]() as base:
            return await load(base)

    seen = run(loop, main(), timeout=45)
    expected = expected_load()
    assert len(expected) == 200
    assert len(seen) == len(expected)
    for got, want in zip(seen, expected, strict=True):
        assert got == want
