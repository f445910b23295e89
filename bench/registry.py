"""What a benchmark is, the list of them, and the targets fastloop is held to.

A row of the report is one ``Benchmark``: a function ``func(loop, n, **params)``
named by its import path (so the parent process never imports benchmark code),
a fixed work size ``n`` sized to take ~0.2-0.5 s on asyncio on a 2-core CI-class
machine, and the targets besides the global one (fastloop >= uvloop).

To add a row, write the function (it returns a ``Measurement``; it raises
``Skip`` when it cannot run here, e.g. a helper binary is not built) and append a
``Benchmark`` to ``BENCHMARKS``. Nothing else changes: the runner, the table, the
JSON/Markdown and the plot are driven by this list.

Two kinds of rows:

- in-process (groups ``micro``, ``proc``, ``scale``, ``lag``, the ``udp_oneway_*``
  rows): ``func(loop, n, **params)`` runs on a loop the worker made, once at a
  tenth of ``n`` as a warm-up (unless ``warmup=False``: the function warms up
  itself), then timed; ``n`` counts ops (processes; MiB for the pipe rows, whose
  child is sized by ``n``), or is a timed span in milliseconds (``span=True``:
  the lag row).
- drivers (groups ``echo``, ``http``, the ``udp_pingpong_*`` rows):
  ``func(loop_name, n, **params)`` starts the loop under test in a process of its
  own (an echo or HTTP server) and loads it from outside; the worker makes no
  loop. ``n`` is the timed span in milliseconds; the driver does its own warm-up.
  A row with ``runs_on`` runs on those pseudo-loops instead of the selected loops:
  the plain-C libuv echo server, the ceiling (``CEILING``).

A row with ``also_on`` runs on those variant loops too, beside the selected
loops, when the loop they vary is selected: ``fastloop+health`` (``HEALTH``,
fastloop with the lag monitor, a slow-callback handler and the watchdog on)
on the rows ``HEALTH_ROWS`` names, held to ``HEALTH_TARGET``.

A function may put per-size figures in ``Measurement.extra["scale"]`` (see
``bench/scale.py``), or lag percentiles in ``Measurement.extra["lag"]`` (see
``bench/lag.py``); the report prints them as a table under the group's (and
plots the lag).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from fnmatch import fnmatchcase
from typing import NamedTuple

from bench.loops import HEALTH, SUBJECT


class Measurement(NamedTuple):
    ops: int  # operations done in the timed span
    seconds: float  # length of the timed span
    extra: Mapping[str, object] | None = None  # e.g. latency percentiles; kept in bench.json


class Skip(Exception):
    """Raised by a benchmark that cannot run on this machine or loop; the message says why."""


@dataclass(frozen=True)
class Target:
    """The `subject` loop's ops/s must be at least `factor` times the `baseline` loop's."""

    baseline: str
    factor: float
    subject: str = SUBJECT

    @property
    def label(self) -> str:
        """As the targets column says it: the subject is named unless it is fastloop."""
        than = self.baseline if self.factor == 1 else f"{self.factor:g}x {self.baseline}"
        return f">= {than}" if self.subject == SUBJECT else f"{self.subject} >= {than}"

    @property
    def sentence(self) -> str:
        return f"{SUBJECT} {self.label}" if self.subject == SUBJECT else self.label


# Held on every row.
GLOBAL_TARGETS: tuple[Target, ...] = (Target("uvloop", 1.0),)


# The pseudo-loop of the ceiling rows: a plain-C libuv echo server, no Python.
CEILING = "libuv-C"


@dataclass(frozen=True)
class Benchmark:
    name: str
    group: str  # "micro", "proc", "echo", "udp", "http", "scale"
    func: str  # "module:function", imported in the worker only
    n: int  # work size of a full run (for a driver: the timed span in ms)
    unit: str  # what one operation is, for the README and the Markdown
    doc: str  # one line: what the row measures
    params: Mapping[str, object] = field(default_factory=dict)
    targets: tuple[Target, ...] = ()  # in addition to GLOBAL_TARGETS
    quick_n: int | None = None  # work size under --quick (default n // 20)
    driver: bool = False  # func(loop_name, n, **params) runs the loop in its own process
    runs_on: tuple[str, ...] | None = None  # pseudo-loops instead of the selected loops
    ceiling: str | None = None  # the ceiling row to compare this row with
    in_quick: bool = True  # part of --quick (unless named explicitly in --only)
    repeat: int = 5  # samples per cell unless --repeat says otherwise
    tools: tuple[str, ...] = ()  # C helpers (bench/loadgen/) built before the run
    warmup: bool = True  # in-process: the worker runs func at n/10 first (False: func warms up)
    also_on: tuple[str, ...] = ()  # variant loops (LoopSpec.variant_of) run beside the selected
    span: bool = False  # in-process, but n is a timed span in ms, as a driver's
    global_targets: bool = True  # held to GLOBAL_TARGETS (False: a row that ranks nothing)

    def size(self, quick: bool) -> int:
        if not quick:
            return self.n
        return self.quick_n if self.quick_n is not None else max(2, self.n // 20)

    def size_text(self, quick: bool = False) -> str:
        n = self.size(quick)
        if self.driver or self.span:
            return f"{n / 1000:g} s timed"
        plural = {"MiB": "MiB", "process": "processes"}.get(self.unit, f"{self.unit}s")
        return f"{n:,} {plural}"

    def all_targets(self) -> tuple[Target, ...]:
        if self.runs_on:
            return ()
        return (GLOBAL_TARGETS if self.global_targets else ()) + self.targets


TWICE_ASYNCIO = Target("asyncio", 2.0)
AT_LEAST_ASYNCIO = Target("asyncio", 1.0)

# Issue 13: the loop-health features cost at most 2% where they cost most
# (a callback that does nothing; a small echo). fastloop+health runs on the rows
# of HEALTH_ROWS; the target holds on those of HEALTH_TARGET_ROWS.
HEALTH_TARGET = Target(SUBJECT, 0.98, subject=HEALTH)
HEALTH_TARGET_ROWS = ("call_soon_chained", "echo_protocol_1k_tcp")
HEALTH_ROWS = (*HEALTH_TARGET_ROWS, "sleep0_tasks", "echo_streams_1k_tcp")

PROC_CONCURRENCY = 16  # children in flight in the spawn_* rows
PIPE_REPEAT = 9  # the *_throughput rows swing 2-3x between samples: bench/README.md

BENCHMARKS: list[Benchmark] = [
    Benchmark(
        "call_soon_chained",
        "micro",
        "bench.micro:call_soon_chained",
        n=150_000,
        unit="callback",
        doc="a callback re-schedules itself with call_soon: one ready-queue hop per op",
        targets=(TWICE_ASYNCIO,),
    ),
    Benchmark(
        "call_soon_batched",
        "micro",
        "bench.micro:call_soon_batched",
        n=150_000,
        unit="callback",
        doc="n call_soon(cb, arg) from one callback, then all run in one iteration",
    ),
    Benchmark(
        "call_later_fired",
        "micro",
        "bench.micro:call_later_fired",
        n=75_000,
        unit="timer",
        doc="n call_later with delays spread over 0..1 ms, all fired",
    ),
    Benchmark(
        "timers_cancelled",
        "micro",
        "bench.micro:timers_cancelled",
        n=130_000,
        unit="timer",
        doc="n call_later(10 s+) scheduled then cancelled; a short timer ends the run",
        targets=(TWICE_ASYNCIO,),
    ),
    Benchmark(
        "sleep0_tasks",
        "micro",
        "bench.micro:sleep0_tasks",
        n=250_000,
        unit="sleep",
        doc="100 tasks each doing `await asyncio.sleep(0)` n/100 times: task wake-ups",
        params={"tasks": 100},
    ),
    Benchmark(
        "create_task_gather",
        "micro",
        "bench.micro:create_task_gather",
        n=40_000,
        unit="task",
        doc="create n trivial tasks and gather them",
    ),
    Benchmark(
        "future_roundtrip",
        "micro",
        "bench.micro:future_roundtrip",
        n=70_000,
        unit="future",
        doc="await loop.create_future() resolved by a call_soon callback",
    ),
    Benchmark(
        "queue_pingpong",
        "micro",
        "bench.micro:queue_pingpong",
        n=35_000,
        unit="round trip",
        doc="two tasks ping-pong a token over two asyncio.Queue(maxsize=1)",
    ),
    Benchmark(
        "call_soon_threadsafe",
        "micro",
        "bench.micro:call_soon_threadsafe",
        n=50_000,
        unit="callback",
        doc="another thread calls call_soon_threadsafe; timed from its first call to the last run",
    ),
    Benchmark(
        "tls_echo_1k",
        "micro",
        "bench.tls:tls_echo",
        n=4_000,
        unit="round trip",
        doc="TLS streams (asyncio's sslproto on the loop's transports): 1 KiB request/response",
        quick_n=200,
    ),
    Benchmark(
        "tls_bulk",
        "micro",
        "bench.tls:tls_bulk",
        n=64,
        unit="MiB",
        doc="TLS streams: 1 MiB writes with drain() one way, both ends on the loop",
        quick_n=4,
    ),
    # Subprocesses (group "proc"): spawn rate and pipe throughput, in-process like
    # the micro rows. Issue: fastloop at least the best of asyncio and uvloop.
    Benchmark(
        "spawn_exit",
        "proc",
        "bench.proc:spawn_exit",
        n=600,
        unit="process",
        doc=f"create_subprocess_exec(`true`, stdio to /dev/null) + wait(), "
        f"{PROC_CONCURRENCY} in flight",
        params={"concurrency": PROC_CONCURRENCY},
        targets=(AT_LEAST_ASYNCIO,),
        quick_n=40,
    ),
    Benchmark(
        "spawn_pipe_communicate",
        "proc",
        "bench.proc:spawn_pipe_communicate",
        n=300,
        unit="process",
        doc=f"`cat` with stdin/stdout piped: communicate(1 KiB), echo checked, "
        f"{PROC_CONCURRENCY} in flight",
        params={"concurrency": PROC_CONCURRENCY},
        targets=(AT_LEAST_ASYNCIO,),
        quick_n=30,
    ),
    Benchmark(
        "pipe_read_throughput",
        "proc",
        "bench.proc:pipe_read_throughput",
        n=512,
        unit="MiB",
        doc="`head -c n MiB /dev/zero` read from proc.stdout with read(64 KiB) until EOF",
        targets=(AT_LEAST_ASYNCIO,),
        quick_n=32,
        repeat=PIPE_REPEAT,
    ),
    Benchmark(
        "pipe_write_throughput",
        "proc",
        "bench.proc:pipe_write_throughput",
        n=384,
        unit="MiB",
        doc="proc.stdin.write(64 KiB) + drain() to `wc -c`, n MiB; its count checked",
        targets=(AT_LEAST_ASYNCIO,),
        quick_n=32,
        repeat=PIPE_REPEAT,
    ),
    # The same write, into a kernel object the parent makes, so that every loop
    # writes into the same kind: what PIPE means differs (bench/README.md).
    Benchmark(
        "fifo_write_throughput",
        "proc",
        "bench.proc:fifo_write_throughput",
        n=384,
        unit="MiB",
        doc="pipe_write_throughput into an os.pipe() given to `wc -c` as an fd, "
        "written through connect_write_pipe",
        targets=(AT_LEAST_ASYNCIO,),
        quick_n=32,
        repeat=PIPE_REPEAT,
    ),
    Benchmark(
        "socketpair_write_throughput",
        "proc",
        "bench.proc:socketpair_write_throughput",
        n=384,
        unit="MiB",
        doc="the same into a Unix socketpair (what uvloop gives children for PIPE)",
        targets=(AT_LEAST_ASYNCIO,),
        quick_n=32,
        repeat=PIPE_REPEAT,
    ),
]

# Echo throughput (group "echo"): a server in one of four styles on the loop
# under test (bench/echo_server.py), loaded by the C load generator
# (bench/loadgen/loadgen.c) over TCP and Unix sockets; before each block of four,
# the plain-C libuv echo server (bench/loadgen/uv_echo.c) as the ceiling.
ECHO_STYLES: dict[str, str] = {
    "protocol": "asyncio.Protocol: data_received -> transport.write",
    "buffered": "asyncio.BufferedProtocol: get_buffer/buffer_updated -> transport.write",
    "streams": "start_server streams: reader.read(65536) -> writer.write + drain",
    "sockets": "sock_accept + per-connection task: sock_recv(65536) -> sock_sendall",
}
ECHO_SIZES: dict[str, int] = {"1k": 1024, "10k": 10240, "100k": 102400}
ECHO_TRANSPORTS: tuple[str, ...] = ("tcp", "unix")
ECHO_QUICK_SIZE = "100k"  # --quick runs one size (the one with partial reads/writes)
ECHO_CONNECTIONS = 10  # why 10: bench/README.md
ECHO_MS = 1000  # timed span of one sample (after a warm-up of a quarter of it, 0.25 s at most)
ECHO_QUICK_MS = 150
ECHO_REPEAT = 5  # why 5, not 3: bench/README.md ("Sample length and repeats")

for _transport in ECHO_TRANSPORTS:
    for _label, _size in ECHO_SIZES.items():
        _params = {"transport": _transport, "size": _size, "connections": ECHO_CONNECTIONS}
        _ceiling = f"echo_ceiling_{_label}_{_transport}"
        _common = dict(
            n=ECHO_MS,
            quick_n=ECHO_QUICK_MS,
            unit="request",
            driver=True,
            repeat=ECHO_REPEAT,
        )
        BENCHMARKS.append(
            Benchmark(
                _ceiling,
                "echo",
                "bench.echo:ceiling",
                doc=f"the ceiling: plain-C libuv echo server, {_transport}, {_size} B messages",
                params=_params,
                runs_on=(CEILING,),
                tools=("loadgen", "uv_echo"),
                in_quick=False,  # not a loop: nothing to smoke-test
                **_common,
            )
        )
        for _style, _what in ECHO_STYLES.items():
            BENCHMARKS.append(
                Benchmark(
                    f"echo_{_style}_{_label}_{_transport}",
                    "echo",
                    "bench.echo:echo",
                    doc=f"{_what}; {_transport}, {_size} B messages",
                    params={"style": _style, **_params},
                    targets=(AT_LEAST_ASYNCIO,),
                    ceiling=_ceiling,
                    tools=("loadgen",),
                    in_quick=_label == ECHO_QUICK_SIZE,
                    **_common,
                )
            )

# UDP (group "udp"). Round trips: a datagram echo server on the loop under test
# (bench/echo_server.py, style "datagram") loaded by the C load generator with
# UDP_FLOWS flows, one datagram in flight each, the plain-C libuv UDP echo server
# as the ceiling. One way: both endpoints in-process on the loop (bench/udp.py).
UDP_SIZES: dict[str, int] = {"small": 64, "8k": 8192}
UDP_FLOWS = 10  # as the echo rows' 10 connections: bench/README.md
UDP_ONEWAY: dict[str, tuple[int, int]] = {"small": (40_000, 128), "8k": (30_000, 32)}  # n, window

for _label, _size in UDP_SIZES.items():
    _params = {"transport": "udp", "size": _size, "connections": UDP_FLOWS}
    _ceiling = f"udp_ceiling_{_label}"
    _common = dict(
        n=ECHO_MS, quick_n=ECHO_QUICK_MS, unit="round trip", driver=True, repeat=ECHO_REPEAT
    )
    BENCHMARKS.append(
        Benchmark(
            _ceiling,
            "udp",
            "bench.echo:ceiling",
            doc=f"the ceiling: plain-C libuv UDP echo server, {_size} B datagrams",
            params=_params,
            runs_on=(CEILING,),
            tools=("loadgen", "uv_echo"),
            in_quick=False,
            **_common,
        )
    )
    BENCHMARKS.append(
        Benchmark(
            f"udp_pingpong_{_label}",
            "udp",
            "bench.echo:echo",
            doc=f"DatagramProtocol echo server (datagram_received -> sendto), {_size} B "
            f"datagrams, {UDP_FLOWS} client flows with one in flight each",
            params={"style": "datagram", **_params},
            ceiling=_ceiling,
            tools=("loadgen",),
            in_quick=_label == "8k",
            **_common,
        )
    )
for _label, _size in UDP_SIZES.items():
    _n, _window = UDP_ONEWAY[_label]
    BENCHMARKS.append(
        Benchmark(
            f"udp_oneway_{_label}",
            "udp",
            "bench.udp:udp_oneway",
            n=_n,
            unit="datagram",
            doc=f"one endpoint sendto()s {_size} B datagrams to another on the same loop, "
            f"{_window} per window; datagrams received per second",
            params={"size": _size, "window": _window},
            in_quick=_label == "small",
        )
    )

# HTTP (group "http"): a "Hello, world!" server on the loop under test in its own
# process (bench/web_server.py), loaded by wrk (bench/web.py).
HTTP_APPS: dict[str, str] = {
    "uvicorn": "uvicorn (http=httptools, loop=none) serving a raw ASGI app",
    "aiohttp": "aiohttp.web (AppRunner + TCPSite), one GET / route",
}
HTTP_CONNECTIONS = 64
HTTP_MS = 1000  # wrk's span: whole seconds, 1 s the shortest (5 repeats: ~100 s a full run)

for _app, _what in HTTP_APPS.items():
    BENCHMARKS.append(
        Benchmark(
            f"http_{_app}_hello",
            "http",
            "bench.web:http_hello",
            n=HTTP_MS,
            quick_n=300,  # no wrk: one checked keep-alive connection, a smoke test (bench/web.py)
            unit="request",
            doc=f"{_what}: 'Hello, world!' for GET /; wrk -t1 -c{HTTP_CONNECTIONS}, keep-alive",
            params={"app": _app, "connections": HTTP_CONNECTIONS, "threads": 1},
            driver=True,
            in_quick=_app == "uvicorn",
        )
    )

# Scaling (group "scale", bench/scale.py): how costs grow with the timers pending
# and the connections open. In-process; each row warms itself up and puts its
# per-size figures in Measurement.extra["scale"], printed under the table.
SCALE_REPEAT = 3  # a timer sample builds a million timers: ~2-3 s on asyncio
SCALE_TIMERS = (10**3, 10**4, 10**5, 10**6)
SCALE_IDLE = 10_000

BENCHMARKS += [
    Benchmark(
        "timer_ops_vs_pending",
        "scale",
        "bench.scale:timer_ops_vs_pending",
        n=20_000,
        unit="timer op",
        doc="a timer fires, schedules+cancels a far timer and the next call_later(0), with "
        "10^3..10^6 timers pending; ops/s at 10^6, ns/op per size below",
        params={"sizes": SCALE_TIMERS},
        quick_n=500,
        warmup=False,
        repeat=SCALE_REPEAT,
        in_quick=False,  # a million timers per loop: seconds, not a smoke test
    ),
    Benchmark(
        "iteration_vs_idle_connections",
        "scale",
        "bench.scale:iteration_vs_idle_connections",
        n=30_000,
        unit="iteration",
        doc=f"a byte hops over one active socketpair (one poll per hop), with 0 and "
        f"{SCALE_IDLE:,} idle transports open; ops/s with them, ns per hop below",
        params={"idle": SCALE_IDLE},
        quick_n=2_000,
        warmup=False,
        repeat=SCALE_REPEAT,
    ),
    Benchmark(
        "memory_per_connection",
        "scale",
        "bench.scale:memory_per_connection",
        n=SCALE_IDLE,
        unit="connection",
        doc="RSS growth when the loop wraps n socketpair ends as transports+protocols; "
        "reported as connections per MiB (higher is better), bytes each below",
        quick_n=2_000,
        warmup=False,
        repeat=SCALE_REPEAT,
    ),
]

# Loop lag (group "lag", bench/lag.py): how late a task sleeping 10 ms wakes
# while the loop runs a fixed mixed workload; percentiles per loop in
# Measurement.extra["lag"], printed under the table and plotted.
LAG_MS = 2500  # timed span of one sample: 250 probe samples
LAG_REPEAT = 3

BENCHMARKS.append(
    Benchmark(
        "loop_lag",
        "lag",
        "bench.lag:loop_lag",
        n=LAG_MS,
        quick_n=300,
        unit="step",
        doc="how late a task's asyncio.sleep(0.01) wakes while 2 tasks burn 0.25-1.75 ms of "
        "CPU then sleep 0-6 ms, 20 tasks sleep(0) x5 then sleep(0.001), 4 socketpairs "
        "ping-pong 256 B every ms; ops/s are the workload's steps, lag percentiles below",
        params={"period": 0.01},
        repeat=LAG_REPEAT,
        span=True,
        global_targets=False,  # the steps/s are the workload's, not a race
    )
)

# fastloop+health (fastloop with the lag monitor, a slow-callback handler and the
# watchdog on) as a column of its own on HEALTH_ROWS, held to HEALTH_TARGET on
# HEALTH_TARGET_ROWS.
_missing = [n for n in HEALTH_ROWS if n not in {b.name for b in BENCHMARKS}]
if _missing:
    raise RuntimeError(f"HEALTH_ROWS names unknown rows: {_missing}")
BENCHMARKS = [
    replace(
        b,
        also_on=(*b.also_on, HEALTH),
        targets=b.targets + ((HEALTH_TARGET,) if b.name in HEALTH_TARGET_ROWS else ()),
    )
    if b.name in HEALTH_ROWS
    else b
    for b in BENCHMARKS
]


class Acceptance(NamedTuple):
    """An issue's criterion, summed up in one line under the tables."""

    title: str
    covers: Callable[[Benchmark], bool]  # the rows it is judged on
    counts: Callable[[Target], bool]  # the targets of those rows it is about


