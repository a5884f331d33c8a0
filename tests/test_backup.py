"""Backups, restores and quarantine on real files, with writers and processes around them."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import re
import signal
import sqlite3
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from lock_holder import database_claim, hold_open, release_write_lock, shm_claim

from demiarch_store import (
    AsyncProjectStore,
    BackupError,
    CorruptDatabase,
    DatabaseBusy,
    StorageError,
    Store,
    StoreConfig,
)
from demiarch_store.backup import write_snapshot
from demiarch_store.migrate import HEAD_REVISION, read_revision
from demiarch_store.project import open_files
from demiarch_store.store import readonly_uri

pytestmark = pytest.mark.anyio

BACKUP_NAME = re.compile(r"\d{6}-\d{8}T\d{6}Z\.sqlite")


def message_ids(path: Path) -> set[str]:
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        return {row[0] for row in conn.execute("SELECT id FROM messages")}
    finally:
        conn.close()


HASHER = """
import hashlib, json, os, sys
out = {}
for suffix in ("", "-wal"):
    name = sys.argv[1] + suffix
    if os.path.exists(name):
        out[suffix] = hashlib.sha256(open(name, "rb").read()).hexdigest()
print(json.dumps(out))
"""


def digest(path: Path) -> dict[str, str]:
    """Hash a database and its WAL in another process.

    Closing a descriptor of the file in this process would drop the POSIX locks that the
    open project's connections hold on it.
    """
    out = subprocess.run(
        [sys.executable, "-c", HASHER, str(path)],
        capture_output=True,
        check=True,
        timeout=60,
    ).stdout
    result: dict[str, str] = json.loads(out)
    return result


async def fill(project: AsyncProjectStore, n: int, *, size: int = 100) -> str:
    async with project.transaction() as tx:
        conv = await tx.conversations.create(title="filled")
        await tx.messages.append_many(conv.id, [{"role": "user", "content": "x" * size}] * n)
    return conv.id


@pytest.fixture
def umask_000() -> Iterator[None]:
    old = os.umask(0)
    try:
        yield
    finally:
        os.umask(old)


# -- backup ------------------------------------------------------------------------------------


async def test_backup_under_concurrent_writers_holds_every_acknowledged_write(
    store: Store,
) -> None:
    project = await store.create_project(name="busy")
    conv = await fill(project, 1)
    acked: list[str] = []
    stop = asyncio.Event()
    reached = asyncio.Event()
    goal = 200

    async def writer(tag: int) -> None:
        i = 0
        while not stop.is_set():
            async with project.transaction() as tx:
                m = await tx.messages.append(conv, role="user", content=f"{tag}:{i}")
            acked.append(m.id)  # acknowledged: the unit committed
            if len(acked) >= goal:
                reached.set()
            i += 1

    tasks = [asyncio.create_task(writer(n)) for n in range(4)]
    async with asyncio.timeout(60):
        await reached.wait()
        before = set(acked)
        path = await project.backup()
        reached.clear()
        goal = len(acked) + 100  # writers carry on after the backup
        await reached.wait()
        stop.set()
        await asyncio.gather(*tasks)

    assert path.parent == project.path.parent / "backups"
    assert BACKUP_NAME.fullmatch(path.name)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert project.backups() == [path]
    in_backup = message_ids(path)  # integrity_check is ok, too
    assert before <= in_backup
    assert not Path(f"{path}-wal").exists()  # one self-contained file


async def test_keep_backups_prunes_by_sequence_even_if_the_clock_went_back(
    config: StoreConfig,
) -> None:
    config = StoreConfig(projects_dir=config.projects_dir, keep_backups=3)
    async with Store(config) as store:
        project = await store.create_project(name="kept")
        first = [await project.backup() for _ in range(2)]
        # A backup named in the future, as if the clock had been ahead then went back.
        future = first[-1].with_name(first[-1].name[:7] + "20991231T235959Z.sqlite")
        os.rename(first[-1], future)
        later = [await project.backup() for _ in range(3)]
        names = [p.name for p in project.backups()]
        assert names == [p.name for p in reversed(later)]  # newest three, by sequence
        assert [int(n[:6]) for n in names] == [5, 4, 3]
        assert not first[0].exists() and not future.exists()


async def test_backup_to_a_file_or_a_directory(project: AsyncProjectStore, tmp_path: Path) -> None:
    await fill(project, 3)
    dest = tmp_path / "exports" / "copy.sqlite"
    dest.parent.mkdir()
    assert await project.backup(dest) == dest
    assert len(message_ids(dest)) == 3
    with pytest.raises(BackupError, match="already exists"):
        await project.backup(dest)  # never overwrites
    into = await project.backup(dest.parent)
    assert into.parent == dest.parent and BACKUP_NAME.fullmatch(into.name)
    with pytest.raises(BackupError):
        await project.backup(tmp_path / "missing-dir" / "x.sqlite")
    assert sorted(p.name for p in dest.parent.iterdir()) == sorted(["copy.sqlite", into.name])
    assert project.backups() == []  # explicit destinations are not pruned or listed


async def test_modes_under_umask_000(store: Store, umask_000: None) -> None:
    project = await store.create_project(name="modes")
    await fill(project, 2)
    backup = await project.backup()
    assert stat.S_IMODE(backup.stat().st_mode) == 0o600
    assert stat.S_IMODE(backup.parent.stat().st_mode) == 0o700
    await store.restore_project(project.id, backup)
    assert stat.S_IMODE(project.path.stat().st_mode) == 0o600
    for side in ("-wal", "-shm"):
        side_path = Path(f"{project.path}{side}")
        if side_path.exists():
            assert stat.S_IMODE(side_path.stat().st_mode) == 0o600
    quarantine = await store.quarantine_project(project.id, force=True)
    assert stat.S_IMODE(quarantine.stat().st_mode) == 0o700
    assert stat.S_IMODE(quarantine.parent.stat().st_mode) == 0o700
    assert stat.S_IMODE(project.path.stat().st_mode) == 0o600  # the restored backup


async def test_a_standalone_database_keeps_its_backups_apart(tmp_path: Path) -> None:
    async with (
        AsyncProjectStore(tmp_path / "a.sqlite") as a,
        AsyncProjectStore(tmp_path / "b.sqlite") as b,
    ):
        pa, pb = await a.backup(), await b.backup()
        assert pa.parent == tmp_path / "a.sqlite.backups"
        assert pb.parent == tmp_path / "b.sqlite.backups"


# -- kill -9 during a backup -------------------------------------------------------------------

BACKUP_CHILD = """
import asyncio, sys
from pathlib import Path
from demiarch_store import AsyncProjectStore, StoreConfig

