"""The parent side of the random driver: run both loops' children, compare.

``run_both`` generates the operations once, pickles them, and starts one
child per loop (``python -m tests.fuzz_driver --ops FILE``) in parallel. A
child that crashed or hung is restarted at the operation after the one it
died in, up to ``MAX_RESTARTS`` times, within a wall-clock budget.
``compare`` lines the two loops' records up; ``format_report`` groups the
differences (one bug is often hit by many operations) and gives each a
command that replays that operation alone.

``python -m tests.fuzz_compare --seed S --count N`` runs the comparison
without pytest, with the allowances of tests/test_api_fuzz.py.
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from .fuzz_ops import generate_list

ROOT = Path(__file__).resolve().parent.parent
LOOP_NAMES = ("asyncio", "fastloop")
# How often a crashed or hung child is restarted after the operation it died in.
MAX_RESTARTS = 40
# What of a record is compared (not "teardown": the driver's own clean-up
# calls, shown by --only).
COMPARED = ("setup", "setup_fx", "out", "value", "fx", "handler", "received", "peer_got", "left")


def child_command(loop_name, seed_value, count, start, ops_file, out, tmp):
    return [
        *(sys.executable, "-m", "tests.fuzz_driver", "--loop", loop_name),
        *("--seed", str(seed_value), "--count", str(count), "--start", str(start)),
        *("--ops", ops_file, "--out", out, "--tmp", tmp),
    ]


def repro_command(loop_name, seed_value, count, index):
    return (
        f"python -m tests.fuzz_driver --loop {loop_name} --seed {seed_value} "
        f"--count {count} --only {index}"
    )


def _interesting(lines):
    """The part of a dead child's stderr that says why it died."""
    for marker in ("ERROR: AddressSanitizer", "runtime error:", "Fatal Python error", "Timeout ("):
        for n, line in enumerate(lines):
            if marker in line:
                return lines[max(0, n - 3) : n + 12]
    return lines[-10:]


def _read_records(path, records):
    """Add the file's records to `records`; the last operation started, and done."""
    last_start, done = None, False
    with open(path) as f:
        for line in f:
            try:
                item = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line cut by a crash
            if "start" in item:
                last_start = item["start"]
            elif "done" in item:
                done = True
            elif "op" in item:
                records[item["op"]] = item
    return last_start, done


