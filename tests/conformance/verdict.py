"""Compare the loop under test with asyncio and hold it to expected_failures.txt
(the entries of its sections that apply to the running Python)."""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

from tests.conformance.loops import qualify
from tests.conformance.supervise import BAD, ModuleRun

EXPECTED_FAILURES = Path(__file__).with_name("expected_failures.txt")
_LINE = re.compile(r"^(\S+)\s+#\s*(\S.*)$")
# A section header: "[all]" or the Python versions it applies to, "[3.12 3.13]".
_SECTION = re.compile(r"^\[\s*(all|\d+\.\d+(?:\s+\d+\.\d+)*)\s*\]$")
# A private name: `loop._ready`, `_asyncio`, `_default_executor`...
_PRIVATE = re.compile(r"(?<![\w.])[\w.]*\b_[A-Za-z]\w*")


def current_version() -> str:
    """The running Python as "3.12": the sections of the list that apply to this run."""
    return f"{sys.version_info[0]}.{sys.version_info[1]}"


def load_expected(path: Path, version: str | None = None) -> dict[str, str]:
    """test id -> reason, for the tests listed for `version` (default: the running one).

    The file is in sections: entries under "[all]" apply to every Python
    version, entries under "[3.12 3.13]" to those versions only (CPython's
    suite differs between them). Raises ValueError on a malformed line.
    """
    version = version or current_version()
    expected: dict[str, str] = {}
    if not path.exists():
        return expected
    applies: bool | None = None  # None: before the first section header
    for n, raw in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        section = _SECTION.match(line)
        if section:
            versions = section[1].split()
            applies = versions == ["all"] or version in versions
            continue
        m = _LINE.match(line)
        if not m:
            raise ValueError(f"{path}:{n}: expected '<test id> # <reason>', got {line!r}")
        if applies is None:
            raise ValueError(
                f"{path}:{n}: an entry before the first section header ([all] or [3.12 ...])"
            )
        test_id, reason = m[1], m[2].strip()
        if not _PRIVATE.search(reason):
            raise ValueError(
                f"{path}:{n}: the reason must name the private asyncio internal the test "
                f"reads (e.g. `loop._ready`); got {reason!r}"
            )
        if not applies:
            continue
        if test_id in expected:
            raise ValueError(f"{path}:{n}: {test_id} is listed twice for Python {version}")
        expected[test_id] = reason
    return expected


@dataclass
class Verdict:
    loop: str
    regressions: list[tuple[dict, str | None]] = field(default_factory=list)  # (row, listed?)
    unexpected: list[dict] = field(default_factory=list)
    now_passing: list[str] = field(default_factory=list)
    unknown: list[str] = field(default_factory=list)
    fail_on_reference_too: list[str] = field(default_factory=list)
    skipped_here: list[dict] = field(default_factory=list)
    flaky: list[dict] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not (self.unexpected or self.now_passing or self.unknown)


def _by_id(runs: list[ModuleRun]) -> dict[str, dict]:
    return {row["id"]: row for run in runs for row in run.rows()}


def judge(
    loop: str,
    runs: list[ModuleRun],
    reference: list[ModuleRun] | None,
    expected: dict[str, str],
    full_modules: set[str],
) -> Verdict:
    """What the loop under test does differently from the reference, and whether it may.

    Without a reference every test is taken to pass on asyncio.
    `full_modules` were run without -k, so a listed id missing from them is stale.
    """
    verdict = Verdict(loop)
    ref = _by_id(reference) if reference is not None else None
    # Modules whose reference run got as far as running tests.
    ref_ran = {run.module for run in reference or () if run.results}
    rows = _by_id(runs)
    modules = {row["id"]: run.module for run in runs for row in run.rows()}
    for test_id, row in rows.items():
        ref_row = ref.get(test_id) if ref is not None else None
        if ref is None:
            ref_pass = True
        elif ref_row is None:
            # A fixture failure asyncio does not have: it passes there.
            ref_pass = modules[test_id] in ref_ran
        else:
            ref_pass = ref_row["outcome"] == "pass"
        reason = expected.get(test_id)
        if row.get("flaky"):
            verdict.flaky.append(row)
        if row["outcome"] in BAD:
            if ref_pass:
                verdict.regressions.append((row, reason))
                if reason is None:
                    verdict.unexpected.append(row)
            elif reason is not None:
                verdict.fail_on_reference_too.append(test_id)
        elif row["outcome"] == "pass" and reason is not None:
            verdict.now_passing.append(test_id)
        elif row["outcome"] == "skip" and ref_row is not None and ref_pass:
            verdict.skipped_here.append(row)
    prefixes = tuple(qualify(m) + "." for m in full_modules)
    for test_id in expected:
        if test_id.startswith(prefixes) and test_id not in rows:
            verdict.unknown.append(test_id)
    return verdict
