"""Echo throughput: an echo server on the loop under test, loaded by the C load generator.

A sample (run by ``bench.worker`` in a fresh process, which makes no loop of its
own for these rows) does:

1. start the server in its own fresh process: ``python -m bench.echo_server``
   on the loop under test, or ``bench/loadgen/bin/uv_echo`` for the ceiling rows,
   and wait for its ``READY`` line (port or Unix path);
2. run ``bench/loadgen/bin/loadgen`` against it: C connections, each sending a
   message of S bytes and waiting for its full echo before sending the next,
   for the timed span after a warm-up; it prints one JSON line;
3. check the server is still alive, stop it (SIGTERM, then SIGKILL), and return
   the requests completed in the timed span.

So the server process holds the loop and nothing else (no thread, no child), and
the client is the same program for every loop. The UDP rows (group ``udp``) go
the same way with ``--transport udp``: the server is a datagram endpoint and the
load generator's connections are flows, one datagram in flight each. Any failure (server does not
start, dies, loadgen sees a wrong echo or a reset) fails the sample with the reason.
"""

from __future__ import annotations

import json
import os
import select
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench import cbuild
from bench.registry import Measurement, Skip

ROOT = Path(__file__).resolve().parent.parent
READY_TIMEOUT = 30.0  # seconds for a server to start listening
STOP_TIMEOUT = 5.0


class EchoError(Exception):
    """The echo server or the load generator failed."""


def _tail(path: Path, lines: int = 1) -> str:
    try:
        text = path.read_text(errors="replace").strip().splitlines()
    except OSError:
        return ""
    return " | ".join(text[-lines:])


def _exit_text(code: int) -> str:
    return f"killed by signal {-code}" if code < 0 else f"exited with status {code}"


def _wait_ready(proc: subprocess.Popen, errfile: Path) -> str:
    """The server's READY line (without the READY), or EchoError."""
    deadline = time.monotonic() + READY_TIMEOUT
    buf = b""
    fd = proc.stdout.fileno()
    while b"\n" not in buf:
        left = deadline - time.monotonic()
        if left <= 0:
            raise EchoError(f"echo server not listening after {READY_TIMEOUT:g} s")
        ready, _, _ = select.select([fd], [], [], left)
        if not ready:
            continue
        chunk = os.read(fd, 4096)
        if not chunk:
            code = proc.wait(timeout=STOP_TIMEOUT)
            why = _tail(errfile) or "no error output"
            raise EchoError(f"echo server {_exit_text(code)} before listening: {why}")
        buf += chunk
    line = buf.split(b"\n", 1)[0].decode()
    if not line.startswith("READY "):
        raise EchoError(f"echo server printed {line!r} instead of READY")
    return line[len("READY ") :]


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    if proc.stdout:
        proc.stdout.close()


def _loadgen(address: list[str], size: int, connections: int, seconds: float, warmup: float):
    cmd = [
        str(cbuild.path("loadgen")),
        *address,
        "-c",
        str(connections),
        "-s",
        str(size),
        "-d",
        f"{seconds:g}",
        "-w",
        f"{warmup:g}",
    ]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + warmup + 30)
    except subprocess.TimeoutExpired as exc:
        raise EchoError("loadgen did not finish in time") from exc
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith("{"):
            return json.loads(line)
    raise EchoError(
        f"loadgen {_exit_text(proc.returncode)} without a result: {proc.stderr.strip()}"
    )


def _cpus() -> tuple[set[int] | None, set[int] | None]:
    """The CPUs for the server and for the load generator: one each, different.

    Left to the scheduler, the two processes sometimes share a core and sometimes
    not, and requests/s jumps by 2x between samples. Pinned, the server has a core
    of its own (as the client does), every sample alike. None: not pinned (fewer
    than 2 usable CPUs, or no sched_setaffinity).
    """
    if not hasattr(os, "sched_getaffinity"):
        return None, None
    usable = sorted(os.sched_getaffinity(0))
    if len(usable) < 2:
        return None, None
    return {usable[0]}, {usable[1]}


