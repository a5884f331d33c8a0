"""The PostgreSQL engine against raw psycopg and a naive SQLAlchemy async engine, same server.

W1: T tasks each commit one-row units of work (a message appended to a conversation): the
store (``project.transaction()``), raw psycopg (one transaction per operation over a pool of
10, psycopg_pool) and SQLAlchemy's async engine on psycopg (``engine.begin()`` per operation,
pool of 10). W2: T tasks each read one message by ID in a snapshot. Then discovery and opening
with many projects. Prints a Markdown table of operations per second and ratios.

    DEMIARCH_BENCH_DATABASE_URL=postgresql://postgres@127.0.0.1:5432/postgres \\
        python -m benchmarks.postgres [--tasks 64] [--ops 2000] [--projects 1000]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import time
from pathlib import Path
from typing import Any

import psycopg
import psycopg_pool

from demiarch_store import Store, StoreConfig
from demiarch_store.ids import new_record_id
from demiarch_store.postgres.ddl import schema_name

ADMIN = os.environ.get(
    "DEMIARCH_BENCH_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
)


def fresh_database() -> tuple[str, str]:
    name = f"demiarch_bench_{secrets.token_hex(3)}"
    with psycopg.connect(ADMIN, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    return name, ADMIN.rsplit("/", 1)[0] + "/" + name


def drop_database(name: str) -> None:
    with psycopg.connect(ADMIN, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


async def run_tasks(tasks: int, ops: int, one: Any) -> float:
    per = ops // tasks

    async def worker(w: int) -> None:
        for i in range(per):
            await one(w, i)

    t0 = time.perf_counter()
    await asyncio.gather(*(worker(w) for w in range(tasks)))
    return per * tasks / (time.perf_counter() - t0)


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tasks", type=int, default=64)
    parser.add_argument("--ops", type=int, default=2000)
    parser.add_argument("--projects", type=int, default=1000)
    args = parser.parse_args()
    name, url = fresh_database()
    results: dict[str, float] = {}
    try:
        config = StoreConfig(projects_dir=Path("/nonexistent"), database_url=url, pool_size=10)
        async with Store(config) as store:
            project = await store.create_project(name="bench")
            async with project.transaction() as tx:
                conv = await tx.conversations.create(title="bench")
            schema = schema_name(project.id)

            async def ours(w: int, i: int) -> None:
                async with project.transaction() as tx:
                    await tx.messages.append(conv.id, role="user", content=f"{w}-{i}")

            results["W1 demiarch-store"] = await run_tasks(args.tasks, args.ops, ours)
            async with project.read() as r:
                ids = [m.id for m in await r.messages.list(conv.id, limit=200)]

            async def ours_read(w: int, i: int) -> None:
                async with project.read() as r:
                    await r.messages.get(ids[(w + i) % len(ids)])

            results["W2 demiarch-store"] = await run_tasks(args.tasks, args.ops, ours_read)

        insert = (
            f'INSERT INTO "{schema}".messages (id, conversation_id, role, content, meta, '
            "created_at) VALUES (%s, %s, %s, %s, NULL, %s)"
        )
        async with psycopg_pool.AsyncConnectionPool(url, min_size=10, max_size=10) as pool:

            async def raw(w: int, i: int) -> None:
                async with pool.connection() as conn:
                    await conn.execute(insert, (new_record_id(), conv.id, "user", f"{w}-{i}", 0))

            results["W1 raw psycopg"] = await run_tasks(args.tasks, args.ops, raw)

            async def raw_read(w: int, i: int) -> None:
                async with pool.connection() as conn:
                    cur = await conn.execute(
                        f'SELECT * FROM "{schema}".messages WHERE id = %s', (ids[(w + i) % 200],)
                    )
                    await cur.fetchall()

            results["W2 raw psycopg"] = await run_tasks(args.tasks, args.ops, raw_read)

        from sqlalchemy import text
        from sqlalchemy.ext.asyncio import create_async_engine

        engine = create_async_engine(
            url.replace("postgresql://", "postgresql+psycopg://"), pool_size=10, max_overflow=0
        )
        stmt = text(
            f'INSERT INTO "{schema}".messages (id, conversation_id, role, content, meta, '
            "created_at) VALUES (:a, :b, :d, :e, NULL, :f)"
        )

        async def sqla(w: int, i: int) -> None:
            async with engine.begin() as conn:
                await conn.execute(
                    stmt,
                    {
                        "a": new_record_id(),
                        "b": conv.id,
                        "d": "user",
                        "e": f"{w}-{i}",
                        "f": 0,
                    },
                )

        results["W1 SQLAlchemy async"] = await run_tasks(args.tasks, args.ops, sqla)
        await engine.dispose()

        # Discovery and opening with many projects.
        async with Store(config) as store:
            t0 = time.perf_counter()
            for n in range(args.projects - 1):
                await store.create_project(name=f"p{n}")
            create_s = (time.perf_counter() - t0) / max(1, args.projects - 1)
        async with Store(config) as store:
            await store.list_projects()  # the pool's first connections
            t0 = time.perf_counter()
            infos = await store.list_projects()
            discovery = time.perf_counter() - t0
            t0 = time.perf_counter()
            for info in infos[:200]:
                await store.open_project(info.id)
            open_ms = (time.perf_counter() - t0) / min(200, len(infos)) * 1000
    finally:
        drop_database(name)
    print(f"| workload ({args.tasks} tasks) | ops/s | ratio |")
    print("| --- | ---: | ---: |")
    for key, value in results.items():
        base = results.get(key.split(" ")[0] + " demiarch-store", value)
        print(f"| {key} | {value:,.0f} | {base / value:.2f}x |")
    print(
        f"\n{len(infos)} projects: list_projects {discovery * 1000:.1f} ms, "
        f"open_project {open_ms:.2f} ms each, create_project {create_s * 1000:.1f} ms each"
    )


if __name__ == "__main__":
    asyncio.run(main())
