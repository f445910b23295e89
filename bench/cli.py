"""Command line of ``python -m bench``."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from bench import loops, registry, report, runner

DEFAULT_OUT = Path(__file__).resolve().parent / "results"


def _names(value: str) -> list[str]:
    return [v.strip() for v in value.split(",") if v.strip()]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description="Benchmarks of asyncio event loops, side by side: micro-benchmarks, "
        "subprocesses, echo and UDP servers under a C load generator, HTTP servers under "
        "wrk, how costs scale with timers and connections, and loop lag.",
    )
    parser.add_argument(
        "--loops",
        type=_names,
        default=list(loops.DEFAULT_LOOPS),
        help=f"comma-separated loops (default: {','.join(loops.DEFAULT_LOOPS)}; "
        f"known: {','.join(loops.LOOPS)}); a loop that is not installed shows n/a",
    )
    parser.add_argument(
        "--only",
        type=_names,
        default=None,
        help="comma-separated benchmark names, group names (micro, proc, echo, udp, http, "
        "scale, lag) or globs "
        "('echo_*_tcp'); default: all; see --list",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="small work sizes, 1 repeat, echo rows at one size only: "
        "a smoke run (~30 s), not a measurement",
    )
    parser.add_argument(
        "--repeat",
        type=int,
        default=None,
        help="samples per cell (default: the row's, 5; 9 for the *_throughput rows; "
        "3 for the scale rows; 1 with --quick)",
    )
    parser.add_argument(
        "--timeout", type=float, default=120.0, help="seconds one sample may take (default 120)"
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=DEFAULT_OUT,
        help=f"directory for bench.json, bench.md, bench.png (default {DEFAULT_OUT})",
    )
    parser.add_argument("--no-plot", action="store_true", help="do not draw bench.png")
    parser.add_argument("--list", action="store_true", help="list the benchmarks and exit")
    args = parser.parse_args(argv)
    unknown = [n for n in args.loops if n not in loops.LOOPS]
    if unknown:
        parser.error(f"unknown loop(s): {', '.join(unknown)}; known: {', '.join(loops.LOOPS)}")
    args.loops = list(dict.fromkeys(args.loops))
    try:
        args.benchmarks = registry.select(args.only, quick=args.quick)
    except ValueError as exc:
        parser.error(str(exc))
    if args.repeat is not None and args.repeat < 1:
        parser.error("--repeat must be at least 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.list:
        for b in args.benchmarks:
            print(f"{b.name:<24} {b.group:<6} {b.size_text(args.quick):<18} {b.doc}")
        return 0

    def log(message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    run = runner.run(
        args.benchmarks,
        args.loops,
        repeat=args.repeat,
        quick=args.quick,
        timeout=args.timeout,
        log=log,
    )
    print()
    print(report.text(run))
    print()
    paths = report.write(run, args.out)
    print(f"wrote {paths['json']}")
    print(f"wrote {paths['md']}")
    if not args.no_plot:
        try:
            png = report.plot(run, args.out / "bench.png")
        except Exception as exc:  # the table matters more than the picture
            print(f"no plot: {type(exc).__name__}: {exc}")
        else:
            print(f"plot: {png}")
    print(f"wall time: {run.meta['wall_seconds']:.1f} s")
    return 0
