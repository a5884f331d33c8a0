"""Legacy import: one global database of many projects becomes one database per project."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from demiarch_store import Store, StoreConfig
from demiarch_store.schema import to_micros, utcnow

pytestmark = pytest.mark.anyio

NOW = to_micros(utcnow())


def build_legacy(path: Path, *, messages_have_project_id: bool = True, wal: bool = False) -> None:
    """The old layout: a projects table listing many projects, project_id on other tables."""
    conn = sqlite3.connect(path, isolation_level=None)
    if wal:
        conn.execute("PRAGMA journal_mode = WAL")
    message_project = "project_id TEXT NOT NULL," if messages_have_project_id else ""
    conn.executescript(
        f"""
        CREATE TABLE projects (id TEXT PRIMARY KEY, name TEXT NOT NULL, description TEXT,
            config TEXT, created_at INTEGER NOT NULL, updated_at INTEGER NOT NULL,
            database_path TEXT);
        CREATE TABLE conversations (id TEXT PRIMARY KEY, project_id TEXT NOT NULL, title TEXT,
            meta TEXT, created_at INTEGER NOT NULL, updated_at INTEGER NOT NULL);
        CREATE TABLE messages (id TEXT PRIMARY KEY, {message_project}
            conversation_id TEXT NOT NULL, role TEXT NOT NULL, content TEXT NOT NULL,
            meta TEXT, created_at INTEGER NOT NULL);
        CREATE TABLE global_settings (key TEXT PRIMARY KEY, value TEXT);
        """
    )
    projects = [
        ("alpha", "Alpha", '{"model": "gpt-x"}'),
        ("beta", "Beta", None),
        ("Gamma Project", "Gamma", None),  # not a valid ID
        ("delta", "Delta", None),  # one of its messages points at alpha's conversation
    ]
    for pid, name, config in projects:
        conn.execute(
            "INSERT INTO projects VALUES (?, ?, NULL, ?, ?, ?, '/old/path')",
            (pid, name, config, NOW, NOW),
        )
    n = 0
    for pid, _, _ in projects:
        for c in range(2):
            conv = f"{pid[:5].lower()}-conv-{c}"
            conn.execute(
                "INSERT INTO conversations VALUES (?, ?, ?, NULL, ?, ?)",
                (conv, pid, f"{pid} conversation {c}", NOW, NOW),
            )
            for m in range(3):
                n += 1
                target = "alpha-conv-0" if pid == "delta" and c == 1 and m == 2 else conv
                values = (f"msg-{n:04d}", target, "user", f"{pid} {c} {m}", None, NOW + n)
                if messages_have_project_id:
                    values = (values[0], pid, *values[1:])
                conn.execute(
                    f"INSERT INTO messages VALUES ({', '.join('?' * len(values))})", values
                )
    conn.execute("INSERT INTO global_settings VALUES ('theme', 'dark')")
    conn.close()


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _source_files(directory: Path) -> dict[str, str]:
    """legacy.db and its -wal by content; the -shm is shared memory every reader writes."""
    names = [n for n in os.listdir(directory) if n.startswith("legacy.db")]
    return {n: _digest(directory / n) for n in names if not n.endswith("-shm")}


async def test_split_into_projects_idempotently_without_touching_the_source(
    tmp_path: Path, config: StoreConfig
) -> None:
    source = tmp_path / "legacy" / "ralph.db"
    source.parent.mkdir()
    build_legacy(source)
    digest, listing = _digest(source), sorted(os.listdir(source.parent))

    async with Store(config) as store:
        report = await store.import_legacy(source)
        assert report.imported == ["alpha", "beta"]
        assert set(report.skipped) == {"Gamma Project", "delta"}
        assert "not a valid project ID" in report.skipped["Gamma Project"]
        assert "FOREIGN KEY" in report.skipped["delta"]
        assert report.rows["alpha"] == {"projects": 1, "conversations": 2, "messages": 6}
        assert any("database_path" in note for note in report.notes)
        assert any("global_settings" in note for note in report.notes)

        infos = {i.id: (i.status, i.name) for i in await store.list_projects()}
        assert infos == {"alpha": ("ok", "Alpha"), "beta": ("ok", "Beta")}
        alpha = await store.open_project("alpha")
        async with alpha.read() as r:
            record = await r.projects.get("alpha")
            assert record.config == {"model": "gpt-x"}
            convs = await r.conversations.list()
            assert [c.title for c in convs] == ["alpha conversation 0", "alpha conversation 1"]
            messages = await r.messages.list("alpha-conv-1")
            assert [m.content for m in messages] == ["alpha 1 0", "alpha 1 1", "alpha 1 2"]

        again = await store.import_legacy(source)
        assert again.imported == [] and again.rows == {}
        assert "already exists" in again.skipped["alpha"]
        assert "already exists" in again.skipped["beta"]
        async with alpha.read() as r:
            assert await r.messages.count() == 6  # nothing imported twice

    assert _digest(source) == digest
    assert sorted(os.listdir(source.parent)) == listing  # no -wal, -shm or journal appeared
    assert sorted(os.listdir(config.projects_dir)) == ["alpha", "beta"]  # no staging left


async def test_rows_without_project_id_follow_their_foreign_key(
    tmp_path: Path, config: StoreConfig
) -> None:
    source = tmp_path / "legacy.db"
    build_legacy(source, messages_have_project_id=False)
    async with Store(config) as store:
        report = await store.import_legacy(source)
        # Without project_id a message belongs where its conversation is: delta's stray
        # message (pointing at alpha's conversation) goes with alpha.
        assert report.imported == ["alpha", "beta", "delta"]
        assert report.rows["delta"]["messages"] == 5
        assert report.rows["alpha"]["messages"] == 7


async def test_a_wal_source_left_by_a_live_process_is_read_but_not_written(
    tmp_path: Path, config: StoreConfig
) -> None:
    source = tmp_path / "legacy.db"
    build_legacy(source, wal=True)
    holder = sqlite3.connect(source, isolation_level=None)  # keeps -wal and -shm in place
    try:
        holder.execute("UPDATE projects SET name = 'Beta (renamed)' WHERE id = 'beta'")
        files = _source_files(tmp_path)
        async with Store(config) as store:
            report = await store.import_legacy(source)
            assert report.imported == ["alpha", "beta"]
            names = {i.id: i.name for i in await store.list_projects()}
            assert names["beta"] == "Beta (renamed)"  # read through the -wal
        after = _source_files(tmp_path)
        assert after == files and set(after) == {"legacy.db", "legacy.db-wal"}
    finally:
        holder.close()


async def test_not_a_legacy_database_is_refused(tmp_path: Path, config: StoreConfig) -> None:
    from demiarch_store import CorruptDatabase, StorageError, StoreError

    (tmp_path / "garbage.db").write_bytes(b"\x01" * 4096)
    empty = tmp_path / "empty.db"
    sqlite3.connect(empty).execute("CREATE TABLE t (x)").connection.close()
    async with Store(config) as store:
        with pytest.raises(CorruptDatabase, match="garbage.db"):
            await store.import_legacy(tmp_path / "garbage.db")
        with pytest.raises(StoreError, match="no projects table"):
            await store.import_legacy(empty)
        with pytest.raises(StorageError, match="no legacy database"):
            await store.import_legacy(tmp_path / "missing.db")
        orphan = tmp_path / "orphan.db"
        build_legacy(orphan)
        (tmp_path / "orphan.db-wal").write_bytes(b"\x01" * 64)
        with pytest.raises(StorageError, match="no -shm"):
            await store.import_legacy(orphan)
        assert not (tmp_path / "orphan.db-shm").exists()


def test_two_processes_importing_at_once_import_each_project_once(tmp_path: Path) -> None:
    source = tmp_path / "legacy.db"
    build_legacy(source)
    code = (
        "import asyncio, json, sys\n"
        "from pathlib import Path\n"
        "from demiarch_store import Store, StoreConfig\n"
        "async def main():\n"
        "    async with Store(StoreConfig(projects_dir=Path(sys.argv[1]))) as store:\n"
        "        report = await store.import_legacy(sys.argv[2])\n"
        "    print(json.dumps(report.imported))\n"
        "asyncio.run(main())\n"
    )
    args = [sys.executable, "-c", code, str(tmp_path / "projects"), str(source)]
    procs = [subprocess.Popen(args, stdout=subprocess.PIPE, text=True) for _ in range(2)]
    imported: list[str] = []
    for proc in procs:
        out, _ = proc.communicate(timeout=120)
        assert proc.returncode == 0
        imported += json.loads(out)
    assert sorted(imported) == ["alpha", "beta"]  # each exactly once, whoever won it

    async def count() -> int:
        async with Store(StoreConfig(projects_dir=tmp_path / "projects")) as store:
            beta = await store.open_project("beta")
            async with beta.read() as r:
                return await r.messages.count()

    assert asyncio.run(count()) == 6


async def test_a_projects_directory_that_cannot_be_made_raises_storage_error(
    tmp_path: Path,
) -> None:
    from demiarch_store import StorageError

    source = tmp_path / "ralph.db"
    build_legacy(source)
    before = _digest(source)
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    async with Store(StoreConfig(projects_dir=blocker / "projects")) as store:
        with pytest.raises(StorageError) as info:
            await store.import_legacy(source)
        assert info.value.path == blocker / "projects" and info.value.hint
        assert isinstance(info.value.__cause__, NotADirectoryError)
        with pytest.raises(StorageError) as created:
            await store.create_project(name="nowhere")
        assert created.value.path == blocker / "projects" and created.value.hint
        assert created.value.project is not None
    assert _digest(source) == before


async def test_top_level_json_numbers_are_imported_as_exact_json(
    tmp_path: Path, config: StoreConfig
) -> None:
    """A legacy column declared JSON (NUMERIC affinity) holds a top-level JSON number as an
    SQLite number; it is imported as its exact JSON text (SQLite's own conversion to TEXT
    would keep 15 digits of a float)."""
    source = tmp_path / "legacy.db"
    conn = sqlite3.connect(source)
    conn.executescript(
        """
        CREATE TABLE projects (id TEXT PRIMARY KEY, name TEXT NOT NULL, description TEXT,
            config JSON, created_at INTEGER NOT NULL, updated_at INTEGER NOT NULL);
        CREATE TABLE conversations (id TEXT PRIMARY KEY, project_id TEXT NOT NULL, title TEXT,
            meta JSON, created_at INTEGER NOT NULL, updated_at INTEGER NOT NULL);
        """
    )
    conn.execute("INSERT INTO projects VALUES ('alpha', 'A', NULL, '2.5', ?, ?)", (NOW, NOW))
    metas = ["0.30000000000000004", "-7", '{"a": 1.0}', '"x"']
    for i, meta in enumerate(metas):
        conn.execute(
            "INSERT INTO conversations VALUES (?, 'alpha', NULL, ?, ?, ?)",
            (f"c{i}", meta, NOW, NOW),
        )
    conn.commit()
    kinds = [r[0] for r in conn.execute("SELECT typeof(meta) FROM conversations ORDER BY id")]
    conn.close()
    assert kinds == ["real", "integer", "text", "text"]

    async with Store(config) as store:
        report = await store.import_legacy(source)
        assert report.imported == ["alpha"]
        project = await store.open_project("alpha")
        async with project.read() as r:
            assert (await r.projects.get("alpha")).config == 2.5
            got = [c.meta for c in await r.conversations.list()]
    assert got == [json.loads(m) for m in metas]
    assert json.dumps(got) == '[0.30000000000000004, -7, {"a": 1.0}, "x"]'
