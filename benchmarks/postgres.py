"""The PostgreSQL engine against raw psycopg and a naive SQLAlchemy async engine, same server.

    python -m benchmarks.postgres            # full run, a few minutes: `make bench`
    python -m benchmarks.postgres --quick    # smoke run, seconds

W1-W5 as on SQLite (``benchmarks.run``; W6 is SQLite's only), each system on a fresh database of
its own, seeded with one conversation of ``seed_rows`` messages:

- demiarch-store: ``project.transaction()`` and ``project.read()`` (``StoreConfig.pool_size``
  10);
- raw psycopg: a ``psycopg_pool.AsyncConnectionPool`` of 10, one transaction per operation
  (``async with pool.connection()``: BEGIN, the statements, COMMIT), ``executemany`` for W4;
- SQLAlchemy's async engine on psycopg (``postgresql+psycopg``), pool of 10, Core statements,
  ``engine.begin()`` per write, ``engine.connect()`` per read.

The three systems run interleaved (each repeat of a cell runs every system in turn), so a change
of the machine's load moves the ratios less; the median of ``repeats`` runs is kept. Besides
throughput and latency, each cell records the client's CPU per operation (this process) and the
server's (its backends for that database, from ``/proc``), which show where the time goes.
Results: ``benchmarks/results/postgres.json`` and ``postgres.md``.

The server is ``DEMIARCH_BENCH_DATABASE_URL`` (or ``--admin-url``; default the local one), a
URL of a database the benchmark can create and drop databases from.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import logging
import os
import secrets
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
import psycopg_pool

from .run import WORKLOADS as ALL_WORKLOADS
from .run import Cell, _cell, _keys, _median, _mix, machine, measure_async
from .systems import BATCH, MESSAGE, _micros, baseline_id

WORKLOADS = {w: d for w, d in ALL_WORKLOADS.items() if w != "W6"}
RESULTS = Path(__file__).parent / "results"
ADMIN = os.environ.get(
    "DEMIARCH_BENCH_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
)
POOL = 10

# The baselines' tables: the store's columns and types (ddl.py) without its other tables.
_DDL = (
    "CREATE TABLE conversations (id TEXT PRIMARY KEY, title TEXT, meta TEXT, "
    "created_at BIGINT NOT NULL, updated_at BIGINT NOT NULL)",
    "CREATE TABLE messages (id TEXT PRIMARY KEY, conversation_id TEXT NOT NULL "
    "REFERENCES conversations (id) ON DELETE CASCADE, role VARCHAR(32) NOT NULL, "
    "content TEXT NOT NULL, meta TEXT, created_at BIGINT NOT NULL)",
    "CREATE INDEX ix_messages_conversation_id_id ON messages (conversation_id, id)",
)
_INSERT = (
    "INSERT INTO messages (id, conversation_id, role, content, meta, created_at) "
    "VALUES (%s, %s, %s, %s, %s, %s)"
)
_GET = "SELECT id, conversation_id, role, content, meta, created_at FROM messages WHERE id = %s"
_GET_CONV = "SELECT id, title, meta, created_at, updated_at FROM conversations WHERE id = %s"


@dataclass(frozen=True)
class Settings:
    duration: float
    repeats: int
    concurrency: tuple[int, ...]
    seed_rows: int
    projects: int
    workloads: tuple[str, ...] = tuple(WORKLOADS)


FULL = Settings(1.0, 3, (1, 16, 64), 10_000, 1000)
QUICK = Settings(0.1, 1, (1, 64), 1000, 20)


def _with_db(url: str, name: str) -> str:
    return url.rsplit("/", 1)[0] + "/" + name


def create_database(admin: str) -> tuple[str, str]:
    name = f"demiarch_bench_{secrets.token_hex(4)}"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    return name, _with_db(admin, name)


def drop_database(admin: str, name: str) -> None:
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def seed_baseline(url: str, rows: int) -> tuple[str, list[str]]:
    """Create the baselines' tables: one conversation, ``rows`` messages; return their IDs."""
    conv = baseline_id()
    keys = [baseline_id() for _ in range(rows)]
    with psycopg.connect(url) as conn:
        for statement in _DDL:
            conn.execute(statement)
        now = _micros()
        conn.execute(
            "INSERT INTO conversations VALUES (%s, %s, NULL, %s, %s)", (conv, "bench", now, now)
        )
        with conn.cursor() as cur:
            cur.executemany(_INSERT, [(k, conv, "user", MESSAGE, None, now) for k in keys])
    return conv, keys


