"""`python -m tests.conformance.anyio_suite`: anyio's own test suite on asyncio's loop
and on fastloop.

anyio's PyPI sdist carries its tests. The one of the anyio version installed here is
downloaded (once, into build/anyio-suite/) and its suite runs twice at the same time:
on asyncio's loop, and with ``-p fastloop.pytest_plugin``, which makes the loops of
anyio's asyncio backend fastloop loops (its ``anyio_backend`` fixture stays as anyio
wrote it). Nothing of anyio's is committed here.

Left out, for both loops: the ``asyncio+uvloop`` parameter (it runs uvloop, not the
loop under test) and the trio backend (not installed: anyio's conftest skips it).

The verdict is the CPython suite's: every test that passes on asyncio's loop must pass
on fastloop. Those that do not get one more run each, alone, on both loops (anyio's
network tests time out now and then on a loaded machine); what still passes on
asyncio and not on fastloop fails the run, unless listed in
``anyio_expected_failures.txt`` with a reason.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.metadata
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import time
import xml.etree.ElementTree as ET
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CACHE = ROOT / "build" / "anyio-suite"
EXPECTED = Path(__file__).with_name("anyio_expected_failures.txt")
LOOPS = ("asyncio", "fastloop")
DESELECT = "not uvloop"
RUN_LIMIT = 480  # seconds for one run of the suite (it takes about 100 on 2 cores)


def suite_dir() -> Path:
    """anyio's sdist for the installed version, unpacked (downloaded the first time)."""
    version = importlib.metadata.version("anyio")
    target = CACHE / f"anyio-{version}"
    if (target / "tests" / "conftest.py").exists():
        return target
    CACHE.mkdir(parents=True, exist_ok=True)
    sdist = CACHE / f"anyio-{version}.tar.gz"
    if not sdist.exists():
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--no-binary=:all:",
             f"anyio=={version}", "-d", str(CACHE)],
            check=True,
        )  # fmt: skip
    with tarfile.open(sdist) as tar:
        tar.extractall(CACHE, filter="data")
    return target


def pytest_command(loop: str, report: Path, ids: list[str] | None = None) -> list[str]:
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", f"--junitxml={report}"]
    if loop == "fastloop":
        cmd += ["-p", "fastloop.pytest_plugin"]
    return cmd + (ids if ids else ["tests", "-k", DESELECT])


def outcomes(report: Path) -> dict[str, str]:
    """{test id: pass|fail|error|skip} from pytest's JUnit XML report."""
    results = {}
    for case in ET.parse(report).getroot().iter("testcase"):
        module = case.get("classname", "").replace(".", "/")
        # classname is tests.test_x or tests.test_x.TestClass
        parts = module.split("/")
        path = "/".join(p for p in parts if not p[:1].isupper()) + ".py"
        cls = [p for p in parts if p[:1].isupper()]
        test_id = "::".join([path, *cls, case.get("name", "")])
        kinds = {child.tag for child in case}
        if "error" in kinds:
            outcome = "error"
        elif "failure" in kinds:
            outcome = "fail"
        elif "skipped" in kinds:
            outcome = "skip"
        else:
            outcome = "pass"
        # A test failing in its call and erroring in teardown counts as failed.
        if results.get(test_id) not in (None, "pass", "skip") and outcome == "pass":
            continue
        results[test_id] = outcome
    return results


def run_both(where: Path, out: Path, ids: list[str] | None = None) -> dict[str, dict[str, str]]:
    """The suite (or `ids`) on both loops at once; {loop: outcomes}.

    anyio's per-test timeout (pytest-timeout's signal method) cannot stop a test
    whose threads block in the kernel, so each run also has a limit of its own
    (RUN_LIMIT seconds), after which its process group is killed and the run fails.
    """
    procs = {}
    for loop in LOOPS:
        log = open(out / f"{loop}.log", "w")  # noqa: SIM115 - closed below
        report = out / f"{loop}.xml"
        proc = subprocess.Popen(
            pytest_command(loop, report, ids),
            cwd=where,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        procs[loop] = (proc, log, report)
    deadline = time.monotonic() + RUN_LIMIT
    results = {}
    for loop, (proc, log, report) in procs.items():
        try:
            proc.wait(timeout=max(1.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            for _, (other, _, _) in procs.items():
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(other.pid, signal.SIGKILL)
            raise SystemExit(
                f"anyio suite on {loop}: still running after {RUN_LIMIT}s, killed "
                f"(its output: {out / f'{loop}.log'})"
            ) from None
        log.close()
        if not report.exists():
            tail = (out / f"{loop}.log").read_text(errors="replace")[-3000:]
            raise SystemExit(f"anyio suite on {loop}: pytest wrote no report\n{tail}")
        results[loop] = outcomes(report)
    return results


def load_expected() -> dict[str, str]:
    expected = {}
    for line in EXPECTED.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            test_id, _, reason = line.partition(" ")
            expected[test_id] = reason.strip()
    return expected


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.conformance.anyio_suite")
    parser.add_argument("--keep", action="store_true", help="keep the logs and reports")
    opts = parser.parse_args(argv)
    started = time.monotonic()
    where = suite_dir()
    out = CACHE / "run"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    print(f"anyio suite: {where.name}'s tests on {' and '.join(LOOPS)} (-k '{DESELECT}')")
    results = run_both(where, out)

    def regressions(res):
        ref, got = res["asyncio"], res["fastloop"]
        return sorted(t for t, o in ref.items() if o == "pass" and got.get(t) != "pass")

    suspects = regressions(results)
    if suspects:
        rerun_dir = out / "rerun"
        rerun_dir.mkdir()
        again = run_both(where, rerun_dir, suspects)
        for loop in LOOPS:
            results[loop].update(again[loop])
    print()
    kinds = ("pass", "fail", "error", "skip")
    print(f"{'loop':<10}" + "".join(f"{k:>7}" for k in kinds))
    for loop in LOOPS:
        counts = [sum(v == k for v in results[loop].values()) for k in kinds]
        print(f"{loop:<10}" + "".join(f"{n:>7}" for n in counts))
    expected = load_expected()
    left = regressions(results)
    unlisted = [t for t in left if t not in expected]
    print(f"\n-- fastloop: tests that pass on asyncio but not on fastloop: {len(left)}")
    for test_id in left:
        why = expected.get(test_id)
        note = f"listed: {why}" if why else "NOT LISTED"
        print(f"  {results['fastloop'].get(test_id, 'missing').upper():<7} {test_id} ({note})")
    if suspects:
        print(f"  ({len(suspects)} such test(s) ran once more, alone on both loops)")
    ok = not unlisted
    if not opts.keep and ok:
        shutil.rmtree(out, ignore_errors=True)
    wall = time.monotonic() - started
    print(
        f"\nanyio suite: {'OK' if ok else 'FAILED'} in {wall:.0f}s "
        f"(asyncio {sum(v == 'pass' for v in results['asyncio'].values())} passed; "
        f"fastloop {sum(v == 'pass' for v in results['fastloop'].values())} passed, "
        f"{len(left) - len(unlisted)} listed)"
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
