"""DemiarchSaver against LangGraph's own savers, in one run on one machine: AsyncSqliteSaver (WAL)
on SQLite, AsyncPostgresSaver on PostgreSQL (``--engine postgresql``).

    python -m benchmarks.langgraph            # full run (`make bench`), a few minutes
    python -m benchmarks.langgraph --quick    # smoke run, seconds (`make bench-quick`)
    python -m benchmarks.langgraph --engine postgresql [--database-url URL]

Superstep: what a LangGraph step asks of its checkpointer, ``aput`` (the new checkpoint and the
values of the channels that changed) + ``aput_writes`` (two task writes) + ``aget_tuple`` (the
thread's latest checkpoint), by 1, 8 and 64 concurrent LangGraph threads, each on its own thread
ID, with a small state (a counter and a short message list) and a realistic one (a messages
channel of 50 messages, about 20 KB, that grows by one message each step, plus an unchanged
10 KB document channel). ``alist``: listing a thread of 1,000 checkpoints, each with two writes.

Both savers get a fresh file per cell. AsyncSqliteSaver runs in WAL mode (its ``setup()``) with
``synchronous=NORMAL``, the same durability as demiarch-store's default, so the comparison is
like for like. The median of ``repeats`` runs is reported (of at least 7 for ``alist``), the
two savers run back to back in turns; ratios are ours / theirs.

On PostgreSQL (``--engine postgresql``, 1 and 64 threads by default) each saver gets a fresh
database per cell on the same server (``--database-url``, an account that may create
databases; default ``DEMIARCH_BENCH_DATABASE_URL`` or the local server), created and dropped
by the run. AsyncPostgresSaver gets a psycopg pool as large as demiarch-store's
(``StoreConfig.pool_size``), with the connection settings its ``from_conn_string`` uses;
DemiarchSaver runs on a project of a ``Store`` with that ``database_url``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from langgraph.checkpoint.base import BaseCheckpointSaver, Checkpoint
from langgraph.checkpoint.base.id import uuid6
from langgraph.checkpoint.sqlite.aio import AsyncSqliteSaver

from demiarch_store import AsyncProjectStore, Store, StoreConfig
from demiarch_store.integrations.langgraph import DemiarchSaver

RESULTS = Path(__file__).resolve().parent / "results"
TARGETS = {("superstep", "small", 1): 3.0, ("superstep", "small", 64): 10.0, ("alist", "", 0): 5.0}
PG_TARGETS = {("superstep", "small", 64): 3.0, ("superstep", "realistic", 64): 3.0}
PG_ADMIN_URL = os.environ.get(
    "DEMIARCH_BENCH_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
)

Factory = Callable[[Any], Any]


@asynccontextmanager
async def demiarch(path: Path) -> AsyncIterator[BaseCheckpointSaver[Any]]:
    async with AsyncProjectStore(path) as project:
        yield DemiarchSaver(project)


@asynccontextmanager
async def sqlite_saver(path: Path) -> AsyncIterator[BaseCheckpointSaver[Any]]:
    async with AsyncSqliteSaver.from_conn_string(str(path)) as saver:
        await saver.setup()  # WAL
        await saver.conn.execute("PRAGMA synchronous=NORMAL")
        yield saver


@asynccontextmanager
async def demiarch_pg(url: str) -> AsyncIterator[BaseCheckpointSaver[Any]]:
    config = StoreConfig(projects_dir=Path(tempfile.gettempdir()), database_url=url)
    async with Store(config) as store:
        yield DemiarchSaver(await store.create_project(name="bench"))


@asynccontextmanager
async def postgres_saver(url: str) -> AsyncIterator[BaseCheckpointSaver[Any]]:
    from langgraph.checkpoint.postgres.aio import AsyncPostgresSaver
    from psycopg.rows import dict_row
    from psycopg_pool import AsyncConnectionPool

    size = StoreConfig(database_url=url).pool_size  # as many connections as ours
    kwargs = {"autocommit": True, "prepare_threshold": 0, "row_factory": dict_row}
    async with AsyncConnectionPool(
        url, min_size=size, max_size=size, kwargs=kwargs, open=False
    ) as pool:
        saver = AsyncPostgresSaver(pool)  # type: ignore[arg-type]
        await saver.setup()
        yield saver


SAVERS: dict[str, Factory] = {"demiarch": demiarch, "AsyncSqliteSaver": sqlite_saver}
PG_SAVERS: dict[str, Factory] = {"demiarch": demiarch_pg, "AsyncPostgresSaver": postgres_saver}


class Sites:
    """Where each saver's data goes: a fresh file, or a fresh PostgreSQL database (dropped when
    the cell ends), and how many bytes it came to."""

    def __init__(self, root: Path, admin_url: str | None) -> None:
        self.root = root
        self.admin_url = admin_url
        self.n = 0

    @asynccontextmanager
    async def fresh(self, name: str) -> AsyncIterator[Any]:
        self.n += 1
        if self.admin_url is None:
            path = self.root / f"{self.n}-{name}" / "cp.sqlite"
            path.parent.mkdir()
            yield path
            return
        import psycopg
        from psycopg.conninfo import conninfo_to_dict

        db = f"lgbench_{os.getpid()}_{self.n}"
        async with await psycopg.AsyncConnection.connect(self.admin_url, autocommit=True) as c:
            await c.execute(f'CREATE DATABASE "{db}"')
        params = conninfo_to_dict(self.admin_url)
        params["dbname"] = db
        host, port = params.get("host", "127.0.0.1"), params.get("port", 5432)
        password = f":{params['password']}" if params.get("password") else ""
        url = f"postgresql://{params.get('user', '')}{password}@{host}:{port}/{db}"
        try:
            yield url
        finally:
            async with await psycopg.AsyncConnection.connect(
                self.admin_url, autocommit=True
            ) as c:
                await c.execute(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')

    async def size(self, where: Any) -> int:
        if isinstance(where, Path):
            return sum(p.stat().st_size for p in where.parent.glob(where.name + "*"))
        import psycopg

        async with await psycopg.AsyncConnection.connect(where, autocommit=True) as c:
            cur = await c.execute("SELECT pg_database_size(current_database())")
            row = await cur.fetchone()
            return int(row[0]) if row else 0


def message(i: int) -> dict[str, Any]:
    text = f"message {i}: " + "lorem ipsum dolor sit amet " * 14  # ~400 bytes
    return {"type": "human" if i % 2 else "ai", "id": f"m-{i}", "content": text}


class Thread:
    """One LangGraph thread's checkpoints, built as LangGraph builds them."""

    def __init__(self, thread_id: str, state: str) -> None:
        self.config: dict[str, Any] = {
            "configurable": {"thread_id": thread_id, "checkpoint_ns": ""}
        }
        self.step = -1
        self.versions: dict[str, Any] = {}
        if state == "small":
            self.values: dict[str, Any] = {"counter": 0, "messages": ["hi"]}
        else:
            self.values = {
                "counter": 0,
                "messages": [message(i) for i in range(50)],
                "docs": {"text": "background document " * 500},  # ~10 KB, never changes
            }
        self.grow = state != "small"

    def next(
        self, saver: BaseCheckpointSaver[Any]
    ) -> tuple[Checkpoint, dict[str, Any], dict[str, Any]]:
        self.step += 1
        changed = ["counter", "messages"] if self.step else list(self.values)
        self.values["counter"] += 1
        if self.grow and self.step:
            self.values["messages"] = [*self.values["messages"][1:], message(50 + self.step)]
        for ch in changed:
            self.versions[ch] = saver.get_next_version(self.versions.get(ch), None)
        checkpoint: Checkpoint = {
            "v": 4,
            "id": str(uuid6(clock_seq=self.step)),
            "ts": datetime.now(UTC).isoformat(),
            "channel_values": dict(self.values),
            "channel_versions": dict(self.versions),
            "versions_seen": {"agent": {ch: self.versions[ch] for ch in changed}},
            "updated_channels": changed,
        }
        metadata = {"source": "loop", "step": self.step, "parents": {}}
        return checkpoint, metadata, {ch: self.versions[ch] for ch in changed}