def server_cpu(pids: list[int]) -> dict[int, float]:
    """CPU seconds each server process in ``pids`` has used (user + system), from ``/proc``."""
    ticks = os.sysconf("SC_CLK_TCK")
    out = {}
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue  # not on this machine (a remote server), or gone
        out[pid] = (int(fields[11]) + int(fields[12])) / ticks
    return out


def backends(admin: str, database: str) -> list[int]:
    """The server processes of a database's connections."""
    with psycopg.connect(admin, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT pid FROM pg_stat_activity WHERE datname = %s", (database,)
        ).fetchall()
    return [r[0] for r in rows]


def started_at(admin: str) -> str:
    """When the server started: a restart during the run makes its figures meaningless."""
    with psycopg.connect(admin, autocommit=True) as conn:
        row = conn.execute("SELECT pg_postmaster_start_time()::text").fetchone()
    assert row is not None
    return str(row[0])


class PgDemiarch:
    """demiarch-store on PostgreSQL: ``project.transaction()`` and ``project.read()``."""

    name = "demiarch"
    label = "demiarch-store"

    def __init__(self, url: str) -> None:
        self.url = url

    async def open(self, rows: int) -> list[str]:
        from demiarch_store import Store, StoreConfig

        config = StoreConfig(
            projects_dir=Path("/nonexistent"), database_url=self.url, pool_size=POOL
        )
        self.store = await Store(config).__aenter__()
        self.project = await self.store.create_project(name="bench")
        seed = [{"role": "user", "content": MESSAGE}] * BATCH
        async with self.project.transaction() as tx:
            self.conv = (await tx.conversations.create(title="bench")).id
        for start in range(0, rows, BATCH):
            async with self.project.transaction() as tx:
                await tx.messages.append_many(self.conv, seed[: min(BATCH, rows - start)])
        async with self.project.read() as r:
            keys = [m.id for m in await r.messages.list(self.conv)]
        self.rows = [{"role": "tool", "content": MESSAGE}] * BATCH
        return keys

    async def close(self) -> None:
        await self.store.__aexit__(None, None, None)

    async def w1(self, key: str) -> None:
        async with self.project.transaction() as tx:
            await tx.messages.append(self.conv, role="user", content=MESSAGE)

    async def w2(self, key: str) -> Any:
        async with self.project.read() as r:
            return await r.messages.get(key)

    async def w4(self, key: str) -> None:
        async with self.project.transaction() as tx:
            await tx.messages.append_many(self.conv, self.rows)

    async def w5(self, key: str) -> None:
        async with self.project.transaction() as tx:
            conv = await tx.conversations.get(self.conv)
            await tx.messages.append(conv.id, role="user", content=MESSAGE)


class RawPsycopg:
    """psycopg 3 with psycopg_pool, pool of 10, one transaction per operation."""

    name = "psycopg"
    label = "raw psycopg (pool of 10)"

    def __init__(self, url: str) -> None:
        self.url = url

    async def open(self, rows: int) -> list[str]:
        self.conv, keys = await asyncio.to_thread(seed_baseline, self.url, rows)
        self.pool: psycopg_pool.AsyncConnectionPool[Any] = psycopg_pool.AsyncConnectionPool(
            self.url, min_size=POOL, max_size=POOL, open=False
        )
        await self.pool.open(wait=True)
        return keys

    async def close(self) -> None:
        await self.pool.close()

    async def w1(self, key: str) -> None:
        async with self.pool.connection() as conn:
            await conn.execute(
                _INSERT, (baseline_id(), self.conv, "user", MESSAGE, None, _micros())
            )

    async def w2(self, key: str) -> Any:
        async with self.pool.connection() as conn:
            cur = await conn.execute(_GET, (key,))
            return await cur.fetchone()

    async def w4(self, key: str) -> None:
        conv = self.conv
        rows = [(baseline_id(), conv, "tool", MESSAGE, None, _micros()) for _ in range(BATCH)]
        async with self.pool.connection() as conn, conn.cursor() as cur:
            await cur.executemany(_INSERT, rows)

    async def w5(self, key: str) -> None:
        async with self.pool.connection() as conn:
            cur = await conn.execute(_GET_CONV, (self.conv,))
            row = await cur.fetchone()
            assert row is not None
            await conn.execute(_INSERT, (baseline_id(), row[0], "user", MESSAGE, None, _micros()))


