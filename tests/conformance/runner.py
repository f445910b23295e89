"""`python -m tests.conformance`: CPython's asyncio suite on the loop under test.

See README.md in this directory.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import shutil
import signal
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from tests.conformance import loops
from tests.conformance.supervise import BAD, ModuleRun, run_module, stop_all
from tests.conformance.verdict import (
    EXPECTED_FAILURES,
    Verdict,
    current_version,
    judge,
    load_expected,
)

MODULES = (
    "test_futures",
    "test_futures2",
    "test_locks",
    "test_queues",
    "test_tasks",
    "test_taskgroups",
    "test_timeouts",
    "test_waitfor",
    "test_pep492",
    "test_context",
    "test_runners",
    "test_threads",
    # networking (issue 3)
    "test_events",
    "test_streams",
    "test_sock_lowlevel",
    "test_sendfile",
    "test_server",
    "test_buffered_proto",
    "test_protocols",
    "test_ssl",
    "test_transports",
    # processes (issue 4)
    "test_subprocess",
    # in newer Pythons' suites only: run where the running Python has them
    "test_eager_task_factory",  # 3.12+
    "test_staggered",  # 3.13+
)
# Slowest first, so the two workers finish together (seconds on asyncio).
_COST = {
    "test_tasks": 20,
    "test_subprocess": 15,
    "test_ssl": 13,
    "test_waitfor": 8,
    "test_locks": 6,
    "test_events": 4,
    "test_futures": 4,
}
OUTCOMES = ("pass", "fail", "error", "skip", "hang", "crash")


def parse_args(argv):
    p = argparse.ArgumentParser(
        prog="python -m tests.conformance",
        description="Run CPython's test_asyncio modules on an event loop and compare with asyncio.",
    )
    p.add_argument(
        "--loop",
        default="both",
        help="asyncio, fastloop, uvloop, both (= asyncio,fastloop) or a comma list; "
        "when asyncio is in the list it is the reference for the others",
    )
    p.add_argument(
        "--modules",
        help="comma list of test_asyncio modules (default: every module of the list in "
        "runner.py that the running Python's test.test_asyncio has)",
    )
    p.add_argument("--timeout", type=float, default=30.0, help="seconds per test (default 30)")
    p.add_argument("-k", action="append", default=[], help="run tests whose id contains this")
    p.add_argument("-v", "--verbose", action="store_true", help="print each failure as it happens")
    p.add_argument("-j", "--jobs", type=int, default=2, help="module children at a time")
    p.add_argument(
        "--reruns",
        type=int,
        default=1,
        help="re-run a test that fails only on the loop under test this many times, alone; "
        "if it then passes it is reported as flaky, not failed",
    )
    p.add_argument("--expected-failures", type=Path, default=EXPECTED_FAILURES)
    p.add_argument("--json", type=Path, help="write every result to this file")
    p.add_argument("--keep-logs", action="store_true", help="keep the children's output")
    args = p.parse_args(argv)
    names = ["asyncio", "fastloop"] if args.loop == "both" else args.loop.split(",")
    for name in names:
        if name not in loops.LOOPS:
            p.error(f"unknown loop {name!r}; expected one of {', '.join(loops.LOOPS)} or both")
    args.loops = list(dict.fromkeys(names))
    if args.modules is None:
        args.module_list = [m for m in MODULES if _exists(m)]
        args.absent = [m for m in MODULES if m not in args.module_list]
    else:
        names = [
            m if m.startswith("test_") or "." in m else f"test_{m}" for m in args.modules.split(",")
        ]
        args.module_list = list(dict.fromkeys(names))
        args.absent = []
        for m in args.module_list:
            if not _exists(m):
                p.error(f"no module {loops.qualify(m)} in Python {sys.version.split()[0]}")
    return args


def _exists(module: str) -> bool:
    try:
        return importlib.util.find_spec(loops.qualify(module)) is not None
    except ImportError:
        return False


def _table(loop: str, runs: list[ModuleRun]) -> str:
    w = max([16] + [len(run.module) + 1 for run in runs])
    head = f"{'module':<{w}}" + "".join(f"{c:>7}" for c in ("run", *OUTCOMES, "onloop", "secs"))
    made = sorted({t for run in runs for t in run.loop_types})
    lines = [f"== {loops.describe(loop)}; loops made: {', '.join(made) or 'none'} ==", head]
    total = dict.fromkeys(("run", *OUTCOMES, "onloop"), 0)
    for run in runs:
        counts = dict.fromkeys(("run", *OUTCOMES, "onloop"), 0)
        for row in run.rows():
            counts["run"] += 1
            counts[row["outcome"]] += 1
            counts["onloop"] += bool(row.get("on_loop"))
        for key, value in counts.items():
            total[key] += value
        cells = "".join(f"{counts[c]:>7}" for c in counts) + f"{run.secs:>7.1f}"
        lines.append(f"{run.module:<{w}}{cells}")
    lines.append(f"{'TOTAL':<{w}}" + "".join(f"{total[c]:>7}" for c in total))
    return "\n".join(lines)


def _print_verdict(v: Verdict, reference: bool, path: Path, verbose: bool):
    if reference:
        print(
            f"\n-- {v.loop}: tests that pass on asyncio but not on {v.loop}: {len(v.regressions)}"
        )
    else:
        print(
            f"\n-- {v.loop}: tests that do not pass (no asyncio run to compare with, so all count)"
        )
    listed = [row for row, reason in v.regressions if reason is not None]
    if listed:
        print(f"  {len(listed)} of them are listed in {path.name}" + (":" if verbose else ""))
    for row, reason in sorted(v.regressions, key=lambda r: r[0]["id"]):
        if reason is None:
            print(f"  {row['outcome'].upper():<5} {row['id']}\n        {row['detail']}")
        elif verbose:
            print(f"  {row['outcome'].upper():<5} {row['id']}  [listed: {reason}]")
    for row in v.flaky:
        print(f"  FLAKY {row['id']} (failed, then passed alone): {row['first_detail']}")
    for row in v.skipped_here:
        print(f"  note: skipped on {v.loop} but passes on asyncio: {row['id']} ({row['detail']})")
    for test_id in v.fail_on_reference_too:
        print(f"  note: listed in {path.name} but fails on asyncio too: {test_id}")
    if v.unexpected:
        print(
            f"FAIL: {len(v.unexpected)} test(s) pass on asyncio but not on {v.loop} and are "
            f"not in {path.name}"
        )
    for test_id in v.now_passing:
        print(f"FAIL: {test_id} passes on {v.loop} now: remove it from {path.name}")
    for test_id in v.unknown:
        print(f"FAIL: {test_id} in {path.name} is not a test of its module any more")


def _counts(by_loop: dict[str, list[ModuleRun]], verdicts: dict[str, Verdict]) -> str:
    """One line for the summary of make test: what passed on each loop, what did not."""
    parts = []
    for loop, runs in by_loop.items():
        rows = [row for run in runs for row in run.rows()]
        text = f"{loop} {sum(r['outcome'] == 'pass' for r in rows)} passed"
        for outcome in ("hang", "crash"):
            n = sum(r["outcome"] == outcome for r in rows)
            if n:
                text += f", {n} {outcome}"
        v = verdicts.get(loop)
        if v is not None:
            listed = len(v.regressions) - len(v.unexpected)
            if v.unexpected:
                text += f", {len(v.unexpected)} unexpected failure(s)"
            if listed:
                text += f", {listed} listed"
            if v.now_passing or v.unknown:
                text += f", {len(v.now_passing) + len(v.unknown)} stale list entries"
        parts.append(text)
    return "; ".join(parts)


def _rerun(runs: list[ModuleRun], suspects: dict[str, set[str]], opts, log_dir: str):
    """Run the suspects of each module again in a fresh child; a pass marks them flaky."""
    for _ in range(opts.reruns):
        for run in runs:
            ids = suspects.get(run.module)
            if not ids:
                continue
            again = run_module(run.loop, run.module, opts, log_dir, only=set(ids))
            for test_id, row in again.results.items():
                if row["outcome"] == "pass":
                    first = run.results[test_id]
                    row.update(flaky=True, first_detail=f"{first['outcome']}: {first['detail']}")
                    run.results[test_id] = row
                    ids.discard(test_id)


def main(argv=None) -> int:
    opts = parse_args(sys.argv[1:] if argv is None else argv)
    try:
        expected = load_expected(opts.expected_failures, current_version())
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for loop in opts.loops:
        try:
            loops.policy_and_factory(loop)
        except ImportError as exc:
            print(f"error: cannot import the {loop} loop: {exc}", file=sys.stderr)
            return 2
    log_dir = tempfile.mkdtemp(prefix="fastloop-conformance-")
    started = time.monotonic()
    jobs = [(loop, m) for m in opts.module_list for loop in opts.loops]
    jobs.sort(key=lambda job: -_COST.get(job[1], 1))
    lock = threading.Lock()
    finished = [0]

    def one(job):
        run = run_module(*job, opts, log_dir)
        with lock:
            finished[0] += 1
            counts = {o: sum(r["outcome"] == o for r in run.rows()) for o in OUTCOMES}
            summary = " ".join(f"{o}={n}" for o, n in counts.items() if n)
            print(
                f"[{finished[0]}/{len(jobs)}] {run.loop:<8} {run.module:<15} "
                f"{run.secs:6.1f}s  {summary}",
                flush=True,
            )
        return run

    print(
        f"conformance: {', '.join(opts.loops)} x {len(opts.module_list)} modules of "
        f"Python {sys.version.split()[0]}, logs in {log_dir}"
    )
    if opts.absent:
        print(f"  not in this Python's test.test_asyncio: {', '.join(opts.absent)}")
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    pool = ThreadPoolExecutor(max_workers=max(1, opts.jobs))
    try:
        done = list(pool.map(one, jobs))
    except BaseException:
        stop_all()
        print(f"conformance: interrupted; children's output in {log_dir}", file=sys.stderr)
        raise
    finally:
        pool.shutdown(cancel_futures=True)
    by_loop = {
        loop: sorted(
            (r for r in done if r.loop == loop), key=lambda r: opts.module_list.index(r.module)
        )
        for loop in opts.loops
    }
    reference = by_loop.get("asyncio")
    full = set() if opts.k else set(opts.module_list)
    tested = [loop for loop in opts.loops if loop != "asyncio"]

    # Failures on the loop under test that asyncio passes get one more chance, alone.
    if opts.reruns:
        for loop in tested:
            v = judge(loop, by_loop[loop], reference, expected, full)
            suspects: dict[str, set[str]] = {}
            for run in by_loop[loop]:
                for row, reason in v.regressions:
                    rerun = reason is None and row["outcome"] in ("fail", "error")
                    if rerun and row["id"] in run.results:
                        suspects.setdefault(run.module, set()).add(row["id"])
            _rerun(by_loop[loop], suspects, opts, log_dir)

    print()
    for loop in opts.loops:
        print(_table(loop, by_loop[loop]))
        print()
    ok = True
    if reference is not None:
        bad = [r for run in reference for r in run.rows() if r["outcome"] in BAD]
        if bad:
            print(f"-- asyncio itself: {len(bad)} test(s) do not pass:")
            for row in bad:
                print(f"  {row['outcome'].upper():<5} {row['id']}: {row['detail']}")
            if not tested:
                ok = False  # Run alone, asyncio must pass its own suite.
    verdicts = {}
    for loop in tested:
        v = verdicts[loop] = judge(loop, by_loop[loop], reference, expected, full)
        _print_verdict(v, reference is not None, opts.expected_failures, opts.verbose)
        ok = ok and v.ok

    wall = time.monotonic() - started
    if opts.json:
        data = {
            "loops": opts.loops,
            "wall_secs": round(wall, 1),
            "runs": [run.__dict__ for run in done],
        }
        opts.json.write_text(json.dumps(data, indent=1), encoding="utf-8")
    problems = any(r["outcome"] in ("hang", "crash") for run in done for r in run.rows())
    if opts.keep_logs or problems:
        print(f"\nchildren's output kept in {log_dir}")
    else:
        shutil.rmtree(log_dir, ignore_errors=True)
    print(
        f"\nconformance: {'OK' if ok else 'FAILED'} in {wall:.0f}s "
        f"(Python {sys.version.split()[0]}; {_counts(by_loop, verdicts)})"
    )
    return 0 if ok else 1
