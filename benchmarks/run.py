"""Run every benchmark in one process and report them side by side: `make bench`.

    python -m benchmarks.run            # full run, a few minutes
    python -m benchmarks.run --quick    # smoke run, seconds

Each cell (system x workload x concurrency) runs ``concurrency`` asyncio tasks issuing operations
back to back for a fixed duration; the median of ``repeats`` runs (by throughput) is reported
with its p50/p99 latency and error count. Raw ``sqlite3`` runs synchronously in one thread (its
concurrency is always 1) and is the denominator of every ratio. Results go to
``benchmarks/results/``: ``results.json``, ``results.md`` (the README table) and
``throughput.png``.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import itertools
import json
import logging
import os
import platform
import random
import shutil
import sqlite3
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from . import extras, queries
from .systems import ASYNC_SYSTEMS, MESSAGE, RawSqlite

WORKLOADS = {
    "W1": "one-row write transaction (300-byte message)",
    "W2": "point read by primary key (10,000 rows)",
    "W3": "90% W2 reads, 10% W1 writes",
    "W4": "1,000-row batch insert (ops = batches)",
    "W5": "unit of work: read by ID, then write",
    "W6": "unit of work: query read (last message), then write",
}
RESULTS = Path(__file__).parent / "results"


@dataclass(frozen=True)
class Settings:
    duration: float
    repeats: int
    concurrency: tuple[int, ...]
    seed_rows: int
    open_repeats: int
    discovery_projects: int
    open_projects: int
    workloads: tuple[str, ...] = tuple(WORKLOADS)


FULL = Settings(0.5, 3, (1, 8, 16, 64), 10_000, 30, 1000, 100)
QUICK = Settings(0.1, 1, (1, 8, 64), 10_000, 5, 100, 20)


@dataclass
class Cell:
    system: str
    workload: str
    synchronous: str
    concurrency: int
    ops: int
    seconds: float
    ops_per_s: float
    p50_ms: float
    p99_ms: float
    errors: int
    first_error: str | None = None
    ratio_sqlite3: float | None = None
    ratio_aiosqlite: float | None = None
    cpu_us: float | None = None
    """CPU time of the whole process (every thread) per operation, in microseconds: what the
    machine's load moves less than throughput."""


def _cell(
    system: str,
    workload: str,
    sync: str,
    conc: int,
    lat: list[float],
    errors: int,
    first_error: str | None,
    seconds: float,
    cpu: float = 0.0,
) -> Cell:
    lat.sort()
    n = len(lat)

    def pct(q: float) -> float:
        return lat[min(n - 1, int(q * n))] * 1000 if n else float("nan")

    return Cell(
        system,
        workload,
        sync,
        conc,
        n,
        seconds,
        n / seconds,
        pct(0.5),
        pct(0.99),
        errors,
        first_error,
        cpu_us=cpu / n * 1e6 if n else None,
    )


def _keys(keys: list[str]) -> Iterator[str]:
    shuffled = keys[:]
    random.Random(1).shuffle(shuffled)
    return itertools.cycle(shuffled)


def _mix(read: Callable[[str], Any], write: Callable[[str], Any]) -> Callable[[str], Any]:
    """W3: one write in ten, in a fixed pseudo-random order."""
    rng = random.Random(3)
    coin = itertools.cycle([rng.random() < 0.1 for _ in range(1000)])

    def op(key: str) -> Any:
        return write(key) if next(coin) else read(key)

    return op


def _op(system: Any, workload: str) -> Callable[[str], Any]:
    if workload == "W3":
        return _mix(system.w2, system.w1)
    return getattr(system, workload.lower())  # type: ignore[no-any-return]


def measure_sync(op: Callable[[str], Any], keys: Iterator[str], duration: float) -> tuple:
    lat: list[float] = []
    errors, first = 0, None
    clock = time.perf_counter
    cpu = time.process_time()
    start = clock()
    end = start + duration
    while True:
        t0 = clock()
        if t0 >= end:
            break
        try:
            op(next(keys))
        except Exception as exc:  # counted, like every system's
            errors += 1
            first = first or repr(exc)
        else:
            lat.append(clock() - t0)
    return lat, errors, first, clock() - start, time.process_time() - cpu