class NaiveSqlAlchemyPg:
    """SQLAlchemy's async engine on psycopg, pool of 10, Core statements."""

    name = "sqlalchemy"
    label = "SQLAlchemy async engine (psycopg)"

    def __init__(self, url: str) -> None:
        self.url = url

    async def open(self, rows: int) -> list[str]:
        from sqlalchemy import BigInteger, Column, MetaData, String, Table, Text, select
        from sqlalchemy.ext.asyncio import create_async_engine

        self.conv, keys = await asyncio.to_thread(seed_baseline, self.url, rows)
        meta = MetaData()
        self.conversations = Table(
            "conversations",
            meta,
            Column("id", Text, primary_key=True),
            Column("title", Text),
            Column("meta", Text),
            Column("created_at", BigInteger),
            Column("updated_at", BigInteger),
        )
        self.messages = Table(
            "messages",
            meta,
            Column("id", Text, primary_key=True),
            Column("conversation_id", Text),
            Column("role", String(32)),
            Column("content", Text),
            Column("meta", Text),
            Column("created_at", BigInteger),
        )
        self.engine = create_async_engine(
            self.url.replace("postgresql://", "postgresql+psycopg://"),
            pool_size=POOL,
            max_overflow=0,
        )
        self.insert = self.messages.insert()
        self.select = select
        return keys

    async def close(self) -> None:
        await self.engine.dispose()

    def _row(self, role: str) -> dict[str, Any]:
        return {
            "id": baseline_id(),
            "conversation_id": self.conv,
            "role": role,
            "content": MESSAGE,
            "meta": None,
            "created_at": _micros(),
        }

    async def w1(self, key: str) -> None:
        async with self.engine.begin() as conn:
            await conn.execute(self.insert, self._row("user"))

    async def w2(self, key: str) -> Any:
        m = self.messages
        async with self.engine.connect() as conn:
            return (await conn.execute(self.select(m).where(m.c.id == key))).first()

    async def w4(self, key: str) -> None:
        rows = [self._row("tool") for _ in range(BATCH)]
        async with self.engine.begin() as conn:
            await conn.execute(self.insert, rows)

    async def w5(self, key: str) -> None:
        c = self.conversations
        async with self.engine.begin() as conn:
            row = (await conn.execute(self.select(c).where(c.c.id == self.conv))).first()
            assert row is not None
            await conn.execute(self.insert, self._row("user"))


SYSTEMS = (PgDemiarch, RawPsycopg, NaiveSqlAlchemyPg)


@dataclass
class PgCell(Cell):
    server_cpu_us: float | None = None
    """CPU time of the server's backends for this system's database, per operation."""


def _op(system: Any, workload: str) -> Callable[[str], Any]:
    if workload == "W3":
        return _mix(system.w2, system.w1)
    return getattr(system, workload.lower())  # type: ignore[no-any-return]


