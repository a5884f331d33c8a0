"""Opening a project: the fast path, a newer schema, damaged files (the wheel: test_packaging)."""

from __future__ import annotations

import hashlib
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from demiarch_store import AsyncProjectStore, CorruptDatabase, SchemaTooNew, Store, StoreConfig
from demiarch_store.schema import HEAD_REVISION

pytestmark = pytest.mark.anyio

ROOT = Path(__file__).resolve().parent.parent


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


async def test_schema_too_new_leaves_the_file_byte_for_byte(config: StoreConfig) -> None:
    async with Store(config) as store:
        project = await store.create_project(name="future")
        project_id, path = project.id, project.path
        await project.close()
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA journal_mode = DELETE")  # a file another version left tidy
    conn.execute("UPDATE alembic_version SET version_num = '9999_from_the_future'")
    conn.commit()
    conn.close()
    before = _sha(path)
    mtime = os.stat(path).st_mtime_ns
    async with Store(config) as store:
        with pytest.raises(SchemaTooNew) as info:
            await store.open_project(project_id)
        assert "9999_from_the_future" in str(info.value) and project_id in str(info.value)
        assert "upgrade demiarch-store" in str(info.value)
        [described] = await store.list_projects()
        assert described.status == "newer_schema"
    assert _sha(path) == before and os.stat(path).st_mtime_ns == mtime
    assert not Path(f"{path}-wal").exists()


@pytest.mark.parametrize(
    "content",
    [b"this is not a database at all, just text\n" * 100, b"\x00" * 8192, os.urandom(8192)],
    ids=["text", "zeroes", "garbage"],
)
async def test_damaged_files_raise_corrupt_database(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "p" / "database.sqlite"
    path.parent.mkdir()
    path.write_bytes(content)
    with pytest.raises(CorruptDatabase) as info:
        async with AsyncProjectStore(path, project_id="p"):
            pass
    assert "'p'" in str(info.value) and str(path) in str(info.value)
    assert path.read_bytes() == content


async def test_open_at_head_reads_only_the_revision(tmp_path: Path) -> None:
    path = tmp_path / "fast.sqlite"
    async with AsyncProjectStore(path) as project:
        assert project.revision == HEAD_REVISION
    code = f"""
import asyncio, sys
from pathlib import Path
from demiarch_store import AsyncProjectStore
async def main():
    async with AsyncProjectStore(Path({str(path)!r})) as p:
        assert p.revision == {HEAD_REVISION!r}
asyncio.run(main())
print("alembic" in sys.modules)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=60, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"


async def test_a_damaged_header_never_costs_the_wal(tmp_path: Path) -> None:
    path = tmp_path / "p" / "database.sqlite"
    async with AsyncProjectStore(path, project_id="p") as project:
        async with project.transaction() as tx:
            await tx.conversations.create(title="only in the wal")
        # Keep the -wal on disk as a crash would: copy the files while the project is open.
        files = {s: Path(f"{path}{s}").read_bytes() for s in ("", "-wal")}
    for suffix, data in files.items():
        Path(f"{path}{suffix}").write_bytes(data)
    with open(path, "r+b") as f:
        f.write(b"\x00" * 16)
    wal_before = Path(f"{path}-wal").read_bytes()
    with pytest.raises(CorruptDatabase, match="header"):
        async with AsyncProjectStore(path, project_id="p"):
            pass
    assert Path(f"{path}-wal").read_bytes() == wal_before


async def test_paths_with_uri_characters_open(tmp_path: Path) -> None:
    path = tmp_path / "odd ?#% dir" / "db?mode=ro#x.sqlite"
    async with AsyncProjectStore(path, project_id="odd") as project:
        async with project.transaction() as tx:
            await tx.conversations.create(title="odd")
        async with project.read() as r:
            assert await r.conversations.count() == 1
    assert path.is_file()
    assert sorted(p.name for p in path.parent.iterdir()) == [path.name]


async def test_text_that_is_not_utf8_is_corruption_and_never_quoted(tmp_path: Path) -> None:
    path = tmp_path / "p" / "database.sqlite"
    async with AsyncProjectStore(path, project_id="p") as project:
        async with project.transaction() as tx:
            conv = await tx.conversations.create(title="t")
            await tx.messages.append(conv.id, role="user", content="placeholder")
    conn = sqlite3.connect(path)
    # Bytes that are not UTF-8, stored as TEXT: what a scribbled page can leave behind.
    conn.execute("UPDATE messages SET content = CAST(X'736563726574fffe' AS TEXT)")
    conn.commit()
    conn.close()
    async with AsyncProjectStore(path, project_id="p") as project:
        async with project.read() as r:
            with pytest.raises(CorruptDatabase, match="not valid UTF-8") as info:
                await r.messages.list(conv.id)
    assert "secret" not in str(info.value)
