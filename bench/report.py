"""Turns a Run into the printed table, bench.json, bench.md and bench.png."""

from __future__ import annotations

import json
from pathlib import Path

from bench import loops
from bench.registry import BENCHMARKS, GLOBAL_TARGETS, Benchmark, Target
from bench.runner import STATISTIC, Run

SUBJECT = loops.SUBJECT
BASELINES = loops.BASELINES


def rate(x: float | None) -> str:
    if x is None:
        return "n/a"
    for scale, suffix in ((1e6, "M"), (1e3, "k")):
        if x >= scale:
            return f"{x / scale:.2f}{suffix}"
    return f"{x:.0f}"


def times(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.2f}x"


def check(run: Run, bench: Benchmark, target: Target) -> bool | None:
    """Whether fastloop meets `target` on `bench`; None if it cannot be told."""
    r = run.ratio(bench.name, SUBJECT, target.baseline)
    return None if r is None else r >= target.factor


def verdict(run: Run, bench: Benchmark) -> str:
    results = [(t, check(run, bench, t)) for t in bench.all_targets()]
    failed = [t.label for t, ok in results if ok is False]
    unknown = [t.label for t, ok in results if ok is None]
    if failed:
        return "FAIL " + ", ".join(failed)
    if len(unknown) == len(results):
        return "n/a"
    if unknown:
        return "pass; n/a " + ", ".join(unknown)
    return "pass"


def targets_text() -> str:
    lines = [f"fastloop {t.label} on every row" for t in GLOBAL_TARGETS]
    extra: dict[str, list[str]] = {}
    for b in BENCHMARKS:
        for t in b.targets:
            extra.setdefault(t.label, []).append(b.name)
    lines += [f"fastloop {label} on {', '.join(names)}" for label, names in extra.items()]
    return "; ".join(lines)


def header_lines(run: Run) -> list[str]:
    m = run.meta
    lines = [
        f"fastloop benchmarks  {m['date']}  (git {m['git_commit'] or 'no commit'})",
        f"Python {m['python_build'].splitlines()[0]}",
        f"{m['platform']}; {m['cpu_count']} CPUs ({m['cpu_affinity']} usable): {m['cpu_model']}",
        "loops:",
    ]
    for info in run.loops:
        if info.available:
            lines.append(f"  {info.name:<9} {info.version}  ({info.loop_class})")
        else:
            lines.append(f"  {info.name:<9} n/a: {info.reason}")
    lines.append(
        f"method: {m['repeat']} repeat(s), a fresh process per sample, loops interleaved; "
        f"cell = {STATISTIC} ops/s of the repeats" + ("; QUICK (small sizes)" if m["quick"] else "")
    )
    return lines


def _rows(run: Run) -> tuple[list[str], list[list[str]]]:
    names = [i.name for i in run.loops]
    head = ["benchmark", *(f"{n} ops/s" for n in names)]
    head += [f"{SUBJECT}/{b}" for b in BASELINES] + ["targets"]
    rows = []
    for b in run.benchmarks:
        row = [b.name, *(rate(run.value(b.name, n)) for n in names)]
        row += [times(run.ratio(b.name, SUBJECT, base)) for base in BASELINES]
        row.append(verdict(run, b))
        rows.append(row)
    return head, rows


def _problems(run: Run) -> list[str]:
    out = []
    for b in run.benchmarks:
        for info in run.loops:
            cell = run.cell(b.name, info.name)
            if info.available and cell.problem:
                kind = "failed" if cell.error else "skipped"
                out.append(f"{b.name} on {info.name} {kind}: {cell.problem}")
    return out


def text(run: Run) -> str:
    head, rows = _rows(run)
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]

    def line(cells: list[str]) -> str:
        first = cells[0].ljust(widths[0])
        middle = [c.rjust(w) for c, w in zip(cells[1:-1], widths[1:-1], strict=True)]
        return "  ".join([first, *middle, cells[-1]])

    out = header_lines(run) + ["", line(head), "  ".join("-" * w for w in widths)]
    out += [line(r) for r in rows]
    out += ["", f"targets (read by people, not asserted): {targets_text()}"]
    out += [f"note: {p}" for p in _problems(run)]
    return "\n".join(out)