async def run_cells(
    s: Settings, admin: str, made: list[str], log: Callable[[str], None]
) -> tuple[list[PgCell], dict[str, Any]]:
    """Run every workload on every system, interleaved; return the median cells.

    ``made`` receives the names of the databases created (and dropped at the end).
    """
    systems: list[Any] = []
    keys: dict[str, list[str]] = {}
    databases: dict[str, str] = {}
    cells: list[PgCell] = []
    try:
        for cls in SYSTEMS:
            name, url = create_database(admin)
            made.append(name)
            system = cls(url)
            keys[cls.name] = await system.open(s.seed_rows)
            systems.append(system)
            databases[cls.name] = name
        for workload in s.workloads:
            for system in systems:  # warm-up: prepared statements, pools at their size
                await measure_async(
                    _op(system, workload), _keys(keys[system.name]), max(s.concurrency), 0.05
                )
            for conc in s.concurrency:
                runs: dict[str, list[PgCell]] = {system.name: [] for system in systems}
                for _ in range(s.repeats):
                    for system in systems:
                        pids = await asyncio.to_thread(backends, admin, databases[system.name])
                        gc.collect()
                        before = server_cpu(pids)
                        result = await measure_async(
                            _op(system, workload), _keys(keys[system.name]), conc, s.duration
                        )
                        after = server_cpu(pids)  # (a connection opened meanwhile: not counted)
                        used = sum(after[p] - before[p] for p in after if p in before)
                        c = _cell(system.name, workload, "-", conc, *result)
                        cell = PgCell(**asdict(c))
                        cell.server_cpu_us = used / cell.ops * 1e6 if cell.ops else None
                        runs[system.name].append(cell)
                for system in systems:
                    best = _median(runs[system.name])  # type: ignore[arg-type]
                    cells.append(best)  # type: ignore[arg-type]
                    log(_line(best))  # type: ignore[arg-type]
        more: dict[str, Any] = {}
        if s.projects > 0:
            more["projects"] = await many_projects(systems[0], s.projects)
    finally:
        for system in systems:
            await system.close()
        for name in made:
            drop_database(admin, name)
    return cells, more


async def many_projects(ours: PgDemiarch, count: int) -> dict[str, Any]:
    """Create ``count`` projects (one exists), then time discovery and opening."""
    from demiarch_store import Store

    store = ours.store
    t0 = time.perf_counter()
    for n in range(count - 1):
        await store.create_project(name=f"p{n}")
    create_ms = (time.perf_counter() - t0) / max(1, count - 1) * 1000
    async with Store(store.config) as fresh:
        await fresh.list_projects()  # the pool's first connection
        t0 = time.perf_counter()
        infos = await fresh.list_projects()
        discovery = time.perf_counter() - t0
        t0 = time.perf_counter()
        for info in infos[:200]:
            await fresh.open_project(info.id)
        open_ms = (time.perf_counter() - t0) / min(200, len(infos)) * 1000
    return {
        "projects": len(infos),
        "list_projects_ms": discovery * 1000,
        "open_project_ms": open_ms,
        "create_project_ms": create_ms,
    }


def _line(c: PgCell) -> str:
    server = f"{c.server_cpu_us:>8,.0f}" if c.server_cpu_us is not None else "       -"
    client = f"{c.cpu_us:>8,.0f}" if c.cpu_us is not None else "       -"
    return (
        f"{c.workload:<3} {c.concurrency:>3}  {c.system:<11}{c.ops_per_s:>10,.0f}"
        f"{c.p50_ms:>9.3f}{c.p99_ms:>9.3f}{c.errors:>7}{client}{server}"
    )


HEADER = (
    f"{'wl':<3} {'c':>3}  {'system':<11}{'ops/s':>10}{'p50 ms':>9}{'p99 ms':>9}"
    f"{'errors':>7}{'cli us':>8}{'srv us':>8}"
)


def ratios(cells: list[PgCell]) -> list[dict[str, Any]]:
    """One row per workload and task count: ours against each baseline."""
    by = {(c.system, c.workload, c.concurrency): c for c in cells}
    out = []
    for (system, workload, conc), ours in by.items():
        if system != "demiarch":
            continue
        row: dict[str, Any] = {"workload": workload, "tasks": conc}
        for other in ("psycopg", "sqlalchemy"):
            base = by.get((other, workload, conc))
            row[f"vs_{other}"] = ours.ops_per_s / base.ops_per_s if base and base.ops else None
        out.append(row)
    return out


