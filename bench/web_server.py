"""An HTTP server on one event loop: uvicorn (httptools) or aiohttp, "Hello, world!" for GET /.

    python -m bench.web_server --loop L --app uvicorn|aiohttp

Run by the HTTP benchmarks (``bench.web``) in a fresh process per sample, and
usable by hand (e.g. under ``perf record``) against ``wrk``. It makes the loop
itself and runs the server on it, so that any loop works: uvicorn's
``Server.serve()`` with ``loop="none"`` (uvicorn installs no loop of its own),
or aiohttp's ``web.AppRunner`` + ``web.TCPSite``. Once it listens it prints::

    READY tcp 127.0.0.1 PORT

then serves until it is killed (SIGTERM: uvicorn shuts down gracefully, aiohttp
takes the default action). If it cannot start, it prints the traceback on
stderr and exits with status 1. Neither server logs requests.

- ``uvicorn``: a raw ASGI app (no framework) sending status 200, a
  ``content-type`` and a ``content-length``, and the body; ``http="httptools"``,
  ``lifespan="off"``, access log off, port 0 (the port is read from the
  server once it started). Not a socket of ours given to ``serve(sockets=)``:
  a socket made with ``socket.socket()`` has ``proto`` 0, and asyncio's
  transports then leave Nagle on (they set ``TCP_NODELAY`` only when ``proto``
  is ``IPPROTO_TCP``), which costs 40 ms per response.
- ``aiohttp``: a ``web.Application`` with one route, ``GET /`` ->
  ``web.Response(text=...)``; ``AppRunner(access_log=None, handle_signals=False)``.
"""

from __future__ import annotations

import argparse
import asyncio

from bench import loops
from bench.server_process import announce_ready, start_or_report

APPS = ("uvicorn", "aiohttp")
HOST = "127.0.0.1"
BODY = b"Hello, world!"
BACKLOG = 1024
START_TIMEOUT = 20.0  # seconds for uvicorn to report it started


async def asgi_hello(scope, receive, send) -> None:
    """The ASGI app: the same response for every request."""
    if scope["type"] != "http":
        return
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [
                (b"content-type", b"text/plain; charset=utf-8"),
                (b"content-length", str(len(BODY)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": BODY})


async def start_uvicorn(loop: asyncio.AbstractEventLoop):
    import uvicorn

    config = uvicorn.Config(
        asgi_hello,
        host=HOST,
        port=0,
        http="httptools",
        loop="none",
        lifespan="off",
        log_level="warning",
        access_log=False,
        backlog=BACKLOG,
    )
    server = uvicorn.Server(config)
    task = loop.create_task(server.serve())
    async with asyncio.timeout(START_TIMEOUT):
        while not server.started:
            if task.done():
                task.result()  # its exception, if any
                raise RuntimeError("uvicorn's serve() returned before it started")
            await asyncio.sleep(0.01)
    return (server, task), server.servers[0].sockets[0].getsockname()[1]


async def start_aiohttp(loop: asyncio.AbstractEventLoop):
    from aiohttp import web

    async def hello(request: web.Request) -> web.Response:
        return web.Response(text=BODY.decode())

    app = web.Application()
    app.router.add_get("/", hello)
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, HOST, 0, backlog=BACKLOG)
    await site.start()
    return (runner, site), runner.addresses[0][1]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.web_server")
    parser.add_argument("--loop", required=True, choices=sorted(loops.LOOPS))
    parser.add_argument("--app", required=True, choices=APPS)
    args = parser.parse_args(argv)
    loop = loops.new_loop(args.loop)
    asyncio.set_event_loop(loop)
    start = start_uvicorn if args.app == "uvicorn" else start_aiohttp
    started = start_or_report(loop, start(loop))
    if started is None:
        return 1
    keep, port = started
    announce_ready(f"READY tcp {HOST} {port}")
    if args.app == "uvicorn":
        loop.run_until_complete(keep[1])  # returns once SIGTERM made uvicorn shut down
    else:
        loop.run_forever()
    del keep
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