# Read by people, not asserted (each row's own pass/FAIL is in its targets column).
ACCEPTANCES: tuple[Acceptance, ...] = (
    Acceptance(
        "issue 3: fastloop >= the best of asyncio and uvloop on every TCP echo row",
        lambda b: b.group == "echo" and not b.runs_on and b.params.get("transport") == "tcp",
        lambda t: t.subject == SUBJECT,
    ),
    Acceptance(
        f"issue 13: the loop-health features (lag monitor, slow-callback handler, watchdog) "
        f"cost <= 2%: {HEALTH_TARGET.sentence} on {', '.join(HEALTH_TARGET_ROWS)}",
        lambda b: HEALTH_TARGET in b.targets,
        lambda t: t == HEALTH_TARGET,
    ),
)

GROUP_TITLES: dict[str, str] = {
    "micro": "micro-benchmarks (ops/s)",
    "proc": "subprocesses (processes/s; MiB/s on the *_throughput rows)",
    "echo": f"echo servers (requests/s; {ECHO_CONNECTIONS} connections, request/response)",
    "http": f"HTTP servers (requests/s; wrk, {HTTP_CONNECTIONS} keep-alive connections)",
    "scale": "scaling (ops/s at the largest size; connections per MiB on memory_per_connection)",
    "udp": f"UDP (round trips/s with {UDP_FLOWS} flows on the pingpong rows; "
    "datagrams received/s on the oneway rows)",
    "lag": "loop lag under a mixed workload (the workload's steps/s; lag percentiles below)",
}

BY_NAME: dict[str, Benchmark] = {b.name: b for b in BENCHMARKS}
GROUPS: tuple[str, ...] = tuple(dict.fromkeys(b.group for b in BENCHMARKS))


def select(names: list[str] | None, quick: bool = False) -> list[Benchmark]:
    """Benchmarks by name, group name or glob (echo_*_tcp), in registry order.

    None means all groups. Under --quick, a group brings only its ``in_quick``
    rows; names and globs bring what they match.
    """
    if not names:
        names = list(GROUPS)
    groups = {p for p in names if p in GROUPS}
    patterns = [p for p in names if p not in GROUPS]
    unknown = [p for p in patterns if not any(fnmatchcase(b.name, p) for b in BENCHMARKS)]
    if unknown:
        raise ValueError(
            f"unknown benchmark(s): {', '.join(unknown)}; see --list "
            f"(a name, a group: {', '.join(GROUPS)}, or a glob such as 'echo_*_tcp')"
        )
    return [
        b
        for b in BENCHMARKS
        if any(fnmatchcase(b.name, p) for p in patterns)
        or (b.group in groups and (b.in_quick or not quick))
    ]