def targets(rows: list[dict[str, Any]], cells: list[PgCell]) -> list[dict[str, Any]]:
    """Check the issue's targets against one run."""
    get = {(r["workload"], r["tasks"]): r for r in rows}
    errors = sum(c.errors for c in cells if c.system == "demiarch")
    out: list[dict[str, Any]] = []

    def check(name: str, got: float | None, want: float) -> None:
        if got is not None:
            out.append(
                {"target": name, "want": f">= {want}x", "got": f"{got:.2f}x", "met": got >= want}
            )

    w1 = get.get(("W1", 64))
    if w1:
        check("W1 @64 vs raw psycopg", w1["vs_psycopg"], 2.0)
        check("W1 @64 vs SQLAlchemy async engine", w1["vs_sqlalchemy"], 5.0)
    w2 = get.get(("W2", 64))
    if w2:
        check("W2 @64 vs raw psycopg", w2["vs_psycopg"], 0.7)
    w4 = [r["vs_psycopg"] for r in rows if r["workload"] == "W4" and r["vs_psycopg"]]
    if w4:
        check("W4 vs raw executemany (worst task count)", min(w4), 1.0)
    out.append(
        {
            "target": "demiarch-store errors (every cell)",
            "want": "0",
            "got": str(errors),
            "met": errors == 0,
        }
    )
    return out


def write_markdown(
    doc: dict[str, Any], cells: list[PgCell], rows: list[dict[str, Any]], s: Settings
) -> str:
    info = doc["machine"]
    by = {(c.system, c.workload, c.concurrency): c for c in cells}
    lines = [
        f"Measured {doc['date'][:16].replace('T', ' ')} UTC on {info['cpu']} ({info['cores']} "
        f"cores, shared with other work: load average {info['load_average'][0]:.2f} at the "
        f"start, {info['load_average_end'][0]:.2f} at the end), {info['platform']}, Python "
        f"{info['python']}, PostgreSQL {info['server']} on the same machine; psycopg "
        f"{info['psycopg']}, SQLAlchemy {info['sqlalchemy']}. Each cell: {s.duration:g} s of "
        f"back-to-back operations, median of {s.repeats} runs, the three systems interleaved; "
        f"run took {info['duration_s']:.0f} s. Client and server share the cores: read the "
        "ratios, not the absolute numbers.",
        "",
        "| workload | tasks | **demiarch-store** ops/s (p99 ms) | raw psycopg ops/s (p99 ms) "
        "| SQLAlchemy ops/s (p99 ms) | vs raw psycopg | vs SQLAlchemy "
        "| CPU us/op client + server: ours / psycopg / SQLAlchemy |",
        "|---|--:|--:|--:|--:|--:|--:|--:|",
    ]

    def brief(c: PgCell | None) -> str:
        return "-" if c is None else f"{c.ops_per_s:,.0f} ({c.p99_ms:.1f})"

    def cpu(c: PgCell | None) -> str:
        if c is None or c.cpu_us is None:
            return "-"
        server = f"{c.server_cpu_us:,.0f}" if c.server_cpu_us is not None else "?"
        return f"{c.cpu_us:,.0f} + {server}"

    for r in rows:
        w, conc = r["workload"], r["tasks"]
        ours, raw, naive = (by.get((n, w, conc)) for n in ("demiarch", "psycopg", "sqlalchemy"))
        vs_raw = f"**{r['vs_psycopg']:.2f}x**" if r["vs_psycopg"] else "-"
        vs_naive = f"**{r['vs_sqlalchemy']:.2f}x**" if r["vs_sqlalchemy"] else "-"
        lines.append(
            f"| {w} | {conc} | {brief(ours)} | {brief(raw)} | {brief(naive)} | {vs_raw} "
            f"| {vs_naive} | {cpu(ours)} / {cpu(raw)} / {cpu(naive)} |"
        )
    lines += ["", "Workloads: " + "; ".join(f"{w}: {d}" for w, d in WORKLOADS.items()) + "."]
    p = doc["extras"].get("projects")
    if p:
        lines += [
            "",
            f"With {p['projects']:,} projects: `list_projects` {p['list_projects_ms']:.1f} ms, "
            f"`open_project` {p['open_project_ms']:.2f} ms each, `create_project` "
            f"{p['create_project_ms']:.1f} ms each.",
        ]
    lines += ["", "| target | wanted | measured | met |", "|---|---|---|---|"]
    for t in doc["targets"]:
        lines.append(
            f"| {t['target']} | {t['want']} | {t['got']} | {'yes' if t['met'] else 'NO'} |"
        )
    return "\n".join(lines) + "\n"


