"""Run clang-tidy over fastloop's C++ sources and fail on any diagnostic.

Usage: python tools/clang_tidy.py BUILD_DIR [-j N] [FILE ...]

BUILD_DIR holds the compile_commands.json that CMake wrote (`make lint`
configures build/lint for it). Every translation unit under cpp/ is checked
with the repository's .clang-tidy, N at a time; a header's diagnostics are
printed once however many units include it, then counted by check. The exit
status is 1 if clang-tidy reported anything (or failed), else 0.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import re
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# "path:line:col: warning: message [check-name]" (an error when WarningsAsErrors
# matched: "[check-name,-warnings-as-errors]"). Notes belong to the diagnostic above.
DIAG = re.compile(
    r"^(?:(?P<where>\S.*?:\d+:\d+): )?(?P<sev>warning|error): (?P<msg>.*?)"
    r"(?: \[(?P<check>[^\]]+)\])?$"
)
NOISE = re.compile(
    r"^\d+ (warnings?|errors?)( and \d+ errors?)? generated\.$"
    r"|^\d+ warnings? treated as errors?$|^Suppressed \d+ warnings|^Error while processing "
)


def find_clang_tidy() -> str:
    for name in ("clang-tidy", "clang-tidy-14", "clang-tidy-15", "clang-tidy-16"):
        if shutil.which(name):
            return name
    sys.exit("clang-tidy not found: `apt-get install clang-tidy` (make sysdeps does it)")


def units(build_dir: Path, only: list[str]) -> list[str]:
    db = json.loads((build_dir / "compile_commands.json").read_text())
    cpp = str(ROOT / "cpp") + os.sep
    files = sorted({e["file"] for e in db if e["file"].startswith(cpp)})
    if only:
        wanted = {str(Path(f).resolve()) for f in only}
        files = [f for f in files if f in wanted]
    return files


def run_one(tidy: str, build_dir: Path, path: str) -> tuple[str, int, str, float]:
    start = time.monotonic()
    proc = subprocess.run(
        [tidy, "-p", str(build_dir), "--quiet", path],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    return path, proc.returncode, proc.stdout + proc.stderr, time.monotonic() - start


def split_diagnostics(output: str) -> list[tuple[str, str, str]]:
    """(key line, check, whole block) for each diagnostic in one run's output."""
    blocks: list[list[str]] = []
    checks: list[str] = []
    for line in output.splitlines():
        if NOISE.match(line):
            continue
        m = DIAG.match(line)
        if m:
            blocks.append([line])
            check = (m["check"] or "clang-diagnostic").split(",")[0]
            checks.append(check)
        elif blocks:
            blocks[-1].append(line)
        elif line.strip():
            blocks.append([line])  # an error clang-tidy printed without a location
            checks.append("clang-tidy-failure")
    return [(b[0], c, "\n".join(b)) for b, c in zip(blocks, checks, strict=True)]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("build_dir", type=Path)
    ap.add_argument("-j", "--jobs", type=int, default=os.cpu_count() or 1)
    ap.add_argument("files", nargs="*", help="only these translation units")
    args = ap.parse_args()
    tidy = find_clang_tidy()
    files = units(args.build_dir, args.files)
    if not files:
        print(f"clang-tidy: no translation unit under cpp/ in {args.build_dir}", file=sys.stderr)
        return 1
    start = time.monotonic()
    seen: set[str] = set()
    by_check: collections.Counter[str] = collections.Counter()
    failed = []
    with ThreadPoolExecutor(max(1, args.jobs)) as pool:
        for path, rc, output, _secs in pool.map(lambda f: run_one(tidy, args.build_dir, f), files):
            diags = split_diagnostics(output)
            if rc != 0 and not diags:
                diags = [("", "clang-tidy-failure", f"{path}: clang-tidy exited with {rc}")]
            if rc != 0:
                failed.append(path)
            for key, check, block in diags:
                if key in seen:
                    continue  # the same header diagnostic, seen from another unit
                seen.add(key)
                by_check[check] += 1
                print(block)
    secs = time.monotonic() - start
    total = sum(by_check.values())
    if total or failed:
        print(f"\nclang-tidy: {total} diagnostic(s) in {len(files)} units ({secs:.0f} s):")
        for check, n in by_check.most_common():
            print(f"  {n:5d}  {check}")
        return 1
    print(f"clang-tidy: {len(files)} units clean ({secs:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