async def main():
    path = Path(sys.argv[1])
    config = StoreConfig(projects_dir=path.parent.parent)
    async with AsyncProjectStore(path, config=config, project_id=path.parent.name) as project:
        print("open", flush=True)
        for _ in range(3):
            print("backup", await project.backup(), flush=True)

asyncio.run(main())
"""


async def test_kill_9_during_a_backup_leaves_no_false_backup(store: Store) -> None:
    project = await store.create_project(name="killed")
    conv = await fill(project, 3000, size=4000)  # ~12 MB: a backup takes a while
    backups = project.backups_dir
    await project.close()

    child = await asyncio.create_subprocess_exec(
        sys.executable, "-c", BACKUP_CHILD, str(project.path), stdout=asyncio.subprocess.PIPE
    )
    assert child.stdout is not None
    saw_partial = False
    async with asyncio.timeout(60):
        assert (await child.stdout.readline()).startswith(b"open")
        while child.returncode is None:
            names = os.listdir(backups) if backups.exists() else []
            if any(n.startswith(".partial-") for n in names):
                saw_partial = True
                break
            await asyncio.sleep(0.001)
        child.send_signal(signal.SIGKILL)
        await child.wait()
    # Whenever the kill landed, whatever is named like a backup is a whole, verified backup.
    for backup in list_named(backups):
        assert len(message_ids(backup)) == 3000
    print("killed during the backup" if saw_partial else "killed after the backups")

    again = await store.open_project(project.id)  # the live database is fine
    report = await again.check(full=True)
    assert report.ok, report.problems
    async with again.read() as r:
        assert await r.messages.count() == 3000
        assert (await r.conversations.get(conv)).title == "filled"
    fresh = await again.backup()  # removes the dead process's partial files
    assert not [n for n in os.listdir(backups) if n.startswith(".partial-")]
    assert again.backups()[0] == fresh


def list_named(directory: Path) -> list[Path]:
    if not directory.exists():
        return []
    return sorted(p for p in directory.iterdir() if BACKUP_NAME.fullmatch(p.name))


# -- restore -----------------------------------------------------------------------------------


async def test_restore_a_good_backup_in_place(store: Store) -> None:
    project = await store.create_project(name="restored")
    conv = await fill(project, 5)
    backup = await project.backup()
    async with project.transaction() as tx:
        late = await tx.messages.append(conv, role="user", content="after the backup")
    assert Path(f"{project.path}-wal").exists()  # the late write sits in the WAL

    same = await store.restore_project(project.id, backup)
    assert same is project and not project.closed
    async with project.read() as r:
        ids = {m.id for m in await r.messages.list(conv)}
    assert len(ids) == 5 and late.id not in ids  # the old WAL was not replayed
    assert (await project.check(full=True)).ok
    async with project.transaction() as tx:  # the project is usable at once
        await tx.messages.append(conv, role="user", content="new life")

    await project.close()  # restoring a project that is not open opens it
    reopened = await store.restore_project(project.id, backup)
    assert reopened is not project and reopened is await store.open_project(project.id)
    async with reopened.read() as r:
        assert await r.messages.count() == 5


async def test_restore_a_standalone_database(tmp_path: Path) -> None:
    async with AsyncProjectStore(tmp_path / "solo.sqlite") as project:
        await fill(project, 2)
        backup = await project.backup()
        await fill(project, 3)
        await project.restore(backup)
        async with project.read() as r:
            assert await r.messages.count() == 2


def _truncated(good: Path, bad: Path) -> None:
    bad.write_bytes(good.read_bytes()[: good.stat().st_size // 2])


def _altered(good: Path, bad: Path) -> None:
    data = bytearray(good.read_bytes())
    conn = sqlite3.connect(good)
    root, page_size = conn.execute(
        "SELECT rootpage, (SELECT page_size FROM pragma_page_size) FROM sqlite_master "
        "WHERE name = 'messages'"
    ).fetchone()
    conn.close()
    start = (root - 1) * page_size
    data[start : start + 8] = b"\x07\xff\xff\xff\xff\xff\xff\xff"  # a bad b-tree page header
    bad.write_bytes(bytes(data))


def _newer_schema(good: Path, bad: Path) -> None:
    bad.write_bytes(good.read_bytes())
    conn = sqlite3.connect(bad, isolation_level=None)
    conn.execute("UPDATE alembic_version SET version_num = '9999_future'")
    conn.close()


def _not_a_db(good: Path, bad: Path) -> None:
    bad.write_text("these are not the pages you are looking for\n" * 200)


def _foreign_db(good: Path, bad: Path) -> None:
    conn = sqlite3.connect(bad, isolation_level=None)
    conn.execute("CREATE TABLE other (x)")
    conn.close()


def _empty(good: Path, bad: Path) -> None:
    bad.write_bytes(b"")


def _flip_in_references(mask: int) -> object:
    """A flipped bit in the schema's text: messages' REFERENCES clause names another table.

    integrity_check passes such a file; every foreign key of the table is broken (what
    ``make soak`` found with one random bit flip).
    """

    def spoil(good: Path, bad: Path) -> None:
        data = bytearray(good.read_bytes())
        where = data.find(b"REFERENCES conversations", data.find(b"CREATE TABLE messages"))
        assert where > data.find(b"CREATE TABLE messages") > 0
        data[where + len(b"REFERENCES conversation")] ^= mask  # the final "s"
        bad.write_bytes(bytes(data))

    return spoil


@pytest.mark.parametrize(
    ("spoil", "reason"),
    [
        (_truncated, "integrity|healthy"),
        (_altered, "integrity|healthy"),
        (_newer_schema, "newer"),
        (_not_a_db, "healthy"),
        (_foreign_db, "no demiarch-store schema"),
        (_empty, "empty"),
        (_flip_in_references(0x01), "foreign keys"),  # "conversationr": a missing table
        (_flip_in_references(0x80), "healthy"),  # a byte that is not UTF-8
        (None, "does not exist"),
    ],
)
async def test_a_bad_backup_is_refused_and_the_live_database_untouched(
    store: Store, tmp_path: Path, spoil: object, reason: str
) -> None:
    project = await store.create_project(name="precious")
    conv = await fill(project, 50)
    good = await project.backup()
    async with project.transaction() as tx:
        await tx.messages.append(conv, role="user", content="only in the live file")
    bad = tmp_path / "bad.sqlite"
    if callable(spoil):
        spoil(good, bad)
    before = digest(project.path)

    with pytest.raises(BackupError, match=reason):
        await store.restore_project(project.id, bad)

    assert digest(project.path) == before
    assert not [p for p in project.path.parent.iterdir() if ".restore-" in p.name]
    async with project.read() as r:  # still open, still whole
        assert await r.messages.count() == 51


async def test_restore_refuses_while_another_process_has_the_project_open(
    store: Store,
) -> None:
    project = await store.create_project(name="shared")
    await fill(project, 4)
    backup = await project.backup()
    await fill(project, 1)
    holder = await hold_open(project.path)
    try:
        with pytest.raises(DatabaseBusy, match="another process"):
            await store.restore_project(project.id, backup)
    finally:
        await release_write_lock(holder)
    async with project.read() as r:  # reopened on the old file, nothing lost
        assert await r.messages.count() == 5
    await store.restore_project(project.id, backup)
    async with project.read() as r:
        assert await r.messages.count() == 4


async def test_restore_refuses_while_another_store_in_this_process_has_the_project_open(
    store: Store,
) -> None:
    """Another store of this process on the same file is a user too. Its locks cannot tell
    (POSIX locks never conflict within one process), so the store keeps count itself: the
    restore is refused and the other store keeps working on the file, nothing lost."""
    project = await store.create_project(name="twice")
    await fill(project, 4)
    backup = await project.backup()
    await fill(project, 1)
    async with AsyncProjectStore(project.path, config=store.config, create=False) as other:
        with pytest.raises(DatabaseBusy, match="another store of this process") as caught:
            await store.restore_project(project.id, backup)
        assert caught.value.project == project.id and caught.value.hint
        # Checking for other processes closed no descriptor that held this process's locks.
        assert await shm_claim(project.path) == "in use"
        assert await database_claim(project.path) == "in use"
        async with other.transaction() as tx:
            conv = (await tx.conversations.list())[0]
            await tx.messages.append(conv.id, role="user", content="still here")
    async with project.read() as r:
        assert await r.messages.count() == 6
    await store.restore_project(project.id, backup)
    async with project.read() as r:
        assert await r.messages.count() == 4


# -- quarantine --------------------------------------------------------------------------------

DIRTY_CHILD = """
import asyncio, sys
from pathlib import Path
from demiarch_store import AsyncProjectStore, StoreConfig

