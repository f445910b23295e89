"""Runs the samples: one fresh subprocess per (benchmark, loop, repeat), loops interleaved.

The order is: for each repeat, for each benchmark, every loop once, the loop
order rotated by one each repeat. A burst of machine noise therefore lands on
one sample of several loops rather than on every sample of one loop, and no
loop always runs right after the same other loop.

The statistic is the BEST sample (highest ops/s) of each cell. On a shared
machine noise (other processes, frequency changes, cache pollution) only ever
makes a run slower, never faster, so the fastest of N runs is the closest
estimate of the code's own cost and the most reproducible from run to run.
The median and the spread are kept too (JSON, Markdown) to show how noisy the
run was.
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

from bench import cbuild, loops
from bench.registry import Benchmark

ROOT = Path(__file__).resolve().parent.parent  # the directory holding the bench package
STATISTIC = "best"
PROBE_TIMEOUT = 60.0


@dataclass
class LoopInfo:
    name: str
    available: bool = False
    version: str | None = None
    loop_class: str | None = None
    reason: str | None = None  # why not available
    extra: bool = False  # not selected: a variant run only on the rows naming it (also_on)


@dataclass
class Cell:
    """The samples of one (benchmark, loop)."""

    rates: list[float] = field(default_factory=list)  # ops/s, one per sample
    extras: list[dict] = field(default_factory=list)  # the samples' extra data (latencies...)
    error: str | None = None  # the loop failed this benchmark; no more samples taken
    skip: str | None = None  # the benchmark cannot run here
    loop_class: str | None = None

    @property
    def best(self) -> float | None:
        return max(self.rates) if self.rates else None

    @property
    def median(self) -> float | None:
        return statistics.median(self.rates) if self.rates else None

    @property
    def spread(self) -> float | None:
        """(max - min) / median of the samples: how noisy this cell was."""
        if len(self.rates) < 2:
            return None
        return (max(self.rates) - min(self.rates)) / statistics.median(self.rates)

    @property
    def value(self) -> float | None:
        return self.best if STATISTIC == "best" else self.median

    @property
    def best_extra(self) -> dict | None:
        """The extra data of the best sample."""
        if not self.rates or len(self.extras) != len(self.rates):
            return None
        return self.extras[self.rates.index(max(self.rates))]

    @property
    def problem(self) -> str | None:
        return self.error or self.skip


@dataclass
class Run:
    meta: dict
    loops: list[LoopInfo]
    benchmarks: list[Benchmark]
    cells: dict[tuple[str, str], Cell]

    def cell(self, bench: str, loop: str) -> Cell | None:
        """None where the row does not run on that loop (a ceiling row on a real loop...)."""
        return self.cells.get((bench, loop))

    def value(self, bench: str, loop: str) -> float | None:
        cell = self.cells.get((bench, loop))
        return cell.value if cell else None

    def ratio(self, bench: str, loop: str, baseline: str) -> float | None:
        a, b = self.value(bench, loop), self.value(bench, baseline)
        if a is None or not b:
            return None
        return a / b


def _env() -> dict[str, str]:
    env = dict(os.environ)
    # Debug and dev modes slow asyncio's loop far more than the others.
    for var in ("PYTHONASYNCIODEBUG", "PYTHONDEVMODE"):
        env.pop(var, None)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    return env


def _describe_exit(code: int) -> str:
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exited with status {code}"


def call_worker(args: list[str], timeout: float) -> dict:
    """Run bench.worker with `args` and return its JSON result, or an error result."""
    cmd = [sys.executable, "-m", "bench.worker", *args]
    try:
        proc = subprocess.run(
            cmd, cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=timeout
        )
    except subprocess.TimeoutExpired:
        return {"ok": False, "error": f"timed out after {timeout:g} s"}
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith("{"):
            try:
                return json.loads(line)
            except json.JSONDecodeError:
                break
    tail = proc.stderr.strip().splitlines()[-1:] or ["no output"]
    return {"ok": False, "error": f"worker {_describe_exit(proc.returncode)}: {tail[0]}"}


def probe(name: str, timeout: float) -> LoopInfo:
    result = call_worker(["--probe", "--loop", name], timeout)
    if result.get("ok"):
        return LoopInfo(name, True, result["version"], result.get("loop_class"))
    reason = result.get("error") or result.get("skip") or "unknown failure"
    if reason.startswith(("ModuleNotFoundError", "ImportError")):
        reason = f"{reason} ({loops.LOOPS[name].install_hint})"
    return LoopInfo(name, False, reason=reason)


def _short_rate(x: float) -> str:
    for scale, suffix in ((1e6, "M"), (1e3, "k")):
        if x >= scale:
            return f"{x / scale:.3g}{suffix}"
    return f"{x:.3g}"


def machine_meta() -> dict:
    cpu_model = platform.processor() or "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        commit = ""
    return {
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "python": sys.version.split()[0],
        "python_build": f"{platform.python_implementation()} {sys.version}",
        "executable": sys.executable,
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "cpu_affinity": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "cpu_model": cpu_model,
        "git_commit": commit or None,
    }


def repeats(bench: Benchmark, repeat: int | None, quick: bool) -> int:
    """Samples per cell of `bench`: --repeat if given, else 1 under --quick, else the row's."""
    if repeat is not None:
        return repeat
    return 1 if quick else bench.repeat