async def superstep(saver: BaseCheckpointSaver[Any], thread: Thread) -> None:
    checkpoint, metadata, new = thread.next(saver)
    thread.config = await saver.aput(thread.config, checkpoint, metadata, new)  # type: ignore[arg-type]
    writes = [("messages", {"role": "ai", "content": "ok"}), ("counter", thread.step)]
    await saver.aput_writes(thread.config, writes, task_id=f"task-{thread.step}")  # type: ignore[arg-type]
    latest = await saver.aget_tuple(
        {"configurable": {"thread_id": thread.config["configurable"]["thread_id"]}}
    )
    assert latest is not None and latest.checkpoint["id"] == checkpoint["id"]


async def run_supersteps(
    factory: Factory, sites: Sites, where: Any, state: str, threads: int, duration: float
) -> dict[str, Any]:
    async with factory(where) as saver:
        ts = [Thread(f"t{i}", state) for i in range(threads)]
        for t in ts:  # the first checkpoint (every channel) is not part of the measurement
            await superstep(saver, t)
        done = 0
        stop = time.perf_counter() + duration
        start = time.perf_counter()

        async def loop(t: Thread) -> None:
            nonlocal done
            while time.perf_counter() < stop:
                await superstep(saver, t)
                done += 1

        await asyncio.gather(*(loop(t) for t in ts))
        elapsed = time.perf_counter() - start
    size = await sites.size(where)
    return {"ops": done, "seconds": elapsed, "per_s": done / elapsed, "file_bytes": size}


