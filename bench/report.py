"""Turns a Run into the printed table, bench.json, bench.md and bench.png."""

from __future__ import annotations

import json
from pathlib import Path

from bench import loops
from bench.registry import ACCEPTANCES, GLOBAL_TARGETS, GROUP_TITLES, Acceptance, Benchmark, Target
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
    """Whether the target's subject meets `target` on `bench`; None if it cannot be told."""
    r = run.ratio(bench.name, target.subject, target.baseline)
    return None if r is None else r >= target.factor


def verdict(run: Run, bench: Benchmark, counts=None) -> str:
    """pass, FAIL and the missed targets, or n/a; over the targets `counts` keeps (all)."""
    results = [(t, check(run, bench, t)) for t in bench.all_targets() if not counts or counts(t)]
    if not results:
        return "-"
    failed = [t.label for t, ok in results if ok is False]
    unknown = [t.label for t, ok in results if ok is None]
    if failed:
        return "FAIL " + ", ".join(failed)
    if len(unknown) == len(results):
        return "n/a"
    if unknown:
        return "pass; n/a " + ", ".join(unknown)
    return "pass"


def targets_text(run: Run) -> str:
    exempt = [b.name for b in run.benchmarks if not b.global_targets and not b.runs_on]
    but = f" but {', '.join(exempt)}" if exempt else ""
    lines = [f"{t.sentence} on every row{but}" for t in GLOBAL_TARGETS]
    extra: dict[str, list[Benchmark]] = {}
    for b in run.benchmarks:
        for t in b.targets:
            extra.setdefault(t.sentence, []).append(b)
    for label, benches in extra.items():
        where = []
        for group in dict.fromkeys(b.group for b in benches):
            rows = [b for b in run.benchmarks if b.group == group and b.all_targets()]
            if all(b in benches for b in rows) and len(rows) > 1:
                where.append(f"every {group} row")
            else:
                where += [b.name for b in benches if b.group == group]
        lines.append(f"{label} on {', '.join(where)}")
    return "; ".join(lines)


def acceptance(run: Run, criterion: Acceptance) -> str | None:
    """The one-line summary of `criterion` over the rows it covers (None if none ran)."""
    title, covers, counts = criterion
    rows = [b for b in run.benchmarks if covers(b)]
    if not rows:
        return None
    verdicts = [verdict(run, b, counts) for b in rows]
    passed = sum(v == "pass" for v in verdicts)
    failed = [b.name for b, v in zip(rows, verdicts, strict=True) if v.startswith("FAIL")]
    unknown = len(rows) - passed - len(failed)
    text = f"{title}: {passed}/{len(rows)} pass"
    if failed:
        text += f", FAIL on {', '.join(failed)}"
    if unknown:
        text += f", {unknown} n/a"
    return text


def _repeat_text(run: Run) -> str:
    m = run.meta
    if m.get("repeat") is not None:
        return f"{m['repeat']} repeat(s)"
    per_group: dict[str, set[int]] = {}
    for b in run.benchmarks:
        per_group.setdefault(b.group, set()).add(m["repeats"][b.name])
    parts = [f"{'/'.join(map(str, sorted(r)))} ({g})" for g, r in per_group.items()]
    return "repeats: " + ", ".join(parts)


def header_lines(run: Run) -> list[str]:
    m = run.meta
    lines = [
        f"fastloop benchmarks  {m['date']}  (git {m['git_commit'] or 'no commit'})",
        f"Python {m['python_build'].splitlines()[0]}",
        f"{m['platform']}; {m['cpu_count']} CPUs ({m['cpu_affinity']} usable): {m['cpu_model']}",
        "loops:",
    ]
    w = max([9, *(len(i.name) for i in run.loops)])
    for info in run.loops:
        if info.available:
            lines.append(f"  {info.name:<{w}} {info.version}  ({info.loop_class})")
        else:
            lines.append(f"  {info.name:<{w}} n/a: {info.reason}")
    lines.append(
        f"method: {_repeat_text(run)}, a fresh process per sample, loops interleaved; "
        f"cell = {STATISTIC} ops/s of the repeats" + ("; QUICK (small sizes)" if m["quick"] else "")
    )
    return lines


def _groups(run: Run) -> list[tuple[str, list[Benchmark]]]:
    groups: dict[str, list[Benchmark]] = {}
    for b in run.benchmarks:
        groups.setdefault(b.group, []).append(b)
    return list(groups.items())


