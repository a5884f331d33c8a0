"""Units of work that read with a query, then write: every query kind the repositories offer.

Each kind runs as ``async with project.transaction() as tx: <query>; append a message``, at 1
and 16 tasks, against raw ``sqlite3`` running the same reads and writes in one ``BEGIN
IMMEDIATE`` transaction on its own copy of the same database: the query's SQL and parameters
are the ones the store sent (captured once), the insert the lean one of ``systems.RawSqlite``.
"""

from __future__ import annotations

import asyncio
import gc
import os
import shutil
import sqlite3
import time
from collections.abc import Awaitable, Callable
from decimal import Decimal
from pathlib import Path
from typing import Any

from .systems import _INSERT, MESSAGE, _micros, baseline_id

Query = Callable[[Any, str], Awaitable[Any]]

QUERIES: dict[str, Query] = {
    "messages.list(conv, limit=1)": lambda tx, conv: tx.messages.list(conv, limit=1),
    "messages.last(conv, 1)": lambda tx, conv: tx.messages.last(conv, 1),
    "messages.count(conv)": lambda tx, conv: tx.messages.count(conv),
    "messages.search(text, limit=1)": lambda tx, conv: tx.messages.search(
        "reviewed", conversation_id=conv, limit=1
    ),
    "code_generation.latest(path)": lambda tx, conv: tx.code_generation.latest("app.py"),
    "checkpoints.latest(run)": lambda tx, conv: tx.checkpoints.latest("run-1"),
    "llm_calls.totals()": lambda tx, conv: tx.llm_calls.totals(),
}


async def _seed(path: Path) -> None:
    """Give the copy what the other repositories' queries read."""
    from demiarch_store import AsyncProjectStore

    async with AsyncProjectStore(path, create=False) as project:
        async with project.transaction() as tx:
            for v in range(5):
                await tx.code_generation.store("app.py", f"print({v})\n" * 20)
            for i in range(20):
                await tx.checkpoints.save("run-1", b"state" * 50, meta={"step": i})
            for i in range(50):
                await tx.llm_calls.record(
                    model=f"model-{i % 3}", cost_usd=Decimal("0.0021"), input_tokens=12
                )


async def _capture(project: Any, conv: str) -> dict[str, tuple[str, Any]]:
    """The SQL and parameters each query kind sends, as the store runs it."""
    from demiarch_store.transaction import Transaction

    seen: list[tuple[str, Any]] = []
    original = Transaction.fetch

    async def spy(self: Any, sql: str, params: Any) -> Any:
        seen.append((sql, dict(params)))
        return await original(self, sql, params)

    Transaction.fetch = spy  # type: ignore[method-assign]
    try:
        sent = {}
        for name, query in QUERIES.items():
            seen.clear()
            async with project.transaction() as tx:
                await query(tx, conv)
            (sent[name],) = seen
        return sent
    finally:
        Transaction.fetch = original  # type: ignore[method-assign]


async def _rate(
    op: Callable[[], Awaitable[Any]], tasks: int, duration: float
) -> tuple[float, float]:
    """Return operations a second, and CPU seconds (every thread of the process) per operation."""
    done = 0
    stop = False

    async def task() -> None:
        nonlocal done
        while not stop:
            await op()
            done += 1

    cpu = time.process_time()
    start = time.perf_counter()
    running = [asyncio.create_task(task()) for _ in range(tasks)]
    await asyncio.sleep(duration)
    stop = True
    await asyncio.gather(*running)
    return done / (time.perf_counter() - start), (time.process_time() - cpu) / max(1, done)


def _raw_rate(op: Callable[[], Any], duration: float) -> tuple[float, float]:
    done = 0
    cpu = time.process_time()
    start = time.perf_counter()
    end = start + duration
    while time.perf_counter() < end:
        op()
        done += 1
    return done / (time.perf_counter() - start), (time.process_time() - cpu) / max(1, done)


async def query_units(
    work: Path,
    template: Path,
    conv: str,
    *,
    duration: float,
    repeats: int,
    concurrency: tuple[int, ...] = (1, 16),
) -> list[dict[str, Any]]:
    """Measure every query kind; return one row per kind and concurrency."""
    from demiarch_store import AsyncProjectStore, StoreConfig

    os.makedirs(work, exist_ok=True)
    seeded = work / "queries.sqlite"
    shutil.copyfile(template, seeded)
    await _seed(seeded)
    ours, theirs = work / "queries-demiarch.sqlite", work / "queries-sqlite3.sqlite"
    shutil.copyfile(seeded, ours)
    shutil.copyfile(seeded, theirs)
    raw = sqlite3.connect(theirs, isolation_level=None, cached_statements=64)
    for pragma in ("journal_mode = WAL", "synchronous = NORMAL", "foreign_keys = ON"):
        raw.execute(f"PRAGMA {pragma}")
    config = StoreConfig(projects_dir=work)
    rows: list[dict[str, Any]] = []
    async with AsyncProjectStore(ours, config=config, create=False) as project:
        sent = await _capture(project, conv)
        for name, query in QUERIES.items():
            sql, params = sent[name]

            async def unit(query: Query = query) -> None:
                async with project.transaction() as tx:
                    await query(tx, conv)
                    await tx.messages.append(conv, role="user", content=MESSAGE)

            def raw_unit(sql: str = sql, params: Any = params) -> None:
                raw.execute("BEGIN IMMEDIATE")
                raw.execute(sql, params).fetchall()
                raw.execute(_INSERT, (baseline_id(), conv, "user", MESSAGE, None, _micros()))
                raw.execute("COMMIT")

            for tasks in concurrency:
                await _rate(unit, tasks, min(0.1, duration))  # warm up
                store_runs, raw_runs = [], []
                for _ in range(repeats):  # interleaved, so load moves both alike
                    gc.collect()
                    raw_runs.append(_raw_rate(raw_unit, duration))
                    gc.collect()
                    store_runs.append(await _rate(unit, tasks, duration))
                ops, cpu = sorted(store_runs)[len(store_runs) // 2]
                base, base_cpu = sorted(raw_runs)[len(raw_runs) // 2]
                rows.append(
                    {
                        "query": name,
                        "tasks": tasks,
                        "demiarch_ops_per_s": ops,
                        "sqlite3_ops_per_s": base,
                        "ratio_sqlite3": ops / base,
                        "demiarch_cpu_us": cpu * 1e6,
                        "sqlite3_cpu_us": base_cpu * 1e6,
                    }
                )
    raw.close()
    return rows
