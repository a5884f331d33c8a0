"""How long ``Store.list_projects()`` takes over many projects (default 1,000).

Self-contained: builds the projects in a temporary directory (one real project, copied), then
times discovery cold and warm, and with some projects open in this process. Prints seconds.

    python benchmarks/discovery.py [--projects 1000] [--rounds 5]
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import sqlite3
import tempfile
import time
from pathlib import Path

from demiarch_store import Store, StoreConfig


async def build(root: Path, count: int) -> list[str]:
    """Create one project for real, then copy its closed file into ``count - 1`` more."""
    config = StoreConfig(projects_dir=root)
    async with Store(config) as store:
        first = await store.create_project(name="project 0")
        async with first.transaction() as tx:
            conv = await tx.conversations.create(title="hello")
            await tx.messages.append_many(conv.id, [{"role": "user", "content": "hi"}] * 50)
        template = first.path
    ids = [first.id]
    for n in range(1, count):
        project_id = f"{first.id}-{n:05d}"
        (root / project_id).mkdir(mode=0o700)
        dest = root / project_id / "database.sqlite"
        shutil.copyfile(template, dest)
        conn = sqlite3.connect(dest, isolation_level=None)
        conn.execute("UPDATE projects SET id = ?, name = ?", (project_id, f"project {n}"))
        conn.close()
        ids.append(project_id)
    return ids


async def measure(root: Path, rounds: int, open_count: int) -> list[float]:
    timings = []
    async with Store(StoreConfig(projects_dir=root, max_open_projects=max(1, open_count))) as s:
        for info in (await s.list_projects())[:open_count]:
            await s.open_project(info.id)
        for _ in range(rounds):
            start = time.perf_counter()
            infos = await s.list_projects()
            timings.append(time.perf_counter() - start)
            assert all(i.status == "ok" for i in infos), "a benchmark project is not ok"
    return timings


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--projects", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="demiarch-bench-") as tmp:
        root = Path(tmp) / "projects"
        start = time.perf_counter()
        await build(root, args.projects)
        print(f"built {args.projects} projects in {time.perf_counter() - start:.2f} s")
        for open_count in (0, 50):
            timings = await measure(root, args.rounds, open_count)
            print(
                f"list_projects over {args.projects} projects ({open_count} open in-process): "
                f"first {timings[0]:.3f} s, best {min(timings):.3f} s, "
                f"{min(timings) / args.projects * 1e3:.3f} ms per project"
            )


if __name__ == "__main__":
    asyncio.run(main())