def _columns(run: Run, benches: list[Benchmark]) -> list[str]:
    """The loops of a table: the run's loops (a variant only if one of the rows ran
    on it), then any pseudo-loop its rows run on."""
    names = [
        i.name
        for i in run.loops
        if not i.extra or any(run.cell(b.name, i.name) is not None for b in benches)
    ]
    for b in benches:
        names += [n for n in b.runs_on or () if n not in names]
    return names


def _variants(names: list[str]) -> list[tuple[str, str]]:
    """(variant, the loop it varies) for the variant loops among `names` whose loop is too."""
    out = []
    for n in names:
        spec = loops.LOOPS.get(n)
        if spec is not None and spec.variant_of in names:
            out.append((n, spec.variant_of))
    return out


def _ceiling_value(run: Run, b: Benchmark) -> float | None:
    """The req/s of the ceiling row `b` is compared with, if it ran."""
    ceil = next((c for c in run.benchmarks if c.name == b.ceiling), None)
    if ceil is None or not ceil.runs_on:
        return None
    return run.value(ceil.name, ceil.runs_on[0])


def _ceiling_ratio(run: Run, b: Benchmark) -> float | None:
    a, c = run.value(b.name, SUBJECT), _ceiling_value(run, b)
    return None if a is None or not c else a / c


def _has_ceiling(run: Run, benches: list[Benchmark]) -> bool:
    names = {c.name for c in run.benchmarks}
    return any(b.ceiling in names for b in benches)


def _rows(run: Run, benches: list[Benchmark]) -> tuple[list[str], list[list[str]]]:
    names = _columns(run, benches)
    unit = "req/s" if all(b.driver for b in benches) else "ops/s"
    ceiling = _has_ceiling(run, benches)
    pseudo = [n for n in names if n not in {i.name for i in run.loops}]
    variants = _variants(names)
    head = ["benchmark", *(f"{n} {unit}" for n in names)]
    head += [f"{SUBJECT}/{b}" for b in BASELINES]
    head += [f"{SUBJECT}/{p}" for p in pseudo[:1] if ceiling]
    head += [f"{v}/{of}" for v, of in variants] + ["targets"]
    rows = []
    for b in benches:
        row = [b.name]
        for n in names:
            row.append(rate(run.value(b.name, n)) if run.cell(b.name, n) else "-")
        if b.runs_on:
            row += ["-"] * (len(BASELINES) + (1 if ceiling and pseudo else 0))
        else:
            row += [times(run.ratio(b.name, SUBJECT, base)) for base in BASELINES]
            if ceiling and pseudo:
                row.append(times(_ceiling_ratio(run, b)))
        for v, of in variants:
            row.append(times(run.ratio(b.name, v, of)) if run.cell(b.name, v) else "-")
        row.append(verdict(run, b))
        rows.append(row)
    return head, rows


def _scale_tables(
    run: Run, benches: list[Benchmark]
) -> list[tuple[str, list[str], list[list[str]]]]:
    """The per-size figures of the rows that report them (extra["scale"], bench/scale.py).

    One table per row: a line per loop, a column per size, then the growth
    ratio; from each cell's best sample.
    """
    tables = []
    for b in benches:
        names = [n for n in _columns(run, [b]) if run.cell(b.name, n)]
        found = {}
        for n in names:
            extra = run.cell(b.name, n).best_extra
            if extra and "scale" in extra:
                found[n] = extra["scale"]
        if not found:
            continue
        first = next(iter(found.values()))
        labels = list(first["points"])
        ratio_label = next((f["ratio_label"] for f in found.values() if f.get("ratio_label")), None)
        head = ["loop", *labels] + ([ratio_label] if ratio_label else [])
        rows = []
        for n in names:
            f = found.get(n)
            if f is None:
                rows.append([n, *(["n/a"] * (len(head) - 1))])
                continue
            row = [
                n,
                *(f"{f['points'].get(k):,.0f}" if k in f["points"] else "n/a" for k in labels),
            ]
            if ratio_label:
                row.append(times(f.get("ratio")))
            rows.append(row)
        tables.append((f"{b.name}: {first['what']} (best sample)", head, rows))
    return tables


def _ms(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.2f}"