async def main_async(args: argparse.Namespace) -> int:
    s = QUICK if args.quick else FULL
    over: dict[str, Any] = {
        k: v
        for k, v in {
            "duration": args.duration,
            "repeats": args.repeats,
            "seed_rows": args.seed_rows,
            "projects": args.projects,
        }.items()
        if v is not None
    }
    if args.workloads:
        over["workloads"] = tuple(w.strip().upper() for w in args.workloads.split(","))
    if args.concurrency:
        over["concurrency"] = tuple(int(c) for c in args.concurrency.split(","))
    s = Settings(**{**asdict(s), **over})
    import sqlalchemy

    started = datetime.now(UTC)
    info = machine()
    with psycopg.connect(args.admin_url, autocommit=True) as conn:
        info["server"] = conn.info.parameter_status("server_version")
    info["psycopg"] = psycopg.__version__
    info["sqlalchemy"] = sqlalchemy.__version__
    print(f"demiarch-store on PostgreSQL, {started:%Y-%m-%d %H:%M} UTC")
    print(f"{info['cpu']}, {info['cores']} cores, load {info['load_average'][0]:.2f}")
    print(f"settings: {s}\n")
    print(HEADER)
    made: list[str] = []
    info["server_started"] = started_at(args.admin_url)
    cells, more = await run_cells(s, args.admin_url, made, lambda line: print(line, flush=True))
    rows = ratios(cells)
    checks = targets(rows, cells)
    if started_at(args.admin_url) != info["server_started"]:
        checks.append(
            {
                "target": "the server ran the whole run",
                "want": "no restart",
                "got": "restarted",
                "met": False,
            }
        )
        print("The server restarted during the run: its figures are meaningless; run it again.")
    info["load_average_end"] = os.getloadavg()
    info["duration_s"] = (datetime.now(UTC) - started).total_seconds()
    doc = {
        "date": started.isoformat(timespec="seconds"),
        "machine": info,
        "settings": asdict(s),
        "workloads": WORKLOADS,
        "cells": [asdict(c) for c in cells],
        "ratios": rows,
        "extras": more,
        "targets": checks,
        "databases": made,
    }
    print()
    for r in rows:
        print(
            f"{r['workload']} @{r['tasks']:<3} vs raw psycopg {r['vs_psycopg']:.2f}x, "
            f"vs SQLAlchemy {r['vs_sqlalchemy']:.2f}x"
        )
    if "projects" in more:
        print(more["projects"])
    for t in checks:
        print(f"{'ok ' if t['met'] else 'NOT'}  {t['target']}: want {t['want']}, got {t['got']}")
    out: Path = args.out
    (out / "postgres.json").write_text(json.dumps(doc, indent=1) + "\n")
    (out / "postgres.md").write_text(write_markdown(doc, cells, rows, s))
    print(f"\nwrote {out}/postgres.json, postgres.md; took {info['duration_s']:.0f} s")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Parse the command line and run the benchmark."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smoke run: short, one repeat")
    parser.add_argument("--duration", type=float, help="seconds per cell")
    parser.add_argument("--repeats", type=int, help="runs per cell (the median is kept)")
    parser.add_argument("--concurrency", help="comma-separated task counts, e.g. 1,16,64")
    parser.add_argument("--workloads", help="comma-separated subset, e.g. W1,W2")
    parser.add_argument("--seed-rows", type=int, help="messages W2 reads from")
    parser.add_argument("--projects", type=int, help="projects for discovery (0: skip)")
    parser.add_argument("--admin-url", default=ADMIN, help="a database to create others from")
    parser.add_argument("--out", type=Path, default=RESULTS, help="results directory")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    logging.getLogger("demiarch_store").setLevel(logging.ERROR)
    return asyncio.run(main_async(args))


if __name__ == "__main__":
    sys.exit(main())