async def measure_async(
    op: Callable[[str], Any], keys: Iterator[str], conc: int, duration: float
) -> tuple:
    lat: list[float] = []
    errors = [0]
    first: list[str] = []
    stop = False
    clock = time.perf_counter

    async def task() -> None:
        while not stop:
            t0 = clock()
            try:
                await op(next(keys))
            except Exception as exc:  # counted, like every system's
                errors[0] += 1
                if not first:
                    first.append(repr(exc))
            else:
                lat.append(clock() - t0)

    cpu = time.process_time()
    start = clock()
    tasks = [asyncio.create_task(task()) for _ in range(conc)]
    await asyncio.sleep(duration)
    stop = True
    await asyncio.gather(*tasks)
    return lat, errors[0], first[0] if first else None, clock() - start, time.process_time() - cpu


def _median(cells: list[Cell]) -> Cell:
    return sorted(cells, key=lambda c: c.ops_per_s)[len(cells) // 2]


async def make_template(directory: Path, rows: int) -> tuple[Path, str, list[str]]:
    """Create the seeded database every system copies: one conversation, ``rows`` messages."""
    from demiarch_store import AsyncProjectStore

    path = directory / "template.sqlite"
    async with AsyncProjectStore(path) as project:
        async with project.transaction() as tx:
            conv = await tx.conversations.create(title="bench")
            await tx.messages.append_many(conv.id, [{"role": "user", "content": MESSAGE}] * rows)
    with sqlite3.connect(path) as conn:
        keys = [r[0] for r in conn.execute("SELECT id FROM messages")]
    conn.close()
    return path, conv.id, keys


async def run_throughput(
    s: Settings, work: Path, template: Path, conv: str, keys: list[str], log: Callable[[str], None]
) -> list[Cell]:
    cells: list[Cell] = []
    plan = [(w, "NORMAL") for w in WORKLOADS] + [("W1", "FULL")]
    plan = [(w, sync) for w, sync in plan if w in s.workloads]
    for workload, sync in plan:
        # Raw sqlite3: synchronous, one thread, the denominator of every ratio. It runs before
        # and after the other systems, and the median of both sets is kept, so that a change
        # of the machine's load during the block moves the ratios less.
        path = work / f"sqlite3-{workload}-{sync}.sqlite"
        shutil.copyfile(template, path)
        raw = RawSqlite(path, conv, sync)
        raw_op = _op(raw, workload)
        measure_sync(raw_op, _keys(keys), min(0.1, s.duration))  # warm up
        raw_runs = _raw_runs(s, raw_op, keys, workload, sync)
        systems = ASYNC_SYSTEMS if sync == "NORMAL" else ASYNC_SYSTEMS[:1]
        for cls in systems:
            path = work / f"{cls.name}-{workload}-{sync}.sqlite"
            shutil.copyfile(template, path)
            system = cls(path, conv, sync)
            await system.open()
            try:
                op = _op(system, workload)
                await measure_async(op, _keys(keys), max(s.concurrency), min(0.1, s.duration))
                for conc in s.concurrency:
                    runs = []
                    for _ in range(s.repeats):
                        gc.collect()
                        result = await measure_async(op, _keys(keys), conc, s.duration)
                        runs.append(_cell(cls.name, workload, sync, conc, *result))
                    best = _median(runs)
                    cells.append(best)
                    log(_line(best))
            finally:
                await system.close()
        best = _median(raw_runs + _raw_runs(s, raw_op, keys, workload, sync))
        raw.close()
        cells.append(best)
        log(_line(best))
    _ratios(cells)
    return cells


def _raw_runs(
    s: Settings, op: Callable[[str], Any], keys: list[str], workload: str, sync: str
) -> list[Cell]:
    runs = []
    for _ in range(s.repeats):
        gc.collect()
        result = measure_sync(op, _keys(keys), s.duration)
        runs.append(_cell("sqlite3", workload, sync, 1, *result))
    return runs


def _ratios(cells: list[Cell]) -> None:
    raw = {(c.workload, c.synchronous): c.ops_per_s for c in cells if c.system == "sqlite3"}
    shared = {
        (c.workload, c.synchronous, c.concurrency): c.ops_per_s
        for c in cells
        if c.system == "aiosqlite"
    }
    for c in cells:
        base = raw.get((c.workload, c.synchronous))
        c.ratio_sqlite3 = c.ops_per_s / base if base else None
        other = shared.get((c.workload, c.synchronous, c.concurrency))
        if c.system == "sqlite3":
            other = shared.get((c.workload, c.synchronous, 1))
        c.ratio_aiosqlite = c.ops_per_s / other if other else None


def _line(c: Cell) -> str:
    ratio = f"{c.ratio_sqlite3:6.2f}x" if c.ratio_sqlite3 is not None else "       "
    shared = f"{c.ratio_aiosqlite:6.1f}x" if c.ratio_aiosqlite is not None else "       "
    conc = "-" if c.system == "sqlite3" else str(c.concurrency)
    return (
        f"{c.workload:<3} {c.synchronous:<6} {conc:>3}  {c.system:<11}{c.ops_per_s:>10,.0f}"
        f"{c.p50_ms:>9.3f}{c.p99_ms:>9.3f}{c.errors:>7}  {ratio}  {shared}"
    )


HEADER = (
    f"{'wl':<3} {'sync':<6} {'c':>3}  {'system':<11}{'ops/s':>10}{'p50 ms':>9}{'p99 ms':>9}"
    f"{'errors':>7}  {'sqlite3':>7}  {'aiosql':>7}"
)


def targets(cells: list[Cell], more: dict[str, Any]) -> list[dict[str, Any]]:
    """Check the issue's targets against one run."""

    def get(w: str, c: int, sync: str = "NORMAL", system: str = "demiarch") -> Cell | None:
        for cell in cells:
            if (cell.system, cell.workload, cell.synchronous, cell.concurrency) == (
                system,
                w,
                sync,
                c,
            ):
                return cell
        return None

    out: list[dict[str, Any]] = []

    def ratio(name: str, w: str, c: int, want: float, sync: str = "NORMAL") -> None:
        cell = get(w, c, sync)
        if cell is None or cell.ratio_sqlite3 is None:
            return
        out.append(
            {
                "target": name,
                "want": f">= {want}x",
                "got": f"{cell.ratio_sqlite3:.2f}x",
                "met": cell.ratio_sqlite3 >= want and cell.errors == 0,
            }
        )

    ratio("W1 @64 vs sqlite3", "W1", 64, 1.0)
    w1 = get("W1", 64)
    if w1 is not None:
        out.append(
            {
                "target": "W1 @64 p99",
                "want": "< 10 ms",
                "got": f"{w1.p99_ms:.2f} ms",
                "met": w1.p99_ms < 10,
            }
        )
    ratio("W1 @8 vs sqlite3", "W1", 8, 0.8)
    ratio("W1 @1 vs sqlite3", "W1", 1, 0.25)
    ratio("W2 @64 vs sqlite3", "W2", 64, 0.4)
    ratio("W3 @16 vs sqlite3", "W3", 16, 0.4)
    w4 = [c for c in cells if c.system == "demiarch" and c.workload == "W4"]
    if w4:
        worst = min(c.ratio_sqlite3 or 0 for c in w4)
        best = max(c.ratio_sqlite3 or 0 for c in w4)
        out.append(
            {
                "target": "W4 vs sqlite3 (worst / best concurrency)",
                "want": ">= 0.9x",
                "got": f"{worst:.2f}x / {best:.2f}x",
                "met": worst >= 0.9,
            }
        )
    for w in ("W5", "W6"):
        for c in (1, 16):
            ratio(f"{w} @{c} vs sqlite3 (same reads and writes)", w, c, 0.5)
    w5 = [c for c in cells if c.system == "demiarch" and c.workload == "W5"]
    if w5:
        errors = sum(c.errors for c in w5)
        out.append(
            {
                "target": "W5 errors (all concurrencies)",
                "want": "0",
                "got": str(errors),
                "met": errors == 0,
            }
        )
    ours = [c for c in cells if c.system == "demiarch" and c.synchronous == "NORMAL"]
    if ours and all(c.ratio_aiosqlite is not None for c in ours):
        worst_cell = min(ours, key=lambda c: c.ratio_aiosqlite or 0)
        out.append(
            {
                "target": "every workload vs shared aiosqlite (worst cell)",
                "want": ">= 4x",
                "got": f"{worst_cell.ratio_aiosqlite:.1f}x ({worst_cell.workload} "
                f"@{worst_cell.concurrency})",
                "met": (worst_cell.ratio_aiosqlite or 0) >= 4,
            }
        )
    ratio("W1 @64 synchronous=FULL vs sqlite3 FULL", "W1", 64, 10.0, "FULL")
    if "open" in more:
        ms = more["open"]["open_at_head_ms"]
        out.append(
            {
                "target": "open a project at head",
                "want": "< 5 ms",
                "got": f"{ms:.2f} ms",
                "met": ms < 5,
            }
        )
    if "discovery" in more:
        d = more["discovery"]
        out.append(
            {
                "target": f"discovery of {d['projects']:,} projects",
                "want": "< 1 s",
                "got": f"{d['discovery_s']:.3f} s",
                "met": d["discovery_s"] < 1,
            }
        )
    for row in more.get("queries", []):
        out.append(
            {
                "target": f"unit of work: {row['query']}, then append, @{row['tasks']} vs sqlite3",
                "want": ">= 0.5x",
                "got": f"{row['ratio_sqlite3']:.2f}x",
                "met": row["ratio_sqlite3"] >= 0.5,
            }
        )
    if "many_open" in more:
        m = more["many_open"]
        bound = m["projects"] * (2 + m["max_readers"])
        out.append(
            {
                "target": f"threads with {m['projects']} projects open",
                "want": f"<= {bound} (writer, max_readers, checkpointer each), 0 left after close",
                "got": f"{m['threads']} ({m['threads_left_after_close']} left)",
                "met": m["threads"] <= bound and m["threads_left_after_close"] == 0,
            }
        )
    return out


def machine() -> dict[str, Any]:
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return {
        "cpu": model,
        "cores": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "sqlite": sqlite3.sqlite_version,
        "load_average": os.getloadavg(),
    }


def write_markdown(
    cells: list[Cell],
    checks: list[dict[str, Any]],
    info: dict[str, Any],
    more: dict[str, Any],
    s: Settings,
    date: str,
) -> str:
    load = info["load_average"][0]
    head = [
        f"Measured {date} UTC on {info['cpu']} ({info['cores']} cores), {info['platform']}, "
        f"Python {info['python']}, SQLite {info['sqlite']}; load average {load:.2f} at the start. "
        f"Each cell: {s.duration:g} s of back-to-back operations, median of {s.repeats} runs; "
        f"run took {info['duration_s']:.0f} s.",
        "",
    ]
    by = {(c.system, c.workload, c.synchronous, c.concurrency): c for c in cells}
    lines = [
        "| workload | tasks | **demiarch-store** ops/s | p50 / p99 ms | errors | vs raw sqlite3 "
        "| vs aiosqlite | aiosqlite + Lock ops/s (p99 ms) | SQLAlchemy ops/s (p99 ms, errors) "
        "| raw sqlite3 ops/s (p99 ms) |",
        "|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|",
    ]
    keys = sorted(
        {(c.workload, c.synchronous, c.concurrency) for c in cells if c.system == "demiarch"},
        key=lambda k: (k[1] != "NORMAL", k[0], k[2]),
    )
    for w, sync, conc in keys:
        ours = by[("demiarch", w, sync, conc)]
        shared = by.get(("aiosqlite", w, sync, conc))
        naive = by.get(("sqlalchemy", w, sync, conc))
        raw = by.get(("sqlite3", w, sync, 1))
        vs_shared = f"{ours.ratio_aiosqlite:.1f}x" if ours.ratio_aiosqlite else "-"
        vs_raw = f"**{ours.ratio_sqlite3:.2f}x**" if ours.ratio_sqlite3 else "-"
        label = w if sync == "NORMAL" else f"{w} FULL"
        lines.append(
            f"| {label} | {conc} | {ours.ops_per_s:,.0f} | {ours.p50_ms:.2f} / {ours.p99_ms:.2f} "
            f"| {ours.errors} | {vs_raw} | {vs_shared} "
            f"| {_brief(shared)} | {_brief(naive, errors=True)} | {_brief(raw)} |"
        )
    o, d, m = more["open"], more["discovery"], more["many_open"]
    lines += [
        "",
        f"- open a project already at head: **{o['open_at_head_ms']:.2f} ms** "
        f"(median of {o['repeats']})",
        f"- discovery of {d['projects']:,} projects (`store.list_projects()`): "
        f"**{d['discovery_s']:.3f} s**",
        f"- {m['projects']} projects open, each after one write and one read: "
        f"**{m['threads']} threads** ({m['threads_per_project']:.1f} per project), "
        f"**{m['rss_mb']:.1f} MB** more RSS ({m['rss_kb_per_project']:.0f} KB per project); "
        f"{m['threads_left_after_close']} threads left after close",
    ]
    cpu_rows = [
        (c, by.get(("sqlite3", c.workload, c.synchronous, 1)))
        for c in cells
        if c.system == "demiarch"
        and c.synchronous == "NORMAL"
        and c.workload in ("W1", "W4", "W5", "W6")
        and c.cpu_us
    ]
    if cpu_rows:
        lines += [
            "",
            "CPU time per operation, every thread of the process (the store's loop, writer and "
            "checkpointer threads; raw `sqlite3`'s one), which the machine's load moves less "
            "than throughput:",
            "",
            "| workload | tasks | demiarch-store CPU us/op | raw sqlite3 CPU us/op "
            "| raw / store |",
            "|---|--:|--:|--:|--:|",
        ]
        for c, raw in cpu_rows:
            if raw is None or not raw.cpu_us or not c.cpu_us:
                continue
            lines.append(
                f"| {c.workload} | {c.concurrency} | {c.cpu_us:,.0f} | {raw.cpu_us:,.0f} "
                f"| **{raw.cpu_us / c.cpu_us:.2f}x** |"
            )
    if more.get("queries"):
        lines += [
            "",
            "Units of work that read with a query, then append a message (raw `sqlite3`: the same "
            "SQL in one `BEGIN IMMEDIATE` transaction, runs interleaved with the store's):",
            "",
            "| query, then `messages.append` | tasks | demiarch-store ops/s | raw sqlite3 ops/s "
            "| vs raw sqlite3 | CPU us/op: store / raw (raw / store) |",
            "|---|--:|--:|--:|--:|--:|",
        ]
        for row in more["queries"]:
            cpu, raw_cpu = row["demiarch_cpu_us"], row["sqlite3_cpu_us"]
            lines.append(
                f"| `{row['query']}` | {row['tasks']} | {row['demiarch_ops_per_s']:,.0f} "
                f"| {row['sqlite3_ops_per_s']:,.0f} | **{row['ratio_sqlite3']:.2f}x** "
                f"| {cpu:,.0f} / {raw_cpu:,.0f} ({raw_cpu / cpu:.2f}x) |"
            )
    lines += ["", "| target | wanted | measured | met |", "|---|---|---|---|"]
    for t in checks:
        met = "yes" if t["met"] else "NO"
        lines.append(f"| {t['target']} | {t['want']} | {t['got']} | {met} |")
    return "\n".join(head + lines) + "\n"


def _brief(c: Cell | None, *, errors: bool = False) -> str:
    if c is None:
        return "-"
    extra = f", {c.errors}" if errors else ""
    p99 = f"{c.p99_ms:.2f}" if c.p99_ms < 10 else f"{c.p99_ms:.0f}"
    return f"{c.ops_per_s:,.0f} ({p99}{extra})"


def plot(cells: list[Cell], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    panels = [(w, "NORMAL") for w in WORKLOADS] + [("W1", "FULL")]
    columns = (len(panels) + 1) // 2
    fig, axes = plt.subplots(2, columns, figsize=(4.7 * columns, 8.5))
    styles = {
        "demiarch": ("demiarch-store", "C0", "o-"),
        "aiosqlite": ("aiosqlite, shared conn + Lock", "C1", "s-"),
        "sqlalchemy": ("SQLAlchemy async engine", "C2", "^-"),
    }
    for ax in axes.flat[len(panels) :]:
        ax.set_visible(False)
    for ax, (w, sync) in zip(axes.flat, panels, strict=False):
        mine = [c for c in cells if c.workload == w and c.synchronous == sync]
        for system, (label, color, style) in styles.items():
            pts = sorted((c.concurrency, c.ops_per_s) for c in mine if c.system == system)
            if pts:
                ax.plot(*zip(*pts, strict=True), style, color=color, label=label)
        raw = [c for c in mine if c.system == "sqlite3"]
        if raw:
            ax.axhline(raw[0].ops_per_s, color="k", linestyle="--", label="raw sqlite3 (sync)")
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ticks = sorted({c.concurrency for c in mine if c.system != "sqlite3"})
        ax.set_xticks(ticks, [str(t) for t in ticks])
        ax.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())
        ax.set_title(f"{w} ({sync}): {WORKLOADS[w]}", fontsize=9)
        ax.set_xlabel("concurrent tasks")
        ax.set_ylabel("ops/s")
        ax.grid(True, which="both", alpha=0.3)
    axes.flat[0].legend(fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


async def main_async(args: argparse.Namespace) -> int:
    s = QUICK if args.quick else FULL
    over = {
        k: v
        for k, v in {
            "duration": args.duration,
            "repeats": args.repeats,
            "seed_rows": args.seed_rows,
            "discovery_projects": args.projects,
            "open_projects": args.open_projects,
        }.items()
        if v is not None
    }
    if args.workloads:
        over["workloads"] = tuple(w.strip().upper() for w in args.workloads.split(","))
    if args.concurrency:
        over["concurrency"] = tuple(int(c) for c in args.concurrency.split(","))
    s = Settings(**{**asdict(s), **over})
    out: Path = args.out
    started = datetime.now(UTC)
    info = machine()
    print(f"demiarch-store benchmarks, {started:%Y-%m-%d %H:%M} UTC")
    print(
        f"{info['cpu']}, {info['cores']} cores, Python {info['python']}, "
        f"SQLite {info['sqlite']}, load {info['load_average'][0]:.2f}"
    )
    print(f"settings: {s}\n")

    def log(line: str) -> None:
        print(line, flush=True)

    base = Path(args.workdir) if args.workdir else None
    with tempfile.TemporaryDirectory(prefix="demiarch-bench-", dir=base) as tmp:
        work = Path(tmp)
        template, conv, keys = await make_template(work, s.seed_rows)
        cells: list[Cell] = []
        more: dict[str, Any] = {}
        if not args.skip_throughput:
            print(HEADER)
            cells = await run_throughput(s, work, template, conv, keys, log)
        more["open"], project_file = await extras.open_at_head(work / "open", s.open_repeats)
        more["discovery"] = await extras.discovery(work / "discovery", s.discovery_projects, 3)
        more["many_open"] = await extras.many_open(work / "many", project_file, s.open_projects)
        if not args.skip_queries:
            more["queries"] = await queries.query_units(
                work / "queries", template, conv, duration=s.duration, repeats=s.repeats
            )
    print()
    print(f"open a project at head: {more['open']['open_at_head_ms']:.2f} ms (median)")
    d = more["discovery"]
    print(f"discovery of {d['projects']:,} projects: {d['discovery_s']:.3f} s")
    m = more["many_open"]
    print(
        f"{m['projects']} projects open: {m['threads']} threads ({m['connections']} connections), "
        f"{m['rss_mb']:.1f} MB RSS; {m['threads_left_after_close']} threads left after close"
    )
    for row in more.get("queries", []):
        print(
            f"unit of work: {row['query']:<32} then append @{row['tasks']:<2} "
            f"{row['demiarch_ops_per_s']:>8,.0f}/s  "
            f"raw sqlite3 {row['sqlite3_ops_per_s']:>8,.0f}/s  {row['ratio_sqlite3']:.2f}x"
        )

    # Ratios again in the final table, now that every cell is known.
    print("\n" + HEADER)
    order = {"demiarch": 0, "aiosqlite": 1, "sqlalchemy": 2, "sqlite3": 3}
    for w, sync in dict.fromkeys((c.workload, c.synchronous) for c in cells):
        here = [c for c in cells if (c.workload, c.synchronous) == (w, sync)]
        for c in sorted(
            here, key=lambda c: (c.system == "sqlite3", c.concurrency, order[c.system])
        ):
            print(_line(c))
        print()
    checks = targets(cells, more)
    print()
    for t in checks:
        print(f"{'ok ' if t['met'] else 'NOT'}  {t['target']}: want {t['want']}, got {t['got']}")
    info["load_average_end"] = os.getloadavg()
    info["duration_s"] = (datetime.now(UTC) - started).total_seconds()
    doc = {
        "date": started.isoformat(timespec="seconds"),
        "machine": info,
        "settings": asdict(s),
        "workloads": WORKLOADS,
        "cells": [asdict(c) for c in cells],
        "extras": more,
        "targets": checks,
    }
    (out / "results.json").write_text(json.dumps(doc, indent=1) + "\n")
    date = f"{started:%Y-%m-%d %H:%M}"
    (out / "results.md").write_text(write_markdown(cells, checks, info, more, s, date))
    if cells and not args.no_plot:
        plot(
            cells,
            out / "throughput.png",
            f"demiarch-store benchmarks {started:%Y-%m-%d}, {info['cpu']}, {info['cores']} cores",
        )
    print(f"\nwrote {out}/results.json, results.md" + ("" if args.no_plot else ", throughput.png"))
    print(f"took {info['duration_s']:.0f} s")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Parse the command line and run the benchmarks."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smoke run: short, one repeat")
    parser.add_argument("--duration", type=float, help="seconds per cell")
    parser.add_argument("--repeats", type=int, help="runs per cell (the median is kept)")
    parser.add_argument("--concurrency", help="comma-separated task counts, e.g. 1,8,64")
    parser.add_argument("--workloads", help="comma-separated subset, e.g. W1,W2")
    parser.add_argument("--seed-rows", type=int, help="messages W2 reads from")
    parser.add_argument("--projects", type=int, help="projects for the discovery figure")
    parser.add_argument("--open-projects", type=int, help="projects held open at once")
    parser.add_argument("--skip-throughput", action="store_true", help="only the extra figures")
    parser.add_argument(
        "--skip-queries", action="store_true", help="without the units that read with a query"
    )
    parser.add_argument("--no-plot", action="store_true")
    parser.add_argument("--workdir", help="where the temporary databases go")
    parser.add_argument("--out", type=Path, default=RESULTS, help="results directory")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    # Queued W4 batches at 64 tasks take over a second by design: not worth a warning each.
    logging.getLogger("demiarch_store").setLevel(logging.ERROR)
    return asyncio.run(main_async(args))


if __name__ == "__main__":
    sys.exit(main())