def markdown(run: Run) -> str:
    head, rows = _rows(run)
    names = [i.name for i in run.loops]

    def table(h: list[str], rs: list[list[str]]) -> list[str]:
        out = ["| " + " | ".join(h) + " |", "|" + "|".join("---" for _ in h) + "|"]
        return out + ["| " + " | ".join(r) + " |" for r in rs]

    out = ["# fastloop benchmarks", "", "```", *header_lines(run), "```", ""]
    out += table(head, rows)
    out += ["", f"Targets (read by people, not asserted): {targets_text()}.", ""]
    out += ["## Median ops/s of the repeats (spread: (max - min) / median)", ""]
    spread_rows = []
    for b in run.benchmarks:
        row = [b.name]
        for n in names:
            c = run.cell(b.name, n)
            s = "" if c.spread is None else f" ({c.spread * 100:.0f}%)"
            row.append(rate(c.median) + s)
        spread_rows.append(row)
    out += table(["benchmark", *names], spread_rows)
    out += ["", "## What each row measures", ""]
    out += [f"- **{b.name}** ({b.n:,} {b.unit}s): {b.doc}" for b in run.benchmarks]
    problems = _problems(run)
    if problems:
        out += ["", "## Notes", ""] + [f"- {p}" for p in problems]
    return "\n".join(out) + "\n"


def as_json(run: Run) -> dict:
    benches = []
    for b in run.benchmarks:
        per_loop = {}
        for info in run.loops:
            c = run.cell(b.name, info.name)
            per_loop[info.name] = {
                "best": c.best,
                "median": c.median,
                "spread": c.spread,
                "samples": c.rates,
                "error": c.error,
                "skip": c.skip,
            }
        benches.append(
            {
                "name": b.name,
                "group": b.group,
                "n": b.size(run.meta["quick"]),
                "unit": b.unit,
                "doc": b.doc,
                "ops_per_s": per_loop,
                "ratios": {
                    f"{SUBJECT}/{base}": run.ratio(b.name, SUBJECT, base) for base in BASELINES
                },
                "targets": {t.label: check(run, b, t) for t in b.all_targets()},
            }
        )
    return {
        "meta": run.meta,
        "loops": [vars(i) for i in run.loops],
        "benchmarks": benches,
    }


def plot(run: Run, path: Path) -> Path:
    """Grouped bars: each loop's ops/s as a multiple of asyncio's, per benchmark."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FixedLocator, FuncFormatter, NullLocator

    if "asyncio" not in [i.name for i in run.loops]:
        raise RuntimeError("asyncio is not among the loops run, so there is nothing to divide by")
    others = [i.name for i in run.loops if i.name != "asyncio" and i.available]
    benches = run.benchmarks
    fig, ax = plt.subplots(figsize=(max(8.0, 1.3 * len(benches) + 3), 5.0))
    width = 0.8 / max(1, len(others))
    colors = {"uvloop": "#4c72b0", "rloop": "#dd8452", "zuvloop": "#8172b3", SUBJECT: "#55a868"}
    ratios_seen = [1.0]
    for k, name in enumerate(others):
        for x, b in enumerate(benches):
            r = run.ratio(b.name, name, "asyncio")
            pos = x - 0.4 + width * (k + 0.5)
            if r is None:
                ax.text(pos, 1.0, "n/a", ha="center", va="bottom", fontsize=7, rotation=90)
                continue
            ratios_seen.append(r)
            ax.bar(pos, r, width, color=colors.get(name, f"C{k}"), label=name if x == 0 else None)
            ax.text(pos, r, f"{r:.2g}", ha="center", va="bottom", fontsize=7)
        if not any(run.ratio(b.name, name, "asyncio") for b in benches):
            ax.bar([], [], color=colors.get(name, f"C{k}"), label=f"{name} (n/a)")
    for x, b in enumerate(benches):
        for t in b.targets:
            if t.baseline == "asyncio":
                ax.hlines(t.factor, x - 0.45, x + 0.45, colors="red", linestyles="dashed")
                ratios_seen.append(t.factor)
    for info in run.loops:
        if not info.available:
            ax.plot([], [], " ", label=f"{info.name}: n/a")
    ax.axhline(1.0, color="black", linewidth=0.8)
    ax.set_yscale("log")
    top, bottom = max(ratios_seen) * 1.6, min(ratios_seen) / 1.4
    ax.set_ylim(bottom, top)
    ticks = [t for t in (0.25, 0.5, 1, 2, 4, 8, 16, 32, 64) if bottom <= t <= top]
    ax.yaxis.set_major_locator(FixedLocator(ticks))
    ax.yaxis.set_minor_locator(NullLocator())
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}x"))
    ax.set_xticks(range(len(benches)), [b.name for b in benches], rotation=30, ha="right")
    ax.set_ylabel("ops/s relative to asyncio (log scale)")
    m = run.meta
    ax.set_title(
        f"Speed vs asyncio ({STATISTIC} of {m['repeat']}; red dashes: 2x target)\n"
        f"Python {m['python']}, {m['cpu_count']} CPUs, {m['date']}",
        fontsize=10,
    )
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write(run: Run, out_dir: Path) -> dict[str, Path]:
    """Write bench.json and bench.md; returns their paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {"json": out_dir / "bench.json", "md": out_dir / "bench.md"}
    paths["json"].write_text(json.dumps(as_json(run), indent=2) + "\n")
    paths["md"].write_text(markdown(run))
    return paths
