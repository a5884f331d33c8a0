"""DemiarchSaver against LangGraph's AsyncSqliteSaver (WAL), in one run on one machine.

    python -m benchmarks.langgraph            # full run (`make bench`), a few minutes
    python -m benchmarks.langgraph --quick    # smoke run, seconds (`make bench-quick`)

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

from demiarch_store import AsyncProjectStore
from demiarch_store.integrations.langgraph import DemiarchSaver

RESULTS = Path(__file__).resolve().parent / "results"
TARGETS = {("superstep", "small", 1): 3.0, ("superstep", "small", 64): 10.0, ("alist", "", 0): 5.0}

Factory = Callable[[Path], Any]


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


SAVERS: dict[str, Callable[[Path], Any]] = {"demiarch": demiarch, "AsyncSqliteSaver": sqlite_saver}


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
    name: str, path: Path, state: str, threads: int, duration: float
) -> dict[str, Any]:
    async with SAVERS[name](path) as saver:
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
    size = sum(p.stat().st_size for p in path.parent.glob(path.name + "*"))
    return {"ops": done, "seconds": elapsed, "per_s": done / elapsed, "file_bytes": size}


async def run_alist(root: Path, checkpoints: int, repeats: int) -> dict[str, dict[str, Any]]:
    """Time listing a thread of ``checkpoints`` on both savers, open side by side, in turns."""
    times: dict[str, list[float]] = {name: [] for name in SAVERS}
    async with AsyncExitStack() as stack:
        savers = {}
        for name, factory in SAVERS.items():
            path = root / f"alist-{name}" / "cp.sqlite"
            path.parent.mkdir()
            savers[name] = saver = await stack.enter_async_context(factory(path))
            thread = Thread("long", "small")
            for _ in range(checkpoints):
                await superstep(saver, thread)
        config: Any = {"configurable": {"thread_id": "long"}}
        for r in range(repeats):
            for name in list(SAVERS)[:: 1 if r % 2 == 0 else -1]:
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
    try:
        n = 0
        for state in ("small", "realistic"):
            for threads in args.concurrency:
                row: dict[str, Any] = {"workload": "superstep", "state": state, "threads": threads}
                runs: dict[str, list[dict[str, Any]]] = {name: [] for name in SAVERS}
                for r in range(args.repeats):
                    # Back to back, in turns: a load that comes and goes hits both alike.
                    for name in list(SAVERS)[:: 1 if r % 2 == 0 else -1]:
                        n += 1
                        path = root / f"{n}" / "cp.sqlite"
                        path.parent.mkdir()
                        result = await run_supersteps(name, path, state, threads, args.duration)
                        runs[name].append(result)
                for name, done in runs.items():
                    done.sort(key=lambda x: x["per_s"])
                    row[name] = done[len(done) // 2]
                cells.append(row)
                _print(row)
        row = {"workload": "alist", "state": "", "threads": 0, "checkpoints": args.checkpoints}
        row.update(await run_alist(root, args.checkpoints, max(args.repeats, 7)))
        cells.append(row)
        _print(row)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    for row in cells:
        row["ratio"] = row["demiarch"]["per_s"] / row["AsyncSqliteSaver"]["per_s"]
        row["target"] = TARGETS.get((row["workload"], row["state"], row["threads"]))
    doc = {
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {
            "python": platform.python_version(),
            "cpus": _cpus(),
            "platform": platform.platform(),
        },
        "settings": {k: v for k, v in vars(args).items() if k != "out"},
        "cells": cells,
    }
    return doc


def write(doc: dict[str, Any], out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "langgraph.json").write_text(json.dumps(doc, indent=2) + "\n")
    (out / "langgraph.md").write_text(table(doc["cells"]) + "\n")
    print()
    print(table(doc["cells"]))


def table(cells: list[dict[str, Any]]) -> str:
    lines = [
        "| workload | state | threads | DemiarchSaver | AsyncSqliteSaver (WAL) | ratio | target |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for c in cells:
        unit = "supersteps/s" if c["workload"] == "superstep" else "checkpoints/s"
        label = "superstep" if c["workload"] == "superstep" else f"alist of {c['checkpoints']:,}"
        target = f"{c['target']:g}x" if c.get("target") else ""
        lines.append(
            f"| {label} | {c['state'] or '-'} | {c['threads'] or '-'} | "
            f"{c['demiarch']['per_s']:,.0f} {unit} | {c['AsyncSqliteSaver']['per_s']:,.0f} | "
            f"**{c['ratio']:.1f}x** | {target} |"
        )
    return "\n".join(lines)


def _print(row: dict[str, Any]) -> None:
    ours, theirs = row["demiarch"]["per_s"], row["AsyncSqliteSaver"]["per_s"]
    what = f"{row['workload']} {row['state']} x{row['threads']}".strip()
    print(
        f"{what:28s} demiarch {ours:9,.0f}/s  sqlite {theirs:9,.0f}/s  {ours / theirs:5.1f}x",
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
    parser.add_argument("--checkpoints", type=int, help="checkpoints in the alist thread")
    parser.add_argument("--workdir", help="where the temporary databases go")
    parser.add_argument("--out", help="results directory")
    args = parser.parse_args(argv)
    quick = args.quick
    args.duration = args.duration or (0.3 if quick else 3.0)
    args.repeats = args.repeats or (1 if quick else 3)
    args.concurrency = [int(c) for c in (args.concurrency or "1,8,64").split(",")]
    args.checkpoints = args.checkpoints or (100 if quick else 1000)
    args.out = args.out or str(RESULTS / "quick" if quick else RESULTS)
    write(asyncio.run(main_async(args)), Path(args.out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