async def main():
    path = Path(sys.argv[1])
    config = StoreConfig(projects_dir=path.parent.parent)
    async with AsyncProjectStore(path, config=config, project_id=path.parent.name) as project:
        async with project.transaction() as tx:
            conv = await tx.conversations.create(title="unsaved")
            await tx.messages.append_many(conv.id, [{"role": "user", "content": "y"}] * 20)
        print("written", flush=True)
        await asyncio.sleep(600)

asyncio.run(main())
"""


async def test_quarantine_moves_the_files_together_and_restores_the_newest_good_backup(
    store: Store,
) -> None:
    project = await store.create_project(name="damaged")
    await fill(project, 7)
    older = await project.backup()
    await fill(project, 1)
    newest = await project.backup()
    newest.write_bytes(b"rotten" * 1000)  # the newest backup went bad: it is skipped
    await project.close()

    # A process dies with the database open: the -wal and -shm stay behind; then the
    # database's header is damaged.
    child = await asyncio.create_subprocess_exec(
        sys.executable, "-c", DIRTY_CHILD, str(project.path), stdout=asyncio.subprocess.PIPE
    )
    assert child.stdout is not None
    async with asyncio.timeout(30):
        assert (await child.stdout.readline()).startswith(b"written")
        child.send_signal(signal.SIGKILL)
        await child.wait()
    with open(project.path, "r+b") as f:
        f.write(b"garbage header!!")
    [info] = await store.list_projects()
    assert info.status == "corrupt"
    files = {
        s: hashlib.sha256(Path(f"{project.path}{s}").read_bytes()).hexdigest()
        for s in ("", "-wal", "-shm")
    }

    quarantine = await store.quarantine_project(project.id)

    assert quarantine.parent == project.path.parent / "quarantine"
    moved = {
        s: hashlib.sha256((quarantine / f"database.sqlite{s}").read_bytes()).hexdigest()
        for s in ("", "-wal", "-shm")
    }
    assert moved == files  # moved together, byte for byte
    assert not Path(f"{project.path}-wal").exists() and not Path(f"{project.path}-shm").exists()
    assert message_ids(project.path) and len(message_ids(project.path)) == 7  # from `older`
    assert older.exists()
    reopened = await store.open_project(project.id)
    assert (await reopened.check()).ok


async def test_quarantine_without_a_backup_leaves_the_project_empty(store: Store) -> None:
    project = await store.create_project(name="lost")
    await fill(project, 2)
    # An open, healthy project: only with force=True.
    quarantine = await store.quarantine_project(project.id, force=True)
    assert project.closed
    assert (quarantine / "database.sqlite").exists()
    assert not project.path.exists()
    [info] = await store.list_projects()
    assert info.status == "empty"
    with pytest.raises(CorruptDatabase, match="no database file"):
        await store.open_project(project.id)
    good = quarantine / "database.sqlite"
    restored = await store.restore_project(project.id, good)  # it was fine after all
    async with restored.read() as r:
        assert await r.messages.count() == 2


async def test_quarantine_refuses_while_another_process_has_the_project_open(
    store: Store,
) -> None:
    project = await store.create_project(name="in use")
    await project.close()
    holder = await hold_open(project.path)
    try:
        with pytest.raises(DatabaseBusy, match="another process"):
            await store.quarantine_project(project.id, force=True)
    finally:
        await release_write_lock(holder)
    assert project.path.exists()
    assert (await (await store.open_project(project.id)).check()).ok


async def test_restore_over_a_database_too_damaged_to_open(store: Store) -> None:
    project = await store.create_project(name="wrecked")
    await fill(project, 6)
    backup = await project.backup()
    await project.close()
    with open(project.path, "r+b") as f:
        f.write(b"not sqlite at all")
    with pytest.raises(CorruptDatabase):
        await store.open_project(project.id)
    restored = await store.restore_project(project.id, backup)
    assert (await restored.check(full=True)).ok
    async with restored.read() as r:
        assert await r.messages.count() == 6


async def test_a_restored_project_forgets_its_old_file(store: Store) -> None:
    """The replaced file's inode may be reused by another project's file: it must not map to
    this project, or discovery would describe that file through this project's pool."""
    project = await store.create_project(name="renewed")
    await fill(project, 3)
    backup = await project.backup()
    st = os.stat(project.path)
    old_key = (st.st_dev, st.st_ino)
    assert open_files()[old_key] is project

    await store.restore_project(project.id, backup)
    st = os.stat(project.path)
    new_key = (st.st_dev, st.st_ino)
    held = open_files()
    assert new_key != old_key and old_key not in held and held[new_key] is project
    await project.close()
    assert new_key not in open_files()