def lag_choice(cell) -> dict | None:
    """The lag figures (extra["lag"]) of the cell's sample with the lowest probe p99.

    As for ops/s, noise only ever adds lag: the quietest sample is the closest to
    the loop's own.
    """
    found = [e["lag"] for e in (cell.extras if cell else []) if e and "lag" in e]
    found = [f for f in found if f["probe"].get("samples")]
    return min(found, key=lambda f: f["probe"]["p99"]) if found else None


LAG_POINTS = ("p50", "p90", "p99", "max")


def _lag_tables(run: Run, benches: list[Benchmark]) -> list[tuple[str, list[str], list[list[str]]]]:
    """The lag percentiles of the rows that report them (extra["lag"], bench/lag.py)."""
    tables = []
    for b in benches:
        names = [n for n in _columns(run, [b]) if run.cell(b.name, n)]
        chosen = {n: lag_choice(run.cell(b.name, n)) for n in names}
        if not any(chosen.values()):
            continue
        monitored = any(f and "monitor" in f for f in chosen.values())
        head = ["loop", *(f"{k} ms" for k in LAG_POINTS), "min ms", "early", "samples", "busy"]
        if monitored:
            head += [f"monitor {k}" for k in ("p50", "p99", "max")]
        rows = []
        for n in names:
            f = chosen[n]
            if f is None:
                rows.append([n, *(["n/a"] * (len(head) - 1))])
                continue
            probe = f["probe"]
            row = [n, *(_ms(probe.get(k)) for k in LAG_POINTS), _ms(probe.get("min"))]
            row += [str(probe.get("early", "n/a")), str(probe["samples"])]
            row.append("n/a" if f.get("busy") is None else f"{f['busy'] * 100:.0f}%")
            if monitored:
                mon = f.get("monitor") or {}
                row += [_ms(mon.get(k)) if mon else "-" for k in ("p50", "p99", "max")]
            rows.append(row)
        period = next(f["period_ms"] for f in chosen.values() if f)
        title = (
            f"{b.name}: how late a sleep({period / 1e3:g}) woke (ms; early: woke before "
            f"{period / 1e3:g} s had passed; busy: loop thread CPU / wall), per loop the sample "
            f"with the lowest p99"
            + ("; monitor: the loop's own monitor_lag(), same sample" if monitored else "")
        )
        tables.append((title, head, rows))
    return tables


def _health_tables(
    run: Run, benches: list[Benchmark]
) -> list[tuple[str, list[str], list[list[str]]]]:
    """What a loop's summary said (extra["health"]: fastloop+health), one line per row."""
    tables = []
    for name in _columns(run, benches):
        spec = loops.LOOPS.get(name)
        if spec is None or spec.summary is None:
            continue
        rows = []
        for b in benches:
            c = run.cell(b.name, name)
            h = (c.best_extra or {}).get("health") if c else None
            if not h:
                continue
            util = h.get("utilization")
            rows.append(
                [
                    b.name,
                    f"{h['lag_count']:,}",
                    _ms(h.get("lag_p50_ms")),
                    _ms(h.get("lag_p99_ms")),
                    _ms(h.get("lag_max_ms")),
                    str(h["slow_callbacks"]),
                    f"{h['callbacks']:,}",
                    f"{h['io_events']:,}",
                    "n/a" if util is None else f"{util * 100:.0f}%",
                ]
            )
        if rows:
            head = ["row", "lag samples", "p50 ms", "p99 ms", "max ms", "slow callbacks"]
            head += ["callbacks", "I/O events", "utilization"]
            title = f"{name}: what its monitors saw (best sample; an echo row's: the server's)"
            tables.append((title, head, rows))
    return tables


def _sub_tables(run: Run, benches: list[Benchmark]) -> list[tuple[str, list[str], list[list[str]]]]:
    """The tables printed under a group's: per-size figures, lag percentiles, monitors."""
    return _scale_tables(run, benches) + _lag_tables(run, benches) + _health_tables(run, benches)


def _problems(run: Run) -> list[str]:
    out = [f"build: {why}" for why in run.meta.get("build_failures", {}).values()]
    available = {i.name for i in run.loops if i.available}
    for b in run.benchmarks:
        for (bench, loop), cell in run.cells.items():
            if bench != b.name or not cell.problem:
                continue
            if loop in available or b.runs_on:
                kind = "failed" if cell.error else "skipped"
                out.append(f"{b.name} on {loop} {kind}: {cell.problem}")
    return out


