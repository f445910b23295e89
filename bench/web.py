"""HTTP: a "Hello, world!" server on the loop under test, loaded by wrk.

A sample (run by ``bench.worker`` in a fresh process, which makes no loop of its
own for these rows) does:

1. start ``python -m bench.web_server --loop L --app uvicorn|aiohttp`` in a fresh
   process pinned to one CPU (as the echo servers are), and wait for its READY line;
2. warm it up with WARMUP_REQUESTS requests over one keep-alive connection
   (``http.client``), each checked: status 200, body ``Hello, world!``;
3. run ``wrk -t1 -cC -dD --latency -s bench/wrk_report.lua`` pinned to the
   other CPU; the Lua script prints wrk's counts and latency percentiles as one
   JSON line;
4. fail the sample on any non-2xx/3xx response, connect, read or write error,
   or a server that died; stop the server (SIGTERM, then SIGKILL).

wrk's durations are whole seconds, so ``n`` (the timed span in ms) is rounded
to whole seconds. Under 1000 (``--quick``) there is no wrk run: the sample counts
the checked requests of one keep-alive ``http.client`` connection for n ms, a
smoke test that the server starts and answers on the loop, not a measurement.
wrk is Debian's package ``wrk``; without it the rows are skipped.
"""

from __future__ import annotations

import http.client
import importlib.util
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from time import perf_counter

from bench.echo import ROOT, EchoError, _cpus, _exit_text, _pinned, _stop, _tail, _wait_ready
from bench.registry import Measurement, Skip

LUA = Path(__file__).resolve().parent / "wrk_report.lua"
BODY = b"Hello, world!"
CHECK_TIMEOUT = 10.0  # seconds any one warm-up request may take
WARMUP_REQUESTS = 300  # ~0.1 s on asyncio: wrk's shortest run (1 s) would double a sample
NEEDS = {"uvicorn": ("uvicorn", "httptools"), "aiohttp": ("aiohttp",)}  # modules per app


def _wrk(wrk: str, url: str, connections: int, threads: int, seconds: int) -> dict:
    cmd = [wrk, f"-t{threads}", f"-c{connections}", f"-d{seconds}s", "--latency", "-s", str(LUA)]
    cmd.append(url)
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 30)
    except subprocess.TimeoutExpired as exc:
        raise EchoError(f"wrk did not finish within {seconds + 30} s") from exc
    if proc.returncode != 0:
        why = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
        raise EchoError(f"wrk {_exit_text(proc.returncode)}: {why[0]}")
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith("{"):
            return json.loads(line)
    raise EchoError(f"wrk printed no report: {proc.stdout.strip()[-200:]}")


def _warm_up(host: str, port: int, requests: int, seconds: float | None = None) -> Measurement:
    """GETs over one keep-alive connection, each response checked: `requests` of them
    if `seconds` is None, else as many as fit in `seconds`."""
    conn = http.client.HTTPConnection(host, port, timeout=CHECK_TIMEOUT)
    done = 0
    start = perf_counter()
    end = start + seconds if seconds is not None else None
    try:
        while done < requests if end is None else perf_counter() < end:
            done += 1
            conn.request("GET", "/")
            resp = conn.getresponse()
            body = resp.read()
            if resp.status != 200 or body != BODY:
                raise EchoError(
                    f"GET /: status {resp.status}, body {body[:60]!r}; expected 200 {BODY!r}"
                )
    except (OSError, http.client.HTTPException) as exc:
        raise EchoError(f"GET http://{host}:{port}/: {type(exc).__name__}: {exc}") from exc
    finally:
        conn.close()
    return Measurement(done, perf_counter() - start)


def http_hello(loop_name: str, n: int, *, app: str, connections: int, threads: int) -> Measurement:
    """One sample: the `app` server on `loop_name`, loaded by wrk for n ms (whole seconds)."""
    wrk = shutil.which("wrk")
    if wrk is None:
        raise Skip("wrk is not installed (apt-get install wrk; make sysdeps installs it)")
    missing = [m for m in NEEDS[app] if importlib.util.find_spec(m) is None]
    if missing:
        raise Skip(f"{', '.join(missing)} not installed (pip install -r requirements-dev.txt)")
    seconds = round(n / 1000)
    server_cpus, client_cpus = _cpus()
    tmp = Path(tempfile.mkdtemp(prefix="flhttp-"))
    errfile = tmp / "server.err"
    cmd = [sys.executable, "-m", "bench.web_server", "--loop", loop_name, "--app", app]
    try:
        with open(errfile, "wb") as err:
            proc = _pinned(
                server_cpus,
                lambda: subprocess.Popen(
                    cmd, cwd=ROOT, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=err
                ),
            )
        try:
            where = _wait_ready(proc, errfile).split()
            url = f"http://{where[1]}:{where[2]}/"
            host, port = where[1], int(where[2])
            _pinned(client_cpus, lambda: _warm_up(host, port, WARMUP_REQUESTS))
            if n < 1000:  # --quick: the checked requests of one connection, no wrk
                return _pinned(client_cpus, lambda: _warm_up(host, port, 0, n / 1000))
            result = _pinned(client_cpus, lambda: _wrk(wrk, url, connections, threads, seconds))
            if proc.poll() is not None:
                raise EchoError(
                    f"the server {_exit_text(proc.returncode)}: {_tail(errfile) or '-'}"
                )
        finally:
            _stop(proc)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    bad = {
        k: result[k]
        for k in ("status_errors", "connect_errors", "read_errors", "write_errors")
        if result[k]
    }
    if bad:
        what = ", ".join(f"{v} {k.replace('_', ' ')}" for k, v in bad.items())
        raise EchoError(f"wrk: {what} (status errors: responses not 2xx or 3xx)")
    if not result["requests"] or not result["duration_us"]:
        raise EchoError("wrk: no request completed")
    extra = {k: result[k] for k in result if k.startswith("latency_")}
    extra.update(timeouts=result["timeouts"], connections=connections, threads=threads)
    return Measurement(result["requests"], result["duration_us"] / 1e6, extra)