async def test_restore_that_cannot_put_the_file_in_place_raises_storage_error(
    store: Store,
) -> None:
    project = await store.create_project(name="blocked")
    conv = await fill(project, 4)
    backup = await project.backup()
    async with project.transaction() as tx:
        await tx.messages.append(conv, role="user", content="only in the live file")
    obstacle = Path(f"{project.path}-journal")
    obstacle.mkdir()  # a directory where the old journal must be removed: unlink fails

    with pytest.raises(StorageError) as info:
        await store.restore_project(project.id, backup)
    assert info.value.project == project.id and info.value.path == project.path
    assert info.value.hint and isinstance(info.value.__cause__, IsADirectoryError)
    assert not [p for p in project.path.parent.iterdir() if ".restore-" in p.name]

    obstacle.rmdir()
    reopened = await store.open_project(project.id)  # the live database, whole
    async with reopened.read() as r:
        assert await r.messages.count() == 5
    assert (await reopened.check(full=True)).ok


async def test_a_restore_killed_half_way_leaves_a_copy_the_next_restore_removes(
    store: Store,
) -> None:
    project = await store.create_project(name="restored twice")
    await fill(project, 3)
    backup = await project.backup()
    dead = await asyncio.create_subprocess_exec(sys.executable, "-c", "pass")
    await asyncio.wait_for(dead.wait(), 60)  # exited and reaped: its PID is gone
    dead_pid = dead.pid
    live = await asyncio.create_subprocess_exec(
        sys.executable, "-c", "import time; time.sleep(120)"
    )
    try:
        left = project.path.with_name(f".database.sqlite.restore-{dead_pid}-01abc")
        in_use = project.path.with_name(f".database.sqlite.restore-{live.pid}-01abc")
        for path in (left, Path(f"{left}-journal"), in_use):
            path.write_bytes(b"a copy of a backup")

        await store.restore_project(project.id, backup)

        assert not left.exists() and not Path(f"{left}-journal").exists()
        assert in_use.exists()  # its process may still be restoring
    finally:
        live.kill()
        await asyncio.wait_for(live.wait(), 30)
    async with project.read() as r:
        assert await r.messages.count() == 3


