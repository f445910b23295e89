"""Judge the AddressSanitizer/LeakSanitizer reports of a `make sanitize` run.

Usage: python tools/lsan_check.py LOG_DIR [--pytest-rc N] [--suppressions FILE]

Exits with 1 on a failing report, else with pytest's own status.

`make sanitize` runs pytest with ASAN_OPTIONS=log_path=LOG_DIR/log:log_exe_name=1,
so every process of the run (pytest itself and every child a test starts, which
inherit the environment) writes its reports to LOG_DIR/log.<exe>.<pid>, and
with exitcode=23, so a leak at exit is told apart from pytest's own statuses.

A leak fails the run when it is in a Python process and
  - a frame of its allocation stack is fastloop's (the _core extension, its
    sources under cpp/, or libuv linked into it), or
  - no frame is, and no rule of the suppressions file matches it: CPython
    leaks nothing at exit here, and the fast unwinder often stops inside
    CPython (it is built without frame pointers), so an unattributed leak may
    well be ours; once shown to be CPython's own, it gets a rule with a reason.
Suppression rules apply only to leaks with no fastloop frame (LSan's own
suppressions match any frame, so one for libpython would hide ours too).
Reports of programs that are not Python (ss, sh, ... that tests run) are not
ours and are only counted. Any other AddressSanitizer report of a Python
process (use-after-free, SEGV, ...) fails the run.

With files LOG_DIR/after.NNN.<test file>... (written by tools/lsan_by_module.py,
`make sanitize LSAN_BY_MODULE=1`), each leak of pytest's own process is
attributed to the first test file after which it was seen.
"""

from __future__ import annotations

import argparse
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PYTEST_LEAK_RC = 23  # ASAN_OPTIONS exitcode in the Makefile
FRAME = re.compile(r"^\s+#(\d+) 0x[0-9a-f]+ (?:in (?P<func>.+?) )?(?P<where>\S+)$")
ADDR_IN_MODULE = re.compile(r"\+0x[0-9a-f]+")
OURS = re.compile(
    r"/_core[^/]*\.so\b"  # the extension module
    r"|" + re.escape(str(ROOT / "cpp")) + r"/"  # its sources (inlined frames)
    r"|/cpp/(bindings/)?[a-z_]+\.(cpp|hpp):\d+"  # the same, built from another checkout
    r"|\bfastloop::"
    r"|\blibuv[^/]*\.so|(^|\s)uv__?[a-z_]+\b|/libuv/|/src/unix/"  # libuv
)


@dataclass
class Block:
    kind: str  # "Direct leak", "Indirect leak" or an ASan error line
    head: str
    frames: list[str] = field(default_factory=list)

    def text(self, max_frames: int = 40) -> str:
        lines = [self.head] + self.frames[:max_frames]
        if len(self.frames) > max_frames:
            lines.append(f"    ... {len(self.frames) - max_frames} more frames")
        return "\n".join(lines)

    def signature(self) -> tuple[str, ...]:
        """The stack without addresses: the same leak in two reports."""
        out = []
        for line in self.frames:
            m = FRAME.match(line)
            if m:
                where = ADDR_IN_MODULE.sub("", m["where"])
                out.append(f"{m['func']} {where}")
        return tuple(out)

    def is_ours(self) -> bool:
        return any(OURS.search(line) for line in self.frames)


@dataclass
class Report:
    path: Path
    exe: str
    pid: str
    leaks: list[Block] = field(default_factory=list)
    errors: list[Block] = field(default_factory=list)  # non-leak ASan reports

    @property
    def is_python(self) -> bool:
        return self.exe.startswith("python")


def parse(path: Path) -> Report:
    parts = path.name.split(".")
    # log.<exe>.<pid> or after.NNN.<file>.<exe>.<pid>: exe may itself have dots
    exe = ".".join(parts[(3 if parts[0] == "after" else 1) : -1]) or "?"
    report = Report(path, exe, parts[-1])
    current: Block | None = None
    error_block: Block | None = None
    for line in path.read_text(errors="replace").splitlines():
        if re.match(r"^(Direct|Indirect) leak of ", line):
            current = Block(line.split(" of ")[0], line)
            report.leaks.append(current)
        elif m := re.match(r"^==[^=]*==\d+==ERROR: AddressSanitizer: (.*)", line):
            current = error_block = Block("error", m[0])
            report.errors.append(error_block)
        elif "LeakSanitizer has encountered a fatal error" in line:
            # LSan's own tracer crashed: this process had no leak check at all.
            current = None
            report.errors.append(Block("error", f"{line} (no leak check ran in this process)"))
        elif FRAME.match(line) and current is not None:
            current.frames.append(line)
        elif line.startswith("SUMMARY:") or not line.strip():
            current = None
    return report


