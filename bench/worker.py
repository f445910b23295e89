"""One sample in a fresh process: ``python -m bench.worker --loop L --bench B --n N``.

For a driver row (``Benchmark.driver``, e.g. the echo servers) the worker makes
no loop: the row's function gets the loop's name, starts the loop under test in
a process of its own and loads it from outside.

A loop whose spec has a ``summary`` (``fastloop+health``) is asked for it after
the timed run, untimed; it goes into the extra data as ``"health"``.

Also ``--probe`` (no benchmark): import the loop, run a trivial coroutine on
it and report its version and class, so the parent learns whether the loop is
usable without importing it.

The result is one JSON line, the last line of stdout:
  {"ok": true, "ops": ..., "seconds": ..., "loop_class": ..., "extra": {...}}
  {"ok": false, "skip": "why"}       a benchmark that cannot run here
  {"ok": false, "error": "Type: msg"} anything else (traceback on stderr)
"""

from __future__ import annotations

import argparse
import gc
import importlib
import json
import sys
import traceback
from typing import TYPE_CHECKING

from bench import loops, registry

if TYPE_CHECKING:
    import asyncio

# The warm-up run before the timed one does this fraction of the work, on the
# same loop, so lazy imports, free lists and caches are warm for every loop alike.
WARMUP_FRACTION = 10


def _resolve(path: str):
    module, _, name = path.partition(":")
    return getattr(importlib.import_module(module), name)


def _qualname(obj: object) -> str:
    cls = type(obj)
    return f"{cls.__module__}.{cls.__qualname__}"


def _close(loop: asyncio.AbstractEventLoop) -> None:
    import asyncio

    try:
        if not loop.is_closed():
            loop.run_until_complete(loop.shutdown_asyncgens())
    finally:
        asyncio.set_event_loop(None)
        loop.close()


def probe(loop_name: str) -> dict:
    import asyncio

    loop = loops.new_loop(loop_name)
    try:
        asyncio.set_event_loop(loop)

        async def which() -> asyncio.AbstractEventLoop:
            await asyncio.sleep(0)
            return asyncio.get_running_loop()

        running = loop.run_until_complete(which())
        if running is not loop:
            raise RuntimeError(f"ran on {_qualname(running)}, not on the new loop")
        return {"ok": True, "version": loops.version(loop_name), "loop_class": _qualname(loop)}
    finally:
        _close(loop)


def sample(loop_name: str, bench_name: str, n: int) -> dict:
    bench = registry.BY_NAME[bench_name]
    func = _resolve(bench.func)
    if bench.driver:
        # The row starts the loop in a process of its own and warms it up itself.
        m = func(loop_name, n, **bench.params)
        return {"ok": True, "ops": m.ops, "seconds": m.seconds, "extra": m.extra}
    import asyncio  # not before: a driver row's worker has no use for it

    loop = loops.new_loop(loop_name)
    try:
        asyncio.set_event_loop(loop)
        if bench.warmup:
            func(loop, max(2, n // WARMUP_FRACTION), **bench.params)
        gc.collect()
        m = func(loop, n, **bench.params)
        result = {"ok": True, "ops": m.ops, "seconds": m.seconds, "loop_class": _qualname(loop)}
        extra = dict(m.extra or {})
        health = loops.summary(loop_name, loop)  # after the timed span (fastloop+health)
        if health is not None:
            extra["health"] = health
        if extra:
            result["extra"] = extra
        return result
    finally:
        _close(loop)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.worker")
    parser.add_argument("--loop", required=True, choices=sorted([*loops.LOOPS, registry.CEILING]))
    parser.add_argument("--probe", action="store_true")
    parser.add_argument("--bench", choices=sorted(registry.BY_NAME))
    parser.add_argument("--n", type=int)
    args = parser.parse_args(argv)
    if not args.probe and (args.bench is None or args.n is None):
        parser.error("--bench and --n are required without --probe")
    if args.loop not in loops.LOOPS and (args.probe or not registry.BY_NAME[args.bench].runs_on):
        parser.error(f"{args.loop} is a pseudo-loop, only for the rows that run on it")
    try:
        if args.probe:
            result = probe(args.loop)
        else:
            result = sample(args.loop, args.bench, args.n)
    except registry.Skip as exc:
        result = {"ok": False, "skip": str(exc)}
    except Exception as exc:  # reported to the parent, which carries on
        traceback.print_exc()
        result = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
    sys.stdout.flush()
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
