"""Real HTTP libraries on both loops: an aiohttp web server talking to the aiohttp client
and to httpx's AsyncClient (anyio), plus httpx against a bare asyncio-streams server.
Everything stays on 127.0.0.1; nothing reads proxy settings from the environment."""

import asyncio
import contextlib
import hashlib

# Installed by requirements-dev.txt: a missing one is an error, not a skip.
import aiohttp
import httpx
import pytest
from aiohttp import web

from .netutil import HOST, addr_of, pattern, run, sha256

pytestmark = pytest.mark.timeout(45)

MiB = 1024 * 1024


FILE_SIZE = 3 * MiB + 17


def make_app(peers, file_path):
    async def hello(request):
        return web.Response(text="Hello, world")

    async def echo(request):
        body = await request.read()
        return web.Response(body=body, headers={"X-Len": str(len(body))})

    async def big(request):
        n = int(request.query["n"])
        return web.Response(body=pattern(n, seed=7))

    async def stream(request):
        resp = web.StreamResponse()
        await resp.prepare(request)
        for i in range(20):
            await resp.write(b"chunk %02d\n" % i)
        await resp.write_eof()
        return resp

    async def peer(request):
        peername = request.transport.get_extra_info("peername")
        peers.append(peername)
        return web.json_response({"peer": list(peername), "remote": request.remote})

    async def ws(request):
        sock = web.WebSocketResponse()
        await sock.prepare(request)
        async for msg in sock:
            if msg.type == aiohttp.WSMsgType.TEXT:
                await sock.send_str("echo: " + msg.data)
            elif msg.type == aiohttp.WSMsgType.BINARY:
                await sock.send_bytes(msg.data[::-1])
        return sock

    async def file(request):
        # aiohttp sends a file with loop.sendfile(transport, ...).
        return web.FileResponse(file_path)

    app = web.Application(client_max_size=64 * MiB)
    app.add_routes(
        [
            web.get("/hello", hello),
            web.post("/echo", echo),
            web.get("/big", big),
            web.get("/stream", stream),
            web.get("/peer", peer),
            web.get("/ws", ws),
            web.get("/file", file),
        ]
    )
    return app


@contextlib.asynccontextmanager
async def aiohttp_server(tmp_path):
    """An aiohttp application on 127.0.0.1, port chosen by the kernel. Yields
    (base_url, peers): peers lists the peernames /peer saw. /file serves FILE_SIZE
    bytes of pattern(FILE_SIZE, seed=3) from a file in tmp_path."""
    peers = []
    file_path = tmp_path / "served.bin"
    file_path.write_bytes(pattern(FILE_SIZE, seed=3))
    runner = web.AppRunner(make_app(peers, file_path), access_log=None, shutdown_timeout=2)
    await runner.setup()
    site = web.TCPSite(runner, HOST, 0)
    await site.start()
    try:
        host, port = runner.addresses[0][:2]
        yield f"http://{host}:{port}", peers
    finally:
        await asyncio.wait_for(runner.cleanup(), 10)


def test_aiohttp_server_and_client(loop, tmp_path):
    async def main():
        async with aiohttp_server(tmp_path) as (base, peers):
            async with aiohttp.ClientSession() as session:
                async with session.get(base + "/hello") as r:
                    hello = (r.status, await r.text(), r.headers["Content-Type"])
                payload = pattern(MiB, seed=1)
                async with session.post(base + "/echo", data=payload) as r:
                    echo = (r.status, r.headers["X-Len"], sha256(await r.read()))
                async with session.get(base + "/big", params={"n": str(4 * MiB)}) as r:
                    big = sha256(await r.read())
                async with session.get(base + "/stream") as r:
                    lines = [line async for line in r.content]
                async with session.get(base + "/peer") as r:
                    peer = await r.json()
                async with session.get(base + "/nope") as r:
                    missing = r.status
        return hello, echo, big, lines, peer, missing

    hello, echo, big, lines, peer, missing = run(loop, main(), timeout=30)
    assert hello == (200, "Hello, world", "text/plain; charset=utf-8")
    assert echo == (200, str(MiB), sha256(pattern(MiB, seed=1)))
    assert big == sha256(pattern(4 * MiB, seed=7))
    assert lines == [b"chunk %02d\n" % i for i in range(20)]
    assert peer["peer"][0] == HOST and peer["remote"] == HOST
    assert missing == 404