def revision_of(path: Path) -> str | None:
    conn = sqlite3.connect(readonly_uri(path), uri=True)
    try:
        return read_revision(conn)
    finally:
        conn.close()


async def test_restore_a_backup_at_revision_0001_migrates_it_and_keeps_its_data(
    store: Store, tmp_path: Path
) -> None:
    project = await store.create_project(name="old times")
    conv = await fill(project, 7)
    async with project.read() as r:
        messages = await r.messages.list(conv)
    assert await store.migrate_project(project.id, to="0001") == (HEAD_REVISION, "0001")
    # The project is closed now: back up the 0001 file with the backup primitive.
    old = tmp_path / "at-0001.sqlite"
    source = sqlite3.connect(readonly_uri(project.path), uri=True, isolation_level=None)
    try:
        write_snapshot(source, old)
    finally:
        source.close()
    assert revision_of(old) == "0001"

    current = await store.open_project(project.id)  # back at head, with newer data
    async with current.transaction() as tx:
        late = await tx.messages.append(conv, role="user", content="after the backup")
        await tx.llm_calls.record(model="m", cost_usd=1)

    restored = await store.restore_project(project.id, old)
    assert restored is current and not restored.closed
    assert restored.migrated == ("0001", HEAD_REVISION)
    assert restored.revision == HEAD_REVISION == revision_of(restored.path)
    async with restored.read() as r:
        assert await r.messages.list(conv) == messages  # every field, as it was
        assert late.id not in {m.id for m in await r.messages.list(conv)}
        assert (await r.projects.get(project.id)).name == "old times"
        assert await r.llm_calls.count() == 0  # the table 0002 added, empty
    assert (await restored.check(full=True)).ok
    async with restored.transaction() as tx:  # the newer tables work at once
        await tx.llm_calls.record(model="m", cost_usd=2)
    assert revision_of(old) == "0001"  # the backup itself is left as it was

    # Restoring into a closed project opens and migrates it the same way.
    await restored.close()
    again = await store.restore_project(project.id, old)
    assert again.migrated == ("0001", HEAD_REVISION)
    async with again.read() as r:
        assert await r.messages.list(conv) == messages
    # A backup already at head: nothing to migrate, and the project says so.
    await store.restore_project(project.id, await again.backup())
    assert again.migrated is None


async def test_concurrent_backups_get_distinct_names(project: AsyncProjectStore) -> None:
    await fill(project, 20)
    paths = await asyncio.gather(*(project.backup() for _ in range(4)))
    assert len(set(paths)) == 4
    assert sorted(project.backups()) == sorted(paths)
    for path in paths:
        assert len(message_ids(path)) == 20
