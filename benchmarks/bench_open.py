"""Open and create costs: the fast paths against Alembic. Run by hand, never as a test.

    python benchmarks/bench_open.py

Prints the median time to create a project (schema from the metadata, no Alembic), to open a
project already at head (one query), and to migrate a database from revision 0001 (Alembic),
each in a fresh process so that import costs count.
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

RUNS = 5

CREATE = """
import asyncio, sys, time
from demiarch_store import Store, StoreConfig
async def main():
    t = time.perf_counter()
    async with Store(StoreConfig(projects_dir=sys.argv[1])) as store:
        project = await store.create_project(name="bench")
    print(time.perf_counter() - t, project.id)
asyncio.run(main())
"""

OPEN = """
import asyncio, sys, time
from demiarch_store import Store, StoreConfig
async def main():
    t = time.perf_counter()
    async with Store(StoreConfig(projects_dir=sys.argv[1])) as store:
        await store.open_project(sys.argv[2])
    print(time.perf_counter() - t, "alembic" in sys.modules)
asyncio.run(main())
"""

DOWNGRADE = """
import sys
from pathlib import Path
from demiarch_store.migrate import run_migrations
run_migrations(Path(sys.argv[1]), project=None, target="0001")
"""


def run(code: str, *args: str) -> list[str]:
    out = subprocess.run(
        [sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=120
    )
    out.check_returncode()
    return out.stdout.split()


def main() -> None:
    created, opened, migrated = [], [], []
    with tempfile.TemporaryDirectory() as tmp:
        projects = str(Path(tmp) / "projects")
        for _ in range(RUNS):
            seconds, project_id = run(CREATE, projects)
            created.append(float(seconds))
            seconds, alembic = run(OPEN, projects, project_id)
            assert alembic == "False"
            opened.append(float(seconds))
            database = Path(projects) / project_id / "database.sqlite"
            run(DOWNGRADE, str(database))
            seconds, alembic = run(OPEN, projects, project_id)
            assert alembic == "True"
            migrated.append(float(seconds))
    for name, values in [
        ("create project (fast path)", created),
        ("open at head", opened),
        ("open at 0001 (Alembic upgrade)", migrated),
    ]:
        print(f"{name:32} median {statistics.median(values) * 1000:7.1f} ms")


if __name__ == "__main__":
    main()
