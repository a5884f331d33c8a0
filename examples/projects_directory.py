"""The projects directory: discovery that survives damage, bundles, and the legacy import.

Run it with `python examples/projects_directory.py [WORKDIR]` (default: a fresh temporary
directory). docs/projects-directory.md shows its output.
"""

from __future__ import annotations

import asyncio
import sqlite3
import sys
import tempfile
from pathlib import Path

from demiarch_store import BundleError, CorruptDatabase, Store, StoreConfig
from demiarch_store.schema import to_micros, utcnow


def make_legacy_database(path: Path) -> None:
    """The old layout: one file, a projects table listing many, project_id everywhere else."""
    now = to_micros(utcnow())
    db = sqlite3.connect(path)
    db.executescript(
        """
        CREATE TABLE projects (id TEXT PRIMARY KEY, name TEXT NOT NULL, description TEXT,
            config TEXT, created_at INTEGER NOT NULL, updated_at INTEGER NOT NULL);
        CREATE TABLE conversations (id TEXT PRIMARY KEY, project_id TEXT NOT NULL,
            title TEXT, meta TEXT, created_at INTEGER NOT NULL, updated_at INTEGER NOT NULL);
        CREATE TABLE messages (id TEXT PRIMARY KEY, project_id TEXT NOT NULL,
            conversation_id TEXT NOT NULL, role TEXT NOT NULL, content TEXT NOT NULL,
            meta TEXT, created_at INTEGER NOT NULL);
        """
    )
    for pid, name in [("blog", "Blog engine"), ("chat", "Chat bot"), ("Old Stuff", "Old")]:
        db.execute("INSERT INTO projects VALUES (?, ?, NULL, NULL, ?, ?)", (pid, name, now, now))
        db.execute(
            "INSERT INTO conversations VALUES (?, ?, 'kickoff', NULL, ?, ?)",
            (f"{pid}-c1", pid, now, now),
        )
        for n in range(3):
            db.execute(
                "INSERT INTO messages VALUES (?, ?, ?, 'user', ?, NULL, ?)",
                (f"{pid}-m{n}", pid, f"{pid}-c1", f"message {n}", now + n),
            )
    db.commit()
    db.close()


def zero_header(path: Path) -> None:
    """Damage a database the way a bad copy or a crash might: zero its 100-byte header."""
    with open(path, "r+b") as f:
        f.write(b"\0" * 100)


async def main(work: Path) -> None:
    config = StoreConfig(projects_dir=work / "projects")
    async with Store(config) as store:
        # -- discovery, with a damaged project and a stray file among the projects -----------
        app = await store.create_project(name="todo app", project_id="todo-app")
        async with app.transaction() as tx:
            conv = await tx.conversations.create(title="planning")
            await tx.messages.append(conv.id, role="user", content="hello")
        broken = await store.create_project(name="will break", project_id="broken")
        await broken.close()
        zero_header(broken.path)
        (config.projects_dir / "notes.txt").write_text("a stray file")
        lost = await store.create_project(name="lost", project_id="empty-one")
        await lost.close()
        lost.path.unlink()  # a project whose database went missing: listed as empty
        (config.projects_dir / "photos").mkdir()  # no database, no marker: not a project

        for info in await store.list_projects():
            print(f"{info.id:9} {info.status:8} {info.name!s:9} {info.error or ''}".rstrip())
        try:
            await store.open_project("broken")
        except CorruptDatabase as exc:
            print(f"CorruptDatabase: {exc}")

        # -- export and import ------------------------------------------------------------------
        bundle = await store.export_project("todo-app", work)
        print(f"\nexported {bundle.name}")
        copy = await store.import_project(bundle, project_id="todo-copy")
        async with copy.read() as r:
            record = await r.projects.get(copy.id)
            titles = [c.title for c in await r.conversations.list()]
        print(f"imported {copy.id}: {record.name!r}, conversations {titles}")
        damaged = work / "damaged.demiarch.zip"
        damaged.write_bytes(bundle.read_bytes()[:-200])  # cut short in transit
        try:
            await store.import_project(damaged, project_id="never")
        except BundleError as exc:
            print(f"BundleError: {exc}")

        # -- the legacy import ------------------------------------------------------------------
        legacy = work / "ralph.db"
        make_legacy_database(legacy)
        report = await store.import_legacy(legacy)
        print(f"\nimported {report.imported}")
        print(f"rows {report.rows['blog']}")
        print(f"skipped {report.skipped}")
        again = await store.import_legacy(legacy)
        print(f"second run: imported {again.imported}, skipped {sorted(again.skipped)}")
        print([(i.id, i.status) for i in await store.list_projects()])


if __name__ == "__main__":
    if len(sys.argv) > 1:
        asyncio.run(main(Path(sys.argv[1])))
    else:
        with tempfile.TemporaryDirectory() as tmp:
            asyncio.run(main(Path(tmp)))