def _run_loop(loop_name, seed_value, count, ops_file, workdir, deadline):
    """Run one loop's child (restarting it after a crash); a generator.

    It yields each Popen it starts (so the caller can start the other loop's
    child before waiting), then (records, deaths).
    """
    out = os.path.join(workdir, f"{loop_name}.jsonl")
    err_path = os.path.join(workdir, f"{loop_name}.stderr")
    tmp = os.path.join(workdir, loop_name)
    os.mkdir(tmp)
    records: dict[int, dict] = {}
    deaths = []
    start = 0
    while True:
        with open(err_path, "w") as err:
            proc = subprocess.Popen(
                child_command(loop_name, seed_value, count, start, ops_file, out, tmp),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=err,
                cwd=ROOT,
            )
            yield proc
            timed_out = False
            try:
                proc.wait(timeout=max(1.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()  # our own child
                proc.wait()
                timed_out = True
        last_start, done = _read_records(out, records)
        tail = _interesting(Path(err_path).read_text(errors="replace").splitlines())
        if done and proc.returncode == 0:
            break
        if last_start is None or last_start in records:
            # It died outside an operation (at start-up or after the last one).
            deaths.append((None, f"child exit status {proc.returncode}", tail))
            break
        rc = proc.returncode
        if timed_out:
            kind = "hang (killed: the time budget ran out)"
        elif any("Timeout (" in line for line in tail):
            kind = "hang (the watchdog ended it)"
        elif rc < 0:
            kind = f"crash: {signal.Signals(-rc).name}"
        else:
            kind = f"crash: exit status {rc}"
        records[last_start] = {"op": last_start, "out": kind}
        deaths.append((last_start, kind, tail))
        start = last_start + 1
        if timed_out or len(deaths) > MAX_RESTARTS or start >= count:
            break
    yield records, deaths


def run_both(seed_value, count, workdir, budget):
    """Run the same operations on both loops in parallel: {loop: (records, deaths)}."""
    ops_file = os.path.join(workdir, "ops.pickle")
    with open(ops_file, "wb") as f:
        pickle.dump(generate_list(seed_value, count), f)
    deadline = time.monotonic() + budget
    runs = {
        name: _run_loop(name, seed_value, count, ops_file, workdir, deadline) for name in LOOP_NAMES
    }
    results = {}
    for name in LOOP_NAMES:
        next(runs[name])  # both children start before either is waited on
    for name in LOOP_NAMES:
        item = next(runs[name])
        while isinstance(item, subprocess.Popen):
            item = next(runs[name])
        results[name] = item
    return results


class Allowed:
    """A difference that is not a bug: where it applies, and why.

    ``method``: the method (``"*"``: any); ``arg`` and ``kinds``: the argument
    and the kinds of it covered (None: any); ``asyncio`` and ``fastloop``: the
    outcomes on each loop (prefixes of ``out``, one or a tuple); ``state``,
    ``target``: the target's state(s) and kind (a prefix), None: any;
    ``effects``: record fields the allowed outcome also changes, besides what
    always follows from it (e.g. ``peer_got`` when fastloop raises instead of
    sending); ``desc_has``: strings one of which the operation's description
    must contain (e.g. the kind of an item inside a list argument), None: any.
    """

    def __init__(
        self,
        method,
        arg,
        kinds,
        asyncio,
        fastloop,
        why,
        state=None,
        target=None,
        effects=(),
        desc_has=None,
    ):
        self.method, self.arg, self.kinds = method, arg, kinds
        self.desc_has = desc_has
        self.effects = tuple(effects)
        self.asyncio = (asyncio,) if isinstance(asyncio, str) else tuple(asyncio)
        self.fastloop = (fastloop,) if isinstance(fastloop, str) else tuple(fastloop)
        self.why, self.target = why, target
        self.state = (state,) if isinstance(state, str) else state

    def matches(self, a: dict, f: dict) -> bool:
        kind, state, method = parse_desc(a["desc"])
        if self.method not in ("*", method):
            return False
        if self.state is not None and state not in self.state:
            return False
        if self.target is not None and not kind.startswith(self.target):
            return False
        if self.arg is not None and a["kinds"].get(self.arg) not in self.kinds:
            return False
        if self.desc_has is not None and not any(d in a["desc"] for d in self.desc_has):
            return False
        a_out, f_out = str(a.get("out")), str(f.get("out"))
        return a_out.startswith(self.asyncio) and f_out.startswith(self.fastloop)


def parse_desc(desc):
    """(target kind, state, method) of an operation's description."""
    kind, rest = desc.split("[", 1)
    state, rest = rest.split("]", 1)
    return kind, state.split(",")[0], rest[1:].split("(", 1)[0]


def compare(results, allowances):
    """Line the loops' records up: (differences, allowed, number compared).

    A difference is (index, asyncio's record, fastloop's record). A crash or
    hang of either child is one. An allowance excuses a difference in
    ``out`` and in what follows from it (``value``, ``fx``, ``handler``).
    """
    a_recs, _ = results["asyncio"]
    f_recs, _ = results["fastloop"]
    diffs, allowed, compared = [], [], 0
    for i in sorted(set(a_recs) & set(f_recs)):
        a, f = a_recs[i], f_recs[i]
        compared += 1
        if all(a.get(k) == f.get(k) for k in COMPARED):
            continue
        if "desc" not in a:  # asyncio's child died in it: a bug of the driver
            diffs.append((i, {**a, "desc": f.get("desc", "?")}, f))
            continue
        rule = next(
            (r for r in allowances if r.matches(a, f) and _same_rest(a, f, r.effects)), None
        )
        if rule is not None:
            allowed.append((i, rule))
        else:
            diffs.append((i, a, f))
    return diffs, allowed, compared


def _same_rest(a, f, effects):
    """Equal records but for the outcome, what follows from it, and `effects`."""
    skip = ("out", "value", "fx", "handler", *effects)
    return all(a.get(k) == f.get(k) for k in COMPARED if k not in skip)


def exit_failures(results):
    """Children that died outside any operation: at start-up, or at exit after
    the last one (a crash in a finalizer, a sanitizer's leak report)."""
    return [
        f"{name} child: {kind}"
        for name, (_, deaths) in results.items()
        for index, kind, _ in deaths
        if index is None
    ]


def _fields(rec):
    return {k: rec[k] for k in COMPARED if rec.get(k) not in (None, [], "")}


def format_report(seed_value, count, results, diffs, allowed, compared, limit=30):
    lines = [
        f"fuzz seed={seed_value} count={count}: {compared} operations compared, "
        f"{len(diffs)} differ, {len(allowed)} differences allowed"
    ]
    for name, (_, deaths) in results.items():
        for n, (index, kind, tail) in enumerate(deaths):
            where = f"in op {index}" if index is not None else "outside any op"
            lines.append(f"  {name} child: {kind} {where}")
            if n < 3:  # the first ones with what the child said
                lines += [f"      | {t}" for t in tail]
    # Group: one bug is often hit by many operations.
    groups: dict = {}
    for i, a, f in diffs:
        kind, _, method = parse_desc(a["desc"])
        if a.get("setup") != f.get("setup"):
            key = (kind, "setup", str(a.get("setup")), str(f.get("setup")))
        else:
            key = (method, str(a.get("out")), str(f.get("out")))
        groups.setdefault(key, []).append((i, a, f))
    if groups:
        lines.append(f"  {len(groups)} groups of differences (the first operation of each):")
    for members in list(groups.values())[:limit]:
        i, a, f = members[0]
        lines.append(f"  [op {i}] x{len(members)} {a['desc']}")
        lines.append(f"      asyncio:  {_fields(a)}")
        lines.append(f"      fastloop: {_fields(f)}")
        lines.append(f"      repro: {repro_command('fastloop', seed_value, count, i)}")
    if len(groups) > limit:
        lines.append(f"  ... and {len(groups) - limit} more groups")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="Run the driver on both loops and compare.")
    parser.add_argument("--seed", type=int, required=True)
    parser.add_argument("--count", type=int, default=2000)
    parser.add_argument("--budget", type=float, default=120.0)
    ns = parser.parse_args(argv)
    from .test_api_fuzz import ALLOWED  # the table lives with the test

    with tempfile.TemporaryDirectory(prefix="fastloop-fuzz-") as workdir:
        results = run_both(ns.seed, ns.count, workdir, ns.budget)
    diffs, allowed, compared = compare(results, ALLOWED)
    print(format_report(ns.seed, ns.count, results, diffs, allowed, compared, limit=200))
    return 1 if diffs or exit_failures(results) else 0


if __name__ == "__main__":
    sys.exit(main())
