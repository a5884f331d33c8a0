"""Figures besides throughput: opening a project at head, discovery, and 100 open projects."""

from __future__ import annotations

import gc
import os
import shutil
import statistics
import threading
import time
from pathlib import Path
from typing import Any

from demiarch_store import Store, StoreConfig, new_project_id
from demiarch_store.ids import DATABASE_NAME


def store_threads() -> int:
    """Return the number of live connection threads of demiarch-store in this process."""
    return sum(1 for t in threading.enumerate() if t.name.startswith("demiarch-"))


def rss_bytes() -> int:
    """Return this process's resident set size (Linux ``/proc``; 0 elsewhere)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


async def open_at_head(root: Path, repeats: int) -> tuple[dict[str, Any], Path]:
    """Time ``store.open_project(id)`` of a closed project already at head.

    Returns the figures and the project's (closed, checkpointed) database file, which the
    other measurements copy.
    """
    config = StoreConfig(projects_dir=root)
    times = []
    async with Store(config) as store:
        project = await store.create_project(name="open at head")
        async with project.transaction() as tx:
            await tx.conversations.create(title="first")
        pid, path = project.id, project.path
        await project.close()
        for _ in range(repeats):
            start = time.perf_counter()
            project = await store.open_project(pid)
            times.append(time.perf_counter() - start)
            await project.close()
    return {
        "open_at_head_ms": statistics.median(times) * 1000,
        "open_at_head_min_ms": min(times) * 1000,
        "repeats": repeats,
    }, path


def make_projects(root: Path, template: Path, count: int) -> list[str]:
    """Create ``count`` project directories holding a copy of ``template``."""
    root.mkdir(mode=0o700, parents=True, exist_ok=True)
    ids = []
    for _ in range(count):
        pid = new_project_id()
        os.mkdir(root / pid, 0o700)
        shutil.copyfile(template, root / pid / DATABASE_NAME)
        os.chmod(root / pid / DATABASE_NAME, 0o600)
        ids.append(pid)
    return ids


async def discovery(root: Path, count: int, repeats: int) -> dict[str, Any]:
    """Time ``store.list_projects()`` over ``count`` projects (with benchmarks/discovery.py)."""
    from .discovery import build, measure

    await build(root, count)
    timings = await measure(root, repeats, 0)
    return {
        "projects": count,
        "discovery_s": statistics.median(timings),
        "first_s": timings[0],
        "repeats": repeats,
    }


async def many_open(root: Path, template: Path, count: int) -> dict[str, Any]:
    """Open ``count`` projects, write and read in each; count threads and memory."""
    ids = make_projects(root, template, count)
    gc.collect()
    threads_before, rss_before = store_threads(), rss_bytes()
    config = StoreConfig(projects_dir=root, max_open_projects=max(count, 64))
    async with Store(config) as store:
        for pid in ids:
            project = await store.open_project(pid)
            async with project.transaction() as tx:
                conv = await tx.conversations.create(title="hello")
            async with project.read() as r:
                await r.conversations.get(conv.id)
        gc.collect()
        threads_open, rss_open = store_threads(), rss_bytes()
        connections = sum(p.pool.connections for p in store._open.values())
        still_open = len(store._open)
    gc.collect()
    threads_after = store_threads()
    return {
        "projects": count,
        "open_at_end": still_open,
        "connections": connections,
        "threads": threads_open - threads_before,
        "threads_per_project": (threads_open - threads_before) / count,
        "threads_left_after_close": threads_after - threads_before,
        "rss_mb": (rss_open - rss_before) / 2**20,
        "rss_kb_per_project": (rss_open - rss_before) / 1024 / count,
        "max_readers": config.max_readers,
    }