def _title(group: str) -> str:
    return GROUP_TITLES.get(group, group)


def text(run: Run) -> str:
    out = header_lines(run)
    for group, benches in _groups(run):
        head, rows = _rows(run, benches)
        widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]

        def line(cells: list[str], widths: list[int] = widths) -> str:
            first = cells[0].ljust(widths[0])
            middle = [c.rjust(w) for c, w in zip(cells[1:-1], widths[1:-1], strict=True)]
            return "  ".join([first, *middle, cells[-1]])

        out += ["", f"== {_title(group)}", line(head), "  ".join("-" * w for w in widths)]
        out += [line(r) for r in rows]
        for title, shead, srows in _sub_tables(run, benches):
            sw = [max(len(r[i]) for r in [shead, *srows]) for i in range(len(shead))]
            out += ["", f"  {title}"]
            for r in [shead, *srows]:
                out.append(
                    "  "
                    + "  ".join(
                        [r[0].ljust(sw[0])]
                        + [c.rjust(w) for c, w in zip(r[1:], sw[1:], strict=True)]
                    )
                )
    out += ["", f"targets (read by people, not asserted): {targets_text(run)}"]
    for criterion in ACCEPTANCES:
        summary = acceptance(run, criterion)
        if summary:
            out.append(f"acceptance: {summary}")
    out += [f"note: {p}" for p in _problems(run)]
    return "\n".join(out)


def _latency(extra: dict | None) -> str:
    if not extra or "latency_p50_us" not in extra:
        return "-"
    return f"{extra['latency_p50_us']:.0f} / {extra['latency_p99_us']:.0f}"


def markdown(run: Run) -> str:
    def table(h: list[str], rs: list[list[str]]) -> list[str]:
        out = ["| " + " | ".join(h) + " |", "|" + "|".join("---" for _ in h) + "|"]
        return out + ["| " + " | ".join(r) + " |" for r in rs]

    out = ["# fastloop benchmarks", "", "```", *header_lines(run), "```", ""]
    for group, benches in _groups(run):
        head, rows = _rows(run, benches)
        out += [f"## {_title(group)}", ""] + table(head, rows) + [""]
        for title, shead, srows in _sub_tables(run, benches):
            out += [f"### {title}", ""] + table(shead, srows) + [""]
    out += [f"Targets (read by people, not asserted): {targets_text(run)}."]
    for criterion in ACCEPTANCES:
        summary = acceptance(run, criterion)
        if summary:
            out += ["", f"Acceptance: {summary}."]
    out += ["", "## Median ops/s of the repeats (spread: (max - min) / median)", ""]
    for _group, benches in _groups(run):
        names = _columns(run, benches)
        spread_rows = []
        for b in benches:
            row = [b.name]
            for n in names:
                c = run.cell(b.name, n)
                if c is None:
                    row.append("-")
                    continue
                s = "" if c.spread is None else f" ({c.spread * 100:.0f}%)"
                row.append(rate(c.median) + s)
            spread_rows.append(row)
        out += table(["benchmark", *names], spread_rows) + [""]
    for _group, benches in _groups(run):
        benches = [b for b in benches if b.driver]
        if not benches:
            continue
        names = _columns(run, benches)
        out += ["## Latency p50 / p99 (µs) of the best sample", ""]
        lat_rows = []
        for b in benches:
            row = [b.name]
            for n in names:
                c = run.cell(b.name, n)
                row.append(_latency(c.best_extra) if c else "-")
            lat_rows.append(row)
        out += table(["benchmark", *names], lat_rows) + [""]
    out += ["## What each row measures", ""]
    out += [f"- **{b.name}** ({b.size_text(run.meta['quick'])}): {b.doc}" for b in run.benchmarks]
    problems = _problems(run)
    if problems:
        out += ["", "## Notes", ""] + [f"- {p}" for p in problems]
    return "\n".join(out) + "\n"


