"""Many projects in one PostgreSQL database: creation, discovery, opening, a unit of work.

The issue's bar: 10,000 projects on one server, discovery (``list_projects``) under 1 s, opening
a project under 5 ms. Each project gets a few records, so its rows are spread through the
shared tables as in real use. Runs on a fresh database of its own, dropped at the end.

    python -m benchmarks.pg_projects [--projects 10000] [--out benchmarks/results/pg_projects.md]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import secrets
import statistics
import time
from datetime import UTC, datetime
from pathlib import Path
from tempfile import TemporaryDirectory

import psycopg

from demiarch_store import Store, StoreConfig

ADMIN_URL = os.environ.get(
    "DEMIARCH_BENCH_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
)


def _url(name: str) -> str:
    base = ADMIN_URL.rsplit("/", 1)[0]
    return f"{base}/{name}"


async def _fill(store: Store, n: int, tasks: int) -> float:
    """Create ``n`` projects (each with a conversation and 3 messages); return seconds each."""
    done = 0
    t0 = time.perf_counter()

    async def worker() -> None:
        nonlocal done
        while done < n:
            done += 1
            project = await store.create_project(name=f"project {done}")
            async with project.transaction() as tx:
                conv = await tx.conversations.create(title="hello")
                await tx.messages.append_many(
                    conv.id, [{"role": "user", "content": f"m{i}"} for i in range(3)]
                )

    await asyncio.gather(*(worker() for _ in range(tasks)))
    return (time.perf_counter() - t0) / n


async def measure(url: str, n: int, projects_dir: Path) -> dict[str, float]:
    config = StoreConfig(projects_dir=projects_dir, database_url=url, pool_size=10)
    async with Store(config) as store:
        create_s = await _fill(store, n, tasks=8)
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("VACUUM ANALYZE")
        size = conn.execute("SELECT pg_database_size(current_database())").fetchone()
        relations = conn.execute(
            "SELECT count(*) FROM pg_class c JOIN pg_namespace s ON s.oid = c.relnamespace "
            "WHERE s.nspname = 'demiarch'"
        ).fetchone()
    assert size is not None and relations is not None
    async with Store(config) as store:  # a new store: nothing cached
        t0 = time.perf_counter()
        infos = await store.list_projects()
        first_list = time.perf_counter() - t0
        lists = []
        for _ in range(5):
            t0 = time.perf_counter()
            infos = await store.list_projects()
            lists.append(time.perf_counter() - t0)
        assert len(infos) == n, len(infos)
        ids = random.Random(7).sample([i.id for i in infos], min(500, n))
        opens = []
        for pid in ids:
            t0 = time.perf_counter()
            project = await store.open_project(pid)
            opens.append(time.perf_counter() - t0)
            await project.close()
        units = []
        for pid in ids[:200]:
            project = await store.open_project(pid)
            t0 = time.perf_counter()
            async with project.transaction() as tx:
                conv = (await tx.conversations.list())[0]
                await tx.messages.append(conv.id, role="assistant", content="reply")
            units.append(time.perf_counter() - t0)
            await project.close()
    return {
        "projects": n,
        "create_ms": create_s * 1000,
        "list_first_ms": first_list * 1000,
        "list_ms": statistics.median(lists) * 1000,
        "open_ms": statistics.median(opens) * 1000,
        "open_p99_ms": sorted(opens)[int(len(opens) * 0.99) - 1] * 1000,
        "unit_ms": statistics.median(units) * 1000,
        "database_mb": size[0] / 1e6,
        "relations": relations[0],
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--projects", type=int, default=10_000)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/pg_projects.md"))
    args = parser.parse_args()
    name = f"demiarch_bench_{secrets.token_hex(3)}"
    with psycopg.connect(ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        with TemporaryDirectory() as scratch:
            r = asyncio.run(measure(_url(name), args.projects, Path(scratch)))
    finally:
        with psycopg.connect(ADMIN_URL, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    when = datetime.now(UTC).strftime("%Y-%m-%d")
    n = args.projects
    machine = f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}"
    table = "\n".join(
        [
            f"{r['projects']:,} projects in one PostgreSQL database ({when}, {machine}):",
            "",
            "| measure | result | bar |",
            "| --- | ---: | ---: |",
            f"| `list_projects` (discovery), median of 5 | {r['list_ms']:.0f} ms | < 1 s |",
            f"| `list_projects`, a new store's first | {r['list_first_ms']:.0f} ms | < 1 s |",
            f"| `open_project`, median of {min(500, n)} | {r['open_ms']:.2f} ms | < 5 ms |",
            f"| `open_project`, 99th percentile | {r['open_p99_ms']:.2f} ms | < 5 ms |",
            f"| a unit of work (list, then append a message), median of 200 "
            f"| {r['unit_ms']:.2f} ms | |",
            f"| `create_project` plus its first unit, each, 8 tasks | {r['create_ms']:.2f} ms | |",
            f"| database size | {r['database_mb']:.0f} MB | |",
            f"| tables and indexes in schema `demiarch` | {r['relations']:,} | |",
        ]
    )
    print(table)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(table + "\n")
    args.out.with_suffix(".json").write_text(json.dumps(r, indent=2) + "\n")


if __name__ == "__main__":
    main()