async def run_alist(
    factories: dict[str, Factory], sites: Sites, checkpoints: int, repeats: int
) -> dict[str, dict[str, Any]]:
    """Time listing a thread of ``checkpoints`` on both savers, open side by side, in turns."""
    times: dict[str, list[float]] = {name: [] for name in factories}
    async with AsyncExitStack() as stack:
        savers = {}
        for name, factory in factories.items():
            where = await stack.enter_async_context(sites.fresh(f"alist-{name}"))
            savers[name] = saver = await stack.enter_async_context(factory(where))
            thread = Thread("long", "small")
            for _ in range(checkpoints):
                await superstep(saver, thread)
        config: Any = {"configurable": {"thread_id": "long"}}
        for r in range(repeats):
            for name in list(factories)[:: 1 if r % 2 == 0 else -1]:
                start = time.perf_counter()
                listed = [t async for t in savers[name].alist(config)]
                times[name].append(time.perf_counter() - start)
                assert len(listed) == checkpoints
                assert all(len(t.pending_writes or []) == 2 for t in listed)
    out = {}
    for name, runs in times.items():
        best = statistics.median(runs)
        out[name] = {"ops": checkpoints, "seconds": best, "per_s": checkpoints / best}
    return out


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    root = Path(tempfile.mkdtemp(prefix="lg-bench-", dir=args.workdir))
    cells: list[dict[str, Any]] = []
    pg = args.engine == "postgresql"
    factories = PG_SAVERS if pg else SAVERS
    baseline = list(factories)[1]
    sites = Sites(root, args.database_url if pg else None)
    try:
        for state in ("small", "realistic"):
            for threads in args.concurrency:
                row: dict[str, Any] = {"workload": "superstep", "state": state, "threads": threads}
                runs: dict[str, list[dict[str, Any]]] = {name: [] for name in factories}
                for r in range(args.repeats):
                    # Back to back, in turns: a load that comes and goes hits both alike.
                    for name in list(factories)[:: 1 if r % 2 == 0 else -1]:
                        async with sites.fresh(name) as where:
                            result = await run_supersteps(
                                factories[name], sites, where, state, threads, args.duration
                            )
                        runs[name].append(result)
                for name, done in runs.items():
                    done.sort(key=lambda x: x["per_s"])
                    row[name] = done[len(done) // 2]
                cells.append(row)
                _print(row, baseline)
        row = {"workload": "alist", "state": "", "threads": 0, "checkpoints": args.checkpoints}
        row.update(await run_alist(factories, sites, args.checkpoints, max(args.repeats, 7)))
        cells.append(row)
        _print(row, baseline)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    for row in cells:
        row["ratio"] = row["demiarch"]["per_s"] / row[baseline]["per_s"]
        row["target"] = (PG_TARGETS if pg else TARGETS).get(
            (row["workload"], row["state"], row["threads"])
        )
    doc = {
        "engine": args.engine,
        "baseline": baseline,
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {
            "python": platform.python_version(),
            "cpus": _cpus(),
            "platform": platform.platform(),
            "load_average_at_end": [round(x, 2) for x in os.getloadavg()],
        },
        "settings": {k: v for k, v in vars(args).items() if k not in ("out", "database_url")},
        "cells": cells,
    }
    return doc


def write(doc: dict[str, Any], out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    stem = "langgraph_postgres" if doc["engine"] == "postgresql" else "langgraph"
    (out / f"{stem}.json").write_text(json.dumps(doc, indent=2) + "\n")
    (out / f"{stem}.md").write_text(table(doc["cells"], doc["baseline"]) + "\n")
    print()
    print(table(doc["cells"], doc["baseline"]))


def table(cells: list[dict[str, Any]], baseline: str = "AsyncSqliteSaver") -> str:
    label = "AsyncSqliteSaver (WAL)" if baseline == "AsyncSqliteSaver" else baseline
    lines = [
        f"| workload | state | threads | DemiarchSaver | {label} | ratio | target |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for c in cells:
        unit = "supersteps/s" if c["workload"] == "superstep" else "checkpoints/s"
        label = "superstep" if c["workload"] == "superstep" else f"alist of {c['checkpoints']:,}"
        target = f"{c['target']:g}x" if c.get("target") else ""
        lines.append(
            f"| {label} | {c['state'] or '-'} | {c['threads'] or '-'} | "
            f"{c['demiarch']['per_s']:,.0f} {unit} | {c[baseline]['per_s']:,.0f} | "
            f"**{c['ratio']:.1f}x** | {target} |"
        )
    return "\n".join(lines)


def _print(row: dict[str, Any], baseline: str) -> None:
    ours, theirs = row["demiarch"]["per_s"], row[baseline]["per_s"]
    what = f"{row['workload']} {row['state']} x{row['threads']}".strip()
    print(
        f"{what:28s} demiarch {ours:9,.0f}/s  {baseline} {theirs:9,.0f}/s  "
        f"{ours / theirs:5.1f}x",
        flush=True,
    )


def _cpus() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smoke run: short, one repeat")
    parser.add_argument("--duration", type=float, help="seconds per superstep cell")
    parser.add_argument("--repeats", type=int, help="runs per cell (the median is kept)")
    parser.add_argument("--concurrency", help="comma-separated thread counts (default 1,8,64)")
    parser.add_argument("--engine", choices=("sqlite", "postgresql"), default="sqlite")
    parser.add_argument(
        "--database-url", default=PG_ADMIN_URL, help="the PostgreSQL server (--engine postgresql)"
    )
    parser.add_argument("--checkpoints", type=int, help="checkpoints in the alist thread")
    parser.add_argument("--workdir", help="where the temporary databases go")
    parser.add_argument("--out", help="results directory")
    args = parser.parse_args(argv)
    quick = args.quick
    args.duration = args.duration or (0.3 if quick else 3.0)
    args.repeats = args.repeats or (1 if quick else 3)
    default = "1,64" if args.engine == "postgresql" else "1,8,64"
    args.concurrency = [int(c) for c in (args.concurrency or default).split(",")]
    args.checkpoints = args.checkpoints or (100 if quick else 1000)
    args.out = args.out or str(RESULTS / "quick" if quick else RESULTS)
    write(asyncio.run(main_async(args)), Path(args.out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