def test_aiohttp_keepalive_and_concurrency(loop, tmp_path):
    async def main():
        async with aiohttp_server(tmp_path) as (base, peers):
            connector = aiohttp.TCPConnector(limit=4)
            async with aiohttp.ClientSession(connector=connector) as session:
                # Sequential requests reuse one kept-alive connection.
                for _ in range(10):
                    async with session.get(base + "/peer") as r:
                        await r.read()
                sequential = {tuple(p) for p in peers}
                peers.clear()

                async def one(i):
                    body = b"request %d" % i
                    async with session.post(base + "/echo", data=body) as r:
                        return await r.read() == body

                results = await asyncio.gather(*(one(i) for i in range(100)))
        return len(sequential), results

    n_conns, results = run(loop, main(), timeout=30)
    assert n_conns == 1
    assert results == [True] * 100


def test_aiohttp_websocket(loop, tmp_path):
    async def main():
        async with aiohttp_server(tmp_path) as (base, _):
            async with aiohttp.ClientSession() as session:
                async with session.ws_connect(base + "/ws") as ws:
                    await ws.send_str("hi")
                    text = await ws.receive_str()
                    await ws.send_bytes(b"\x01\x02\x03")
                    data = await ws.receive_bytes()
                    await ws.close()
                    code = ws.close_code
        return text, data, code

    assert run(loop, main()) == ("echo: hi", b"\x03\x02\x01", 1000)


def test_httpx_against_aiohttp_server(loop, tmp_path):
    async def main():
        async with aiohttp_server(tmp_path) as (base, peers):
            async with httpx.AsyncClient(base_url=base, trust_env=False) as client:
                r = await client.get("/hello")
                hello = (r.status_code, r.text, r.http_version)
                payload = pattern(2 * MiB, seed=2)
                r = await client.post("/echo", content=payload)
                echo = (r.status_code, r.headers["x-len"], sha256(r.content))
                h = hashlib.sha256()
                async with client.stream("GET", "/big", params={"n": 8 * MiB}) as r:
                    async for chunk in r.aiter_bytes():
                        h.update(chunk)
                streamed = h.hexdigest()
                peers.clear()
                for _ in range(5):
                    (await client.get("/peer")).raise_for_status()
                reused = len({tuple(p) for p in peers})
                rs = await asyncio.gather(*(client.get("/hello") for _ in range(30)))
                statuses = {r.status_code for r in rs}
        return hello, echo, streamed, reused, statuses

    hello, echo, streamed, reused, statuses = run(loop, main(), timeout=30)
    assert hello == (200, "Hello, world", "HTTP/1.1")
    assert echo == (200, str(2 * MiB), sha256(pattern(2 * MiB, seed=2)))
    assert streamed == sha256(pattern(8 * MiB, seed=7))
    assert reused == 1
    assert statuses == {200}


def test_httpx_against_plain_asyncio_streams_server(loop):
    started, finished = [], []

    async def handler(reader, writer):
        started.append(writer)
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                lines = head.decode("latin-1").split("\r\n")
                method, path, _ = lines[0].split(" ")
                headers = dict(
                    (k.strip().lower(), v.strip())
                    for k, v in (line.split(":", 1) for line in lines[1:] if line)
                )
                body = await reader.readexactly(int(headers.get("content-length", 0)))
                reply = f"{method} {path} {len(body)}".encode()
                writer.write(
                    b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n"
                    b"Content-Length: %d\r\n\r\n%s" % (len(reply), reply)
                )
                await writer.drain()
        except asyncio.IncompleteReadError:
            pass
        finally:
            writer.close()
            finished.append(writer)

    async def main():
        server = await asyncio.start_server(handler, HOST, 0)
        async with server:
            host, port = addr_of(server)
            async with httpx.AsyncClient(trust_env=False) as client:
                r1 = await client.get(f"http://{host}:{port}/a")
                r2 = await client.post(f"http://{host}:{port}/b", content=b"x" * 100_000)
            while len(finished) < len(started):
                await asyncio.sleep(0.005)
        return r1.text, r2.text

    assert run(loop, main()) == ("GET /a 0", "POST /b 100000")


def test_aiohttp_file_response(loop, tmp_path):
    async def main():
        async with aiohttp_server(tmp_path) as (base, _):
            async with aiohttp.ClientSession() as session:
                async with session.get(base + "/file") as r:
                    full = (r.status, sha256(await r.read()))
                headers = {"Range": "bytes=100-1099"}
                async with session.get(base + "/file", headers=headers) as r:
                    ranged = (r.status, await r.read())
            async with httpx.AsyncClient(trust_env=False) as client:
                r = await client.get(base + "/file")
                via_httpx = (r.status_code, sha256(r.content))
        return full, ranged, via_httpx

    full, ranged, via_httpx = run(loop, main(), timeout=30)
    expected = pattern(FILE_SIZE, seed=3)
    assert full == (200, sha256(expected))
    assert ranged == (206, expected[100:1100])
    assert via_httpx == (200, sha256(expected))