def as_json(run: Run) -> dict:
    benches = []
    for b in run.benchmarks:
        per_loop = {}
        for name in _columns(run, [b]):
            c = run.cell(b.name, name)
            if c is None:
                continue
            per_loop[name] = {
                "best": c.best,
                "median": c.median,
                "spread": c.spread,
                "samples": c.rates,
                "error": c.error,
                "skip": c.skip,
            }
            if any(c.extras):
                per_loop[name]["extras"] = c.extras
        ratios = {}
        if not b.runs_on:
            ratios = {f"{SUBJECT}/{base}": run.ratio(b.name, SUBJECT, base) for base in BASELINES}
            if b.ceiling:
                ratios[f"{SUBJECT}/ceiling"] = _ceiling_ratio(run, b)
            for v, of in _variants([n for n in _columns(run, [b]) if run.cell(b.name, n)]):
                ratios[f"{v}/{of}"] = run.ratio(b.name, v, of)
        benches.append(
            {
                "name": b.name,
                "group": b.group,
                "n": b.size(run.meta["quick"]),
                "size": b.size_text(run.meta["quick"]),
                "unit": b.unit,
                "doc": b.doc,
                "params": dict(b.params),
                "ceiling": b.ceiling,
                "ops_per_s": per_loop,
                "ratios": ratios,
                "targets": {t.label: check(run, b, t) for t in b.all_targets()},
            }
        )
    return {
        "meta": run.meta,
        "loops": [vars(i) for i in run.loops],
        "benchmarks": benches,
    }


def _panels(run: Run) -> list[tuple[str, list[Benchmark]]]:
    """The plot's subplots: one per group; a group with several transports split by transport."""
    transports: dict[str, set[str]] = {}
    for b in run.benchmarks:
        if "transport" in b.params:
            transports.setdefault(b.group, set()).add(b.params["transport"])
    panels: dict[str, list[Benchmark]] = {}
    for b in run.benchmarks:
        if b.runs_on:
            continue  # a ceiling is drawn as a mark over the rows it bounds
        if _has_lag(run, b):
            continue  # a panel of its own: lag percentiles per loop (_plot_lag)
        key = b.group
        if "transport" in b.params and len(transports[b.group]) > 1:
            key = f"{b.group}, {b.params['transport']}"
        panels.setdefault(key, []).append(b)
    return list(panels.items())


def _has_lag(run: Run, b: Benchmark) -> bool:
    return any(lag_choice(run.cell(b.name, n)) for n in _columns(run, [b]))


LAG_COLORS = {"p50": "#9ecae1", "p90": "#4292c6", "p99": "#08519c", "max": "#08306b"}


def _plot_lag(ax, run: Run, b: Benchmark) -> None:
    """Grouped bars: the probe's lag percentiles per loop; then the loops' own
    monitor_lag() percentiles (hatched), from the same samples."""
    groups = []  # (x label, figures)
    chosen = {n: lag_choice(run.cell(b.name, n)) for n in _columns(run, [b])}
    for n, f in chosen.items():
        if f:
            groups.append((n, f["probe"], False))
    for n, f in chosen.items():
        if f and f.get("monitor", {}).get("samples"):
            groups.append((f"{n}\nmonitor_lag()", f["monitor"], True))
    width = 0.8 / len(LAG_POINTS)
    seen = set()
    for x, (_, figures, hatched) in enumerate(groups):
        for k, point in enumerate(LAG_POINTS):
            v = figures.get(point)
            if v is None:
                continue
            pos = x - 0.4 + width * (k + 0.5)
            ax.bar(
                pos,
                v,
                width,
                color=LAG_COLORS[point],
                hatch="//" if hatched else None,
                edgecolor="white" if hatched else None,
                label=point if point not in seen else None,
            )
            seen.add(point)
            ax.text(pos, v, f"{v:.2g}", ha="center", va="bottom", fontsize=7)
    ax.axhline(0.0, color="black", linewidth=0.8)
    ax.set_xlim(-0.6, len(groups) - 0.4)
    ax.set_xticks(range(len(groups)), [g[0] for g in groups], fontsize=8)
    ax.set_ylabel("lag (ms)")
    period = next(f["period_ms"] for f in chosen.values() if f)
    ax.set_title(
        f"{b.name}: how late a sleep({period / 1e3:g}) woke under the mixed workload (ms)\n"
        "per loop its sample with the lowest p99; hatched: the loop's own monitor_lag()",
        fontsize=10,
    )
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    ax.grid(axis="y", alpha=0.3)


