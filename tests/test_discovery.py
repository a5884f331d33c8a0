"""Discovery: every kind of damage on real files, read without changing a byte."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from demiarch_store import CorruptDatabase, SchemaTooNew, StorageError, Store, StoreConfig
from demiarch_store.store import discover

pytestmark = pytest.mark.anyio


def _garbage(path: Path) -> None:
    path.write_bytes(os.urandom(8192))


def _text(path: Path) -> None:
    path.write_text("these are not the pages you are looking for\n" * 200)


def _zeroed_header(path: Path) -> None:
    with open(path, "r+b") as f:
        f.write(b"\0" * 100)


def _truncated(path: Path) -> None:
    os.truncate(path, path.stat().st_size // 2)


def _zero_bytes(path: Path) -> None:
    os.truncate(path, 0)


def _no_database(path: Path) -> None:
    path.unlink()


def _newer_schema(path: Path) -> None:
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("UPDATE alembic_version SET version_num = '9999'")
    conn.close()


DAMAGE: dict[str, tuple[Callable[[Path], None], str, str]] = {
    # project ID: (how to damage it, status, words in the error)
    "garbage": (_garbage, "corrupt", "not a database"),
    "text": (_text, "corrupt", "not a database"),
    "zeroed-header": (_zeroed_header, "corrupt", "not a database"),
    # SQLite itself refuses a file shorter than its header says: "disk image is malformed".
    "truncated": (_truncated, "corrupt", "malformed"),
    "zero-bytes": (_zero_bytes, "empty", "0 bytes"),
    "no-database": (_no_database, "empty", "no database file"),
    "newer": (_newer_schema, "newer_schema", "newer"),
}


def _files(root: Path) -> dict[str, tuple[int, int, str]]:
    """Every file under root: (mtime_ns, size, sha256). -shm files are shared memory: left out."""
    out = {}
    for path in sorted(root.rglob("*")):
        if path.is_file() and not path.is_symlink() and not path.name.endswith("-shm"):
            st = path.stat()
            digest = hashlib.sha256(path.read_bytes()).hexdigest()
            out[str(path.relative_to(root))] = (st.st_mtime_ns, st.st_size, digest)
    return out


def _leave_wal(path: Path) -> None:
    """Let another process write and die without closing: its -wal and -shm stay behind."""
    code = (
        "import os, sqlite3, sys\n"
        "c = sqlite3.connect(sys.argv[1], isolation_level=None)\n"
        "c.execute(\"UPDATE projects SET name = 'renamed in the wal'\")\n"
        "os._exit(0)\n"
    )
    subprocess.run([sys.executable, "-c", code, str(path)], check=True, timeout=60)
    assert Path(f"{path}-wal").exists() and Path(f"{path}-shm").exists()


async def _make(config: StoreConfig, *ids: str) -> None:
    async with Store(config) as store:
        for project_id in ids:
            await store.create_project(name=f"{project_id} project", project_id=project_id)


async def test_every_kind_of_damage_is_listed_and_nothing_changes(config: StoreConfig) -> None:
    root = config.projects_dir
    await _make(config, "healthy", "left-wal", *DAMAGE)
    for project_id, (damage, _, _) in DAMAGE.items():
        damage(root / project_id / "database.sqlite")
    # A project another process left with its -wal and -shm (killed before it could close).
    _leave_wal(root / "left-wal" / "database.sqlite")
    # Stray entries: a file among the directories, foreign names, and symlinks.
    (root / "notes.txt").write_text("not a project")
    (root / "readme").write_text("a file with an ID-like name")
    (root / "Not An ID").mkdir()
    (root / "linked-dir").symlink_to(root / "healthy", target_is_directory=True)
    (root / "linked-file").symlink_to(root / "notes.txt")
    (root / "dangling").symlink_to(root / "nowhere")
    (root / "linked-db").mkdir()
    (root / "linked-db" / "database.sqlite").symlink_to(root / "healthy" / "database.sqlite")

    before = _files(root)
    async with Store(config) as store:
        infos = {i.id: i for i in await store.list_projects()}
        assert list(infos) == sorted(infos)
    assert _files(root) == before, "discovery changed, created or touched a file"
    # No -wal, no -shm appeared; the marker is the library's, written when it was created.
    assert sorted(os.listdir(root / "healthy")) == [".demiarch-project", "database.sqlite"]

    assert set(infos) == {"healthy", "left-wal", "linked-dir", "dangling", "linked-db", *DAMAGE}
    healthy = infos["healthy"]
    assert (healthy.status, healthy.name, healthy.error) == ("ok", "healthy project", None)
    assert healthy.updated_at is not None and healthy.updated_at.tzinfo is not None
    assert healthy.size_bytes == before["healthy/database.sqlite"][1]
    assert infos["left-wal"].status == "ok"
    assert infos["left-wal"].name == "renamed in the wal"  # read through the -wal
    for project_id, (_, status, words) in DAMAGE.items():
        info = infos[project_id]
        assert info.status == status, (project_id, info)
        assert info.error is not None and words in info.error, (project_id, info.error)
        assert info.name is None or status == "newer_schema"
    for project_id in ("linked-dir", "dangling", "linked-db"):
        assert infos[project_id].status == "unreadable"
        assert "symlink" in str(infos[project_id].error)


@pytest.mark.parametrize("project_id", ["garbage", "text", "zeroed-header", "truncated"])
async def test_opening_a_corrupt_project_names_it_and_leaves_the_file(
    config: StoreConfig, project_id: str
) -> None:
    await _make(config, project_id)
    path = config.projects_dir / project_id / "database.sqlite"
    DAMAGE[project_id][0](path)
    before = _files(config.projects_dir)
    async with Store(config) as store:
        with pytest.raises(CorruptDatabase) as caught:
            await store.open_project(project_id)
    assert caught.value.project == project_id
    assert project_id in str(caught.value) and str(path) in str(caught.value)
    assert _files(config.projects_dir) == before


@pytest.mark.parametrize("project_id", ["zero-bytes", "no-database"])
async def test_opening_a_project_without_data_is_corrupt(
    config: StoreConfig, project_id: str
) -> None:
    await _make(config, project_id)
    DAMAGE[project_id][0](config.projects_dir / project_id / "database.sqlite")
    async with Store(config) as store:
        with pytest.raises(CorruptDatabase, match=project_id):
            await store.open_project(project_id)
    assert sorted(p.name for p in (config.projects_dir / project_id).iterdir()) == (
        [".demiarch-project", "database.sqlite"]
        if project_id == "zero-bytes"
        else [".demiarch-project"]
    )


async def test_opening_a_newer_schema_raises_schema_too_new(config: StoreConfig) -> None:
    await _make(config, "newer")
    _newer_schema(config.projects_dir / "newer" / "database.sqlite")
    async with Store(config) as store:
        with pytest.raises(SchemaTooNew, match="newer"):
            await store.open_project("newer")


async def test_an_open_project_is_described_through_its_own_pool(
    config: StoreConfig, monkeypatch: pytest.MonkeyPatch
) -> None:
    await _make(config, "closed-one")
    async with Store(config) as store:
        project = await store.create_project(name="busy one", project_id="open-one")
        async with project.transaction() as tx:
            await tx.conversations.create(title="hello")
        connects: list[str] = []
        real_connect = sqlite3.connect

        def spy(database: Any, *args: Any, **kwargs: Any) -> sqlite3.Connection:
            connects.append(str(database))
            return real_connect(database, *args, **kwargs)

        monkeypatch.setattr(sqlite3, "connect", spy)
        infos = {i.id: i for i in await store.list_projects()}
        monkeypatch.undo()
        assert (infos["open-one"].status, infos["open-one"].name) == ("ok", "busy one")
        assert infos["open-one"].revision == project.revision
        assert infos["closed-one"].status == "ok"
        # The closed project was read from its file; the open one only through a reader
        # of its own pool (mode=rw, query_only), never through a second read-only handle.
        read_only = [c for c in connects if "mode=ro" in c]
        assert len(read_only) == 1 and "closed-one" in read_only[0]
        assert all("open-one" not in c or "mode=rw" in c for c in connects)
        assert project.pool._readers_all  # a reader did the work
        async with project.read() as r:  # the project is still healthy and open
            assert await r.conversations.count() == 1


def test_discover_in_a_missing_directory_is_empty(tmp_path: Path) -> None:
    assert discover(tmp_path / "nowhere") == []


async def test_a_projects_directory_that_cannot_be_read_raises(tmp_path: Path) -> None:
    (tmp_path / "a-file").write_text("not a directory")
    async with Store(StoreConfig(projects_dir=tmp_path / "a-file")) as store:
        with pytest.raises(StorageError, match="cannot read the projects directory"):
            await store.list_projects()


def test_a_database_nobody_may_read_is_unreadable() -> None:
    # We run as root: the reading happens in a child process that drops to nobody. tmp_path's
    # parents are 0700, so this test needs its own directory that nobody may traverse.
    root = Path(tempfile.mkdtemp(prefix="demiarch-perm-"))
    try:
        os.chmod(root, 0o755)
        config = StoreConfig(projects_dir=root / "projects")
        asyncio.run(_make(config, "private-file", "private-dir", "public"))
        os.chmod(config.projects_dir, 0o755)
        for project_id in ("private-file", "public"):
            os.chmod(config.projects_dir / project_id, 0o755)
        os.chmod(config.projects_dir / "public" / "database.sqlite", 0o644)
        code = (
            "import json, os, sys\n"
            "from pathlib import Path\n"
            "from demiarch_store.store import discover\n"
            "os.setgid(65534); os.setuid(65534)\n"
            "infos = discover(Path(sys.argv[1]))\n"
            "print(json.dumps({i.id: [i.status, i.error] for i in infos}))\n"
        )
        out = subprocess.run(
            [sys.executable, "-c", code, str(config.projects_dir)],
            check=True,
            capture_output=True,
            text=True,
            timeout=60,
        )
        result = json.loads(out.stdout)
        assert result["public"][0] == "ok"
        assert result["private-file"] == ["unreadable", "permission denied"]
        assert result["private-dir"][0] == "unreadable"
        assert "ermission denied" in result["private-dir"][1]
    finally:
        shutil.rmtree(root)


async def test_a_project_open_in_another_event_loop_is_described_through_its_pool(
    config: StoreConfig,
) -> None:
    ready, done = threading.Event(), threading.Event()
    errors: list[BaseException] = []

    def other_thread() -> None:
        async def hold() -> None:
            async with Store(config) as store:
                project = await store.create_project(name="elsewhere", project_id="other-loop")
                async with project.transaction() as tx:
                    await tx.conversations.create(title="x")
                ready.set()
                await asyncio.to_thread(done.wait, 60)

        try:
            asyncio.run(hold())
        except BaseException as exc:  # reported by the test below
            errors.append(exc)
            ready.set()

    thread = threading.Thread(target=other_thread)
    thread.start()
    try:
        await asyncio.to_thread(ready.wait, 60)
        assert not errors
        async with Store(config) as store:
            infos = await store.list_projects()
        assert [(i.id, i.status, i.name) for i in infos] == [("other-loop", "ok", "elsewhere")]
    finally:
        done.set()
        await asyncio.to_thread(thread.join, 60)
    assert not errors


def _churn(projects_dir: Path, cycles: int) -> subprocess.Popen[str]:
    """Another process opening, writing and closing (checkpointing) a project over and over."""
    code = (
        "import asyncio, sys\n"
        "from pathlib import Path\n"
        "from demiarch_store import Store, StoreConfig\n"
        "async def main():\n"
        "    for n in range(int(sys.argv[2])):\n"
        "        async with Store(StoreConfig(projects_dir=Path(sys.argv[1]))) as store:\n"
        "            p = await store.open_project('churning')\n"
        "            async with p.transaction() as tx:\n"
        "                c = await tx.conversations.create(title=str(n))\n"
        "                many = [{'role': 'u', 'content': 'x' * 500}] * 20\n"
        "                await tx.messages.append_many(c.id, many)\n"
        "asyncio.run(main())\n"
    )
    args = [sys.executable, "-c", code, str(projects_dir), str(cycles)]
    return subprocess.Popen(args, text=True)


async def test_discovery_while_another_process_writes_never_reports_damage(
    config: StoreConfig,
) -> None:
    await _make(config, "churning")
    proc = _churn(config.projects_dir, 40)
    seen = []
    try:
        async with Store(config) as store:
            while proc.poll() is None or not seen:
                infos = await store.list_projects()
                seen.append(infos[0].status)
                assert infos[0].status == "ok", infos[0]
    finally:
        await asyncio.to_thread(proc.wait, 120)
    assert proc.returncode == 0
    # A reader present when the writer closed keeps its -wal (as any reader would); the next
    # open and close by a writer checkpoints and removes it. Nothing was lost.
    async with Store(config) as store:
        project = await store.open_project("churning")
        async with project.read() as r:
            assert await r.conversations.count() == 40
    assert sorted(os.listdir(config.projects_dir / "churning")) == [
        ".demiarch-project",
        "database.sqlite",
    ]