def _pinned(cpus: set[int] | None, start):
    """Run start() with this process pinned to `cpus` (a child started then inherits it)."""
    if cpus is None:
        return start()
    before = os.sched_getaffinity(0)
    os.sched_setaffinity(0, cpus)
    try:
        return start()
    finally:
        os.sched_setaffinity(0, before)


def _run(server_cmd, transport: str, size: int, connections: int, n: int, tmp: Path) -> Measurement:
    seconds = n / 1000.0  # n is the timed span in milliseconds
    warmup = min(0.25, seconds / 4)
    errfile = tmp / "server.err"
    # Not over UDP: pinned to two CPUs, server and client wait ~4 ms (a scheduler
    # tick) for a wake-up now and then, the plain-C server most (bench/README.md).
    server_cpus, client_cpus = _cpus() if transport != "udp" else (None, None)
    with open(errfile, "wb") as err:
        proc = _pinned(
            server_cpus,
            lambda: subprocess.Popen(
                server_cmd,
                cwd=ROOT,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=err,
            ),
        )
    try:
        where = _wait_ready(proc, errfile).split()
        if transport in ("tcp", "udp"):
            address = [f"--{transport}", f"{where[1]}:{where[2]}"]
        else:
            address = ["--unix", where[1]]
        result = _pinned(client_cpus, lambda: _loadgen(address, size, connections, seconds, warmup))
        alive = proc.poll() is None
        if not alive or not result.get("ok"):
            why = result.get("error", "no result")
            if not alive:
                why += f"; the server {_exit_text(proc.returncode)}: {_tail(errfile) or '-'}"
            elif _tail(errfile):
                why += f"; server stderr: {_tail(errfile, 2)}"
            raise EchoError(f"loadgen: {why}")
    finally:
        _stop(proc)
    keys = ["latency_p50_us", "latency_p99_us", "bytes_per_s", "connections", "size"]
    if transport == "udp":
        keys += ["lost", "stale"]  # datagrams not echoed within 200 ms; late echoes
    extra = {k: result[k] for k in keys}
    health = _health(errfile)
    if health is not None:
        extra["health"] = health
    return Measurement(result["requests"], result["seconds"], extra)


def _health(errfile: Path) -> dict | None:
    """The server's HEALTH line (fastloop+health, printed as it stops), if any."""
    try:
        lines = errfile.read_text(errors="replace").splitlines()
    except OSError:
        return None
    for line in reversed(lines):
        if line.startswith("HEALTH "):
            try:
                return json.loads(line[len("HEALTH ") :])
            except json.JSONDecodeError:
                return None
    return None


def _check_tools(*names: str) -> None:
    for name in names:
        why = cbuild.problem(name)
        if why:
            raise Skip(why)


def echo(
    loop_name: str, n: int, *, style: str, transport: str, size: int, connections: int
) -> Measurement:
    """One sample: `style` echo server on `loop_name`, loaded for n ms."""
    _check_tools("loadgen")
    tmp = Path(tempfile.mkdtemp(prefix="flecho-"))
    try:
        cmd = [sys.executable, "-m", "bench.echo_server", "--loop", loop_name]
        cmd += ["--style", style, "--transport", transport]
        if transport == "unix":
            cmd += ["--path", str(tmp / "echo.sock")]
        return _run(cmd, transport, size, connections, n, tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def ceiling(loop_name: str, n: int, *, transport: str, size: int, connections: int) -> Measurement:
    """One sample of the plain-C libuv echo server (no Python; `loop_name` is the pseudo-loop)."""
    del loop_name
    _check_tools("loadgen", "uv_echo")
    tmp = Path(tempfile.mkdtemp(prefix="flecho-"))
    try:
        cmd = [str(cbuild.path("uv_echo")), transport]
        if transport == "unix":
            cmd.append(str(tmp / "echo.sock"))
        return _run(cmd, transport, size, connections, n, tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