def plot(run: Run, path: Path) -> Path:
    """Grouped bars: each loop's ops/s as a multiple of asyncio's, per benchmark.

    One subplot per group (micro; proc; echo over TCP; echo over Unix sockets;
    udp; http; scale). On the echo and udp subplots a black dash marks the libuv-C
    ceiling (its req/s over asyncio's). A lag row (group lag) gets a subplot of
    its lag percentiles per loop instead (_plot_lag). Variant loops run only on
    some rows (fastloop+health) are left out of the bars.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FixedLocator, FuncFormatter, NullLocator

    others = [i.name for i in run.loops if i.name != "asyncio" and i.available and not i.extra]
    panels = _panels(run)
    lag_rows = [b for b in run.benchmarks if _has_lag(run, b)]
    if panels and "asyncio" not in [i.name for i in run.loops]:
        if not lag_rows:
            raise RuntimeError(
                "asyncio is not among the loops run, so there is nothing to divide by"
            )
        panels = []  # the lag panels need no asyncio
    if not panels and not lag_rows:
        raise RuntimeError("no rows to plot")
    widest = max([len(benches) for _, benches in panels] + [len(run.loops) + 1])
    fig, axes = plt.subplots(
        len(panels) + len(lag_rows),
        1,
        figsize=(max(8.0, 0.75 * widest + 4), 4.8 * (len(panels) + len(lag_rows))),
        squeeze=False,
    )
    for b, ax in zip(lag_rows, axes[len(panels) :, 0], strict=True):
        _plot_lag(ax, run, b)
    width = 0.8 / max(1, len(others))
    colors = {"uvloop": "#4c72b0", "rloop": "#dd8452", "zuvloop": "#8172b3", SUBJECT: "#55a868"}
    m = run.meta
    for (title, benches), ax in zip(panels, axes[: len(panels), 0], strict=True):
        ratios_seen = [1.0]
        for k, name in enumerate(others):
            label = name
            for x, b in enumerate(benches):
                r = run.ratio(b.name, name, "asyncio")
                pos = x - 0.4 + width * (k + 0.5)
                if r is None:
                    ax.text(pos, 1.0, "n/a", ha="center", va="bottom", fontsize=7, rotation=90)
                    continue
                ratios_seen.append(r)
                ax.bar(pos, r, width, color=colors.get(name, f"C{k}"), label=label)
                label = None  # one legend entry per loop
                ax.text(pos, r, f"{r:.2g}", ha="center", va="bottom", fontsize=7)
            if label is not None:
                ax.bar([], [], color=colors.get(name, f"C{k}"), label=f"{name} (n/a)")
        ceiling_label = "libuv-C ceiling"
        for x, b in enumerate(benches):
            for t in b.targets:
                if t.subject == SUBJECT and t.baseline == "asyncio" and t.factor != 1:
                    ax.hlines(t.factor, x - 0.45, x + 0.45, colors="red", linestyles="dashed")
                    ratios_seen.append(t.factor)
            c, base = _ceiling_value(run, b), run.value(b.name, "asyncio")
            if c and base:
                ax.hlines(
                    c / base, x - 0.45, x + 0.45, colors="black", linewidth=2.0, label=ceiling_label
                )
                ceiling_label = None
                ratios_seen.append(c / base)
        for info in run.loops:
            if not info.available and not info.extra:
                ax.plot([], [], " ", label=f"{info.name}: n/a")
        ax.axhline(1.0, color="black", linewidth=0.8)
        ax.set_yscale("log")
        top, bottom = max(ratios_seen) * 1.6, min(ratios_seen) / 1.4
        ax.set_ylim(bottom, top)
        ticks = [t for t in (0.125, 0.25, 0.5, 1, 2, 4, 8, 16, 32, 64) if bottom <= t <= top]
        ax.yaxis.set_major_locator(FixedLocator(ticks))
        ax.yaxis.set_minor_locator(NullLocator())
        ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}x"))
        ax.set_xlim(-0.6, len(benches) - 0.4)
        ax.set_xticks(range(len(benches)), [b.name for b in benches], rotation=30, ha="right")
        ax.set_ylabel("ops/s relative to asyncio (log)")
        ax.set_title(
            _title(title.split(",")[0]) + (f", {title.split(', ')[1]}" if "," in title else ""),
            fontsize=10,
        )
        ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))
        ax.grid(axis="y", alpha=0.3)
    fig.suptitle(
        f"Speed vs asyncio ({STATISTIC} of the repeats; red dashes: 2x target)\n"
        f"Python {m['python']}, {m['cpu_count']} CPUs, {m['date']}"
        + (" (QUICK: not a measurement)" if m["quick"] else ""),
        fontsize=11,
    )
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
