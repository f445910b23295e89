"""What a benchmark is, the list of them, and the targets fastloop is held to.

A row of the report is one ``Benchmark``: a function ``func(loop, n, **params)``
named by its import path (so the parent process never imports benchmark code),
a fixed work size ``n`` sized to take ~0.2-0.5 s on asyncio on a 2-core CI-class
machine, and the targets besides the global one (fastloop >= uvloop).

To add a row, write the function (it returns a ``Measurement``; it raises
``Skip`` when it cannot run here, e.g. a helper binary is not built) and append a
``Benchmark`` to ``BENCHMARKS``. Nothing else changes: the runner, the table, the
JSON/Markdown and the plot are driven by this list.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import NamedTuple


class Measurement(NamedTuple):
    ops: int  # operations done in the timed span
    seconds: float  # length of the timed span


class Skip(Exception):
    """Raised by a benchmark that cannot run on this machine or loop; the message says why."""


@dataclass(frozen=True)
class Target:
    """fastloop's ops/s must be at least `factor` times the `baseline` loop's."""

    baseline: str
    factor: float

    @property
    def label(self) -> str:
        if self.factor == 1:
            return f">= {self.baseline}"
        return f">= {self.factor:g}x {self.baseline}"


# Held on every row.
GLOBAL_TARGETS: tuple[Target, ...] = (Target("uvloop", 1.0),)


@dataclass(frozen=True)
class Benchmark:
    name: str
    group: str  # "micro"; later "net", "proc"
    func: str  # "module:function", imported in the worker only
    n: int  # work size of a full run
    unit: str  # what one operation is, for the README and the Markdown
    doc: str  # one line: what the row measures
    params: Mapping[str, object] = field(default_factory=dict)
    targets: tuple[Target, ...] = ()  # in addition to GLOBAL_TARGETS
    quick_n: int | None = None  # work size under --quick (default n // 20)

    def size(self, quick: bool) -> int:
        if not quick:
            return self.n
        return self.quick_n if self.quick_n is not None else max(2, self.n // 20)

    def all_targets(self) -> tuple[Target, ...]:
        return GLOBAL_TARGETS + self.targets


TWICE_ASYNCIO = Target("asyncio", 2.0)

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
    # Networking plugs in here (group "net"): an echo server on the loop under
    # test, driven by the C load generator in bench/loadgen/ (built into
    # bench/loadgen/bin/, gitignored), over TCP and Unix sockets with 1, 10 and
    # 100 KiB messages: one Benchmark per (transport, size), e.g.
    #   Benchmark("echo_tcp_1k", "net", "bench.net:echo", n=..., unit="message",
    #             doc=..., params={"transport": "tcp", "size": 1024})
    # where bench.net:echo raises Skip("load generator not built") if needed.
    #
    # Subprocesses plug in here too (group "proc"): spawn rate and pipe
    # throughput, e.g. Benchmark("subprocess_spawn", "proc", "bench.proc:spawn", ...).
]

BY_NAME: dict[str, Benchmark] = {b.name: b for b in BENCHMARKS}
GROUPS: tuple[str, ...] = tuple(dict.fromkeys(b.group for b in BENCHMARKS))


def select(names: list[str] | None) -> list[Benchmark]:
    """Benchmarks by name or group name, in registry order; None means all."""
    if not names:
        return list(BENCHMARKS)
    unknown = [n for n in names if n not in BY_NAME and n not in GROUPS]
    if unknown:
        raise ValueError(
            f"unknown benchmark(s): {', '.join(unknown)}; "
            f"known: {', '.join(BY_NAME)} (or a group: {', '.join(GROUPS)})"
        )
    wanted = set(names)
    return [b for b in BENCHMARKS if b.name in wanted or b.group in wanted]