@dataclass
class Rule:
    pattern: re.Pattern[str]
    reason: str
    hits: int = 0


def load_rules(path: Path | None) -> list[Rule]:
    rules: list[Rule] = []
    if path is None or not path.exists():
        return rules
    for n, raw in enumerate(path.read_text().splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        m = re.match(r"^leak:(\S+)\s+#\s*(\S.*)$", line)
        if not m:
            sys.exit(f"{path}:{n}: a rule is `leak:<regex>  # reason`: {raw!r}")
        rules.append(Rule(re.compile(m[1]), m[2]))
    return rules


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("log_dir", type=Path)
    ap.add_argument("--pytest-rc", type=int, default=0)
    ap.add_argument("--suppressions", type=Path, default=None)
    args = ap.parse_args()
    rules = load_rules(args.suppressions)

    finals = [parse(p) for p in sorted(args.log_dir.glob("log.*"))]
    checkpoints = [parse(p) for p in sorted(args.log_dir.glob("after.*"))]

    def first_seen(block: Block, pid: str) -> str | None:
        sig = block.signature()
        for cp in checkpoints:
            if cp.pid == pid and any(b.signature() == sig for b in cp.leaks):
                return cp.path.name.split(".")[2]
        return None

    failures: list[str] = []
    foreign: dict[str, int] = {}
    counts = {"fastloop": 0, "unattributed": 0, "suppressed": 0}
    for rep in finals:
        if not rep.is_python:
            foreign[rep.exe] = foreign.get(rep.exe, 0) + len(rep.leaks) + len(rep.errors)
            continue
        for err in rep.errors:
            failures.append(f"[{rep.path.name}] AddressSanitizer error:\n{err.text()}")
        for leak in rep.leaks:
            where = first_seen(leak, rep.pid)
            origin = f" (first seen after {where})" if where else ""
            if leak.is_ours():
                counts["fastloop"] += 1
                failures.append(
                    f"[{rep.path.name}] {leak.kind} in fastloop{origin}:\n{leak.text()}"
                )
                continue
            rule = next((r for r in rules if any(r.pattern.search(f) for f in leak.frames)), None)
            if rule is not None:
                rule.hits += 1
                counts["suppressed"] += 1
                continue
            counts["unattributed"] += 1
            failures.append(
                f"[{rep.path.name}] {leak.kind} with no fastloop frame (the stack may stop "
                f"inside CPython before reaching ours){origin}:\n{leak.text()}"
            )

    for text in failures:
        print(text, end="\n\n")
    n_leak_reports = sum(1 for r in finals if r.is_python and r.leaks)
    print(
        f"lsan: {counts['fastloop']} leak(s) with a fastloop frame, "
        f"{counts['unattributed']} unattributed, {counts['suppressed']} suppressed "
        f"in {n_leak_reports} Python process report(s) of {args.log_dir}"
    )
    for rule in rules:
        if rule.hits:
            print(f"lsan: suppressed {rule.hits} by {rule.pattern.pattern} ({rule.reason})")
    if foreign:
        names = ", ".join(f"{exe} ({n})" for exe, n in sorted(foreign.items()))
        print(f"lsan: not ours, ignored: reports of non-Python programs the tests ran: {names}")
    if failures:
        print(
            "lsan: FAILED. To see which test file leaks: make sanitize LSAN_BY_MODULE=1; for "
            "complete stacks through CPython add fast_unwind_on_malloc=0 to ASAN_OPTIONS "
            "(slow: run one test file). A leak shown to be CPython's own gets a rule with a "
            f"reason in {args.suppressions or 'the suppressions file'}."
        )
        return 1
    # A leak at exit replaced pytest's status with PYTEST_LEAK_RC; the plugin
    # (tools/lsan_plugin.py) wrote down the real one.
    status_file = args.log_dir / "pytest.exitstatus"
    status = int(status_file.read_text()) if status_file.exists() else None
    if args.pytest_rc == PYTEST_LEAK_RC:
        if not any(r.leaks for r in finals if r.is_python):
            print("lsan: pytest exited with the sanitizer's status but no report explains it")
            return 1
        if status is None:
            print("lsan: pytest ended before its session finished")
            return 1
        return status
    return args.pytest_rc


if __name__ == "__main__":
    sys.exit(main())