def run(
    benchmarks: list[Benchmark],
    loop_names: list[str],
    *,
    repeat: int | None,
    quick: bool,
    timeout: float,
    log=print,
) -> Run:
    started = time.monotonic()
    meta = machine_meta()
    meta.update(
        repeat=repeat,
        repeats={b.name: repeats(b, repeat, quick) for b in benchmarks},
        quick=quick,
        statistic=STATISTIC,
    )

    # The C helpers of the echo rows (load generator, libuv ceiling server).
    tools = sorted({t for b in benchmarks for t in b.tools})
    if tools:
        meta["build_failures"] = cbuild.ensure(tools, log=log)

    # Variant loops (fastloop+health) join the rows naming them in also_on,
    # when the loop they vary is among the selected ones.
    extras = [
        name
        for name in dict.fromkeys(n for b in benchmarks for n in b.also_on)
        if name not in loop_names and loops.LOOPS[name].variant_of in loop_names
    ]
    # A probe imports the loop and runs one coroutine: seconds at most, unless it hangs.
    infos = [probe(name, PROBE_TIMEOUT) for name in loop_names]
    infos += [replace(probe(name, PROBE_TIMEOUT), extra=True) for name in extras]
    for info in infos:
        if not info.available:
            log(f"note: {info.name} is n/a: {info.reason}")
    available = [i.name for i in infos if i.available]
    cells = {}
    for b in benchmarks:
        names = b.runs_on or [*loop_names, *(n for n in b.also_on if n in extras)]
        for name in names:
            cells[(b.name, name)] = Cell()
    for info in infos:
        if not info.available:
            for b in benchmarks:
                if (b.name, info.name) in cells:
                    cells[(b.name, info.name)].skip = "loop not available"

    width = max((len(b.name) for b in benchmarks), default=0)
    rounds = max((repeats(b, repeat, quick) for b in benchmarks), default=0)
    for rep in range(rounds):
        for bench in benchmarks:
            total = repeats(bench, repeat, quick)
            if rep >= total:
                continue
            n = bench.size(quick)
            order = [name for name in available if (bench.name, name) in cells]
            shift = rep % len(order) if order else 0
            shown = []
            for name in bench.runs_on or order[shift:] + order[:shift]:
                cell = cells[(bench.name, name)]
                if cell.problem:
                    continue
                result = call_worker(
                    ["--loop", name, "--bench", bench.name, "--n", str(n)], timeout
                )
                if result.get("ok") and result["seconds"] > 0:
                    rate = result["ops"] / result["seconds"]
                    cell.rates.append(rate)
                    cell.extras.append(result.get("extra") or {})
                    cell.loop_class = result.get("loop_class")
                    shown.append(f"{name} {_short_rate(rate)}")
                elif result.get("ok"):
                    cell.error = "timed span was zero (work size too small?)"
                elif "skip" in result:
                    cell.skip = result["skip"]
                else:
                    cell.error = result.get("error", "unknown failure")
                    log(f"note: {bench.name} on {name} failed: {cell.error}")
                if cell.problem:
                    shown.append(f"{name} n/a")
            log(f"[{rep + 1}/{total}] {bench.name:<{width}}  " + "  ".join(shown))

    meta["wall_seconds"] = round(time.monotonic() - started, 1)
    return Run(meta, infos, benchmarks, cells)
