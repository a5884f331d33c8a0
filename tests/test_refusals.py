"""What the library refuses: each case on real files, real processes and a real terminal.

Destructive operations touch only what the library made; a file from elsewhere is checked
against the schema the library's own revision makes before anything in it runs; misuse is an
error, never a silently dropped write. (README: "What the library refuses".)
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import shutil
import sqlite3
import struct
import subprocess
import zipfile
import zlib
from collections.abc import Iterator
from pathlib import Path

import pytest
from test_legacy import build_legacy

from demiarch_store import (
    AsyncProjectStore,
    BackupError,
    BundleError,
    StorageError,
    Store,
    StoreConfig,
    StoreError,
    UnexpectedSchema,
)
from demiarch_store.health import expected_shape, schema_shape
from demiarch_store.migrate import HEAD_REVISION, known_revisions, run_migrations

pytestmark = pytest.mark.anyio


# -- misuse: a unit of work or a snapshot used without `async with` ----------------------------


async def test_a_transaction_without_async_with_refuses_a_write(project: AsyncProjectStore) -> None:
    tx = project.transaction()
    with pytest.raises(StoreError, match=r"without `async with`") as caught:
        await tx.conversations.create(title="never written")
    assert "async with project.transaction() as tx:" in str(caught.value)
    async with project.read() as r:
        assert await r.conversations.list() == []


async def test_a_transaction_without_async_with_refuses_a_read(project: AsyncProjectStore) -> None:
    tx = project.transaction()
    with pytest.raises(StoreError, match=r"without `async with`"):
        await asyncio.wait_for(tx.conversations.list(), timeout=10)
    # The writer was never taken: a real unit runs at once.
    async with asyncio.timeout(10), project.transaction() as real:
        await real.conversations.create(title="written")
    async with project.read() as r:
        assert [c.title for c in await r.conversations.list()] == ["written"]


async def test_a_read_without_async_with_refuses_a_read(project: AsyncProjectStore) -> None:
    r = project.read()
    with pytest.raises(StoreError, match=r"without `async with`") as caught:
        await r.conversations.list()
    assert "async with project.read() as r:" in str(caught.value)


async def test_a_read_without_async_with_refuses_a_write(project: AsyncProjectStore) -> None:
    r = project.read()
    with pytest.raises(StoreError, match=r"without `async with`"):
        await r.conversations.create(title="never written")


async def test_an_ended_transaction_still_says_it_has_ended(project: AsyncProjectStore) -> None:
    async with project.transaction() as tx:
        pass
    with pytest.raises(StoreError, match="the transaction has ended"):
        await tx.conversations.create(title="late")


# -- a file from elsewhere: its schema must be exactly what the library's revision makes ----------

FORGERIES = {
    # name: (SQL run on a real project's database, words the refusal names)
    "trigger": (
        "CREATE TRIGGER wipe AFTER UPDATE ON projects BEGIN DELETE FROM messages; END",
        "a trigger 'wipe'",
    ),
    "view": ("CREATE VIEW peek AS SELECT content FROM messages", "a view 'peek'"),
    "extra table": ("CREATE TABLE loot (secret TEXT)", "a table 'loot'"),
    "extra column": ("ALTER TABLE messages ADD COLUMN extra TEXT", "'extra'"),
    "expression index": ("CREATE INDEX ix_evil ON messages (lower(content))", "'ix_evil'"),
    "dropped index": ("DROP INDEX ix_messages_conversation_id_id", "indexes on table 'messages'"),
}


async def _filled(store: Store, name: str = "source") -> AsyncProjectStore:
    project = await store.create_project(name=name)
    async with project.transaction() as tx:
        conv = await tx.conversations.create(title="kept")
        await tx.messages.append_many(conv.id, [{"role": "user", "content": "hello"}] * 5)
    return project


def _forge_database(path: Path, sql: str) -> None:
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute("PRAGMA journal_mode = DELETE")
        conn.execute(sql)
    finally:
        conn.close()


def _forge_bundle(bundle: Path, dest: Path, sql: str, work: Path) -> Path:
    """Rewrite a real bundle's database with ``sql``; the manifest's checksum and size follow."""
    with zipfile.ZipFile(bundle) as zf:
        manifest = json.loads(zf.read("manifest.json"))
        database = work / "forged.sqlite"
        database.write_bytes(zf.read("database.sqlite"))
    _forge_database(database, sql)
    data = database.read_bytes()
    manifest.update(sha256=hashlib.sha256(data).hexdigest(), size_bytes=len(data))
    with zipfile.ZipFile(dest, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("manifest.json", json.dumps(manifest))
        zf.writestr("database.sqlite", data)
    return dest


@pytest.mark.parametrize("forgery", sorted(FORGERIES))
async def test_a_forged_bundle_is_refused_naming_the_object(
    store: Store, tmp_path: Path, forgery: str
) -> None:
    sql, words = FORGERIES[forgery]
    project = await _filled(store)
    bundle = await store.export_project(project.id, tmp_path / "real.demiarch.zip")
    forged = _forge_bundle(bundle, tmp_path / "forged.demiarch.zip", sql, tmp_path)
    before = sorted(p.name for p in store.projects_dir.iterdir())
    with pytest.raises(BundleError) as caught:
        await store.import_project(forged, project_id="copy")
    assert words in str(caught.value)
    assert "not written by export_project()" in str(caught.value)
    assert sorted(p.name for p in store.projects_dir.iterdir()) == before
    # The real bundle imports: the check refuses forgeries, not the library's own files.
    copy = await store.import_project(bundle, project_id="real-copy")
    async with copy.read() as r:
        assert await r.messages.count() == 5


async def test_a_forged_trigger_never_fires(store: Store, tmp_path: Path) -> None:
    """Importing under a new ID renames the project record: a planted trigger must not run."""
    project = await _filled(store)
    bundle = await store.export_project(project.id, tmp_path)
    sql = FORGERIES["trigger"][0]
    forged = _forge_bundle(bundle, tmp_path / "forged.demiarch.zip", sql, tmp_path)
    with pytest.raises(BundleError, match="trigger"):
        await store.import_project(forged, project_id="renamed")
    assert not (store.projects_dir / "renamed").exists()


@pytest.mark.parametrize("forgery", sorted(FORGERIES))
async def test_a_forged_backup_is_refused_naming_the_object(
    store: Store, tmp_path: Path, forgery: str
) -> None:
    sql, words = FORGERIES[forgery]
    project = await _filled(store)
    backup = await project.backup(tmp_path / "backup.sqlite")
    _forge_database(backup, sql)
    async with project.transaction() as tx:
        await tx.conversations.create(title="live, after the backup")
    with pytest.raises(BackupError) as caught:
        await store.restore_project(project.id, backup)
    assert words in str(caught.value)
    async with project.read() as r:  # the live database is untouched and still open
        assert len(await r.conversations.list()) == 2


async def test_an_older_backup_is_checked_against_its_own_revision(
    store: Store, tmp_path: Path
) -> None:
    """A backup at an older revision must match what the migrations made at that revision."""
    older = known_revisions()[0]
    assert older != HEAD_REVISION
    project = await _filled(store)
    good = tmp_path / "old.sqlite"
    run_migrations(good, project=None, target=older)
    forged = tmp_path / "old-forged.sqlite"
    shutil.copy(good, forged)
    _forge_database(forged, "CREATE TABLE loot (secret TEXT)")
    with pytest.raises(BackupError, match=f"a table 'loot' that revision {older} does not make"):
        await store.restore_project(project.id, forged)
    restored = await store.restore_project(project.id, good)  # the library's own: accepted
    assert restored.revision == HEAD_REVISION


def test_the_expected_schema_is_what_the_migrations_make(tmp_path: Path) -> None:
    """The head's shape, built from the metadata, equals what the migrations build."""
    path = tmp_path / "migrated.sqlite"
    run_migrations(path, project=None)
    conn = sqlite3.connect(path)
    try:
        assert schema_shape(conn) == expected_shape(HEAD_REVISION)
    finally:
        conn.close()
    for revision in known_revisions():
        assert "projects" in expected_shape(revision)


async def test_a_legacy_database_with_a_view_or_trigger_is_refused(
    store: Store, tmp_path: Path
) -> None:
    for sql, words in (
        ("CREATE VIEW peek AS SELECT * FROM projects", "a view 'peek'"),
        (
            "CREATE TRIGGER t AFTER INSERT ON projects BEGIN DELETE FROM messages; END",
            "a trigger 't'",
        ),
    ):
        source = tmp_path / f"legacy-{words.split()[1]}.db"
        build_legacy(source)
        _forge_database(source, sql)
        with pytest.raises(UnexpectedSchema) as caught:
            await store.import_legacy(source)
        assert words in str(caught.value) and "nothing was imported" in str(caught.value)
        assert not store.projects_dir.exists() or not any(
            p.name in ("alpha", "beta") for p in store.projects_dir.iterdir()
        )


# -- sizes that lie, and files that would not fit ---------------------------------------------


def _raw_zip(dest: Path, members: list[tuple[str, bytes, int]]) -> Path:
    """Write a zip by hand: each (name, data, declared size); data deflated as it is.

    zipfile always writes true sizes; a forger does not have to.
    """
    with open(dest, "wb") as f:
        central = []
        for name, data, declared in members:
            packer = zlib.compressobj(9, zlib.DEFLATED, -15)
            stream = packer.compress(data) + packer.flush()
            crc, raw_name, offset = zlib.crc32(data), name.encode(), f.tell()
            f.write(
                struct.pack(
                    "<IHHHHHIIIHH",
                    0x04034B50,
                    20,
                    0,
                    8,
                    0,
                    0,
                    crc,
                    len(stream),
                    declared,
                    len(raw_name),
                    0,
                )
            )
            f.write(raw_name + stream)
            central.append(
                struct.pack(
                    "<IHHHHHHIIIHHHHHII",
                    0x02014B50,
                    20,
                    20,
                    0,
                    8,
                    0,
                    0,
                    crc,
                    len(stream),
                    declared,
                    len(raw_name),
                    0,
                    0,
                    0,
                    0,
                    0o100600 << 16,
                    offset,
                )
                + raw_name
            )
        start = f.tell()
        f.write(b"".join(central))
        f.write(
            struct.pack(
                "<IHHHHIIH",
                0x06054B50,
                0,
                0,
                len(central),
                len(central),
                f.tell() - start,
                start,
                0,
            )
        )
    return dest


def _bundle_members(bundle: Path) -> tuple[dict[str, object], bytes]:
    with zipfile.ZipFile(bundle) as zf:
        return json.loads(zf.read("manifest.json")), zf.read("database.sqlite")


@pytest.mark.parametrize("declared", ["larger", "smaller"])
async def test_a_bundle_whose_sizes_lie_is_refused_before_it_is_written_out(
    store: Store, tmp_path: Path, declared: str
) -> None:
    project = await _filled(store)
    bundle = await store.export_project(project.id, tmp_path)
    manifest, database = _bundle_members(bundle)
    # A deflated member cannot hold more than ~1032 times its compressed size; a stream that
    # holds more than declared is cut at the declared size, and its checksum fails.
    size = len(database) * 5000 if declared == "larger" else len(database) // 2
    manifest["size_bytes"] = size
    lying = _raw_zip(
        tmp_path / "lying.zip",
        [
            ("manifest.json", json.dumps(manifest).encode(), len(json.dumps(manifest))),
            ("database.sqlite", database, size),
        ],
    )
    with pytest.raises(BundleError) as caught:
        await store.import_project(lying, project_id="lying")
    if declared == "larger":
        assert f"declares {size:,} bytes" in str(caught.value)
        assert "it was not extracted" in str(caught.value)
    else:
        assert "checksum" in str(caught.value) or "CRC" in str(caught.value)
    assert not (store.projects_dir / "lying").exists()
    assert [p.name for p in store.projects_dir.iterdir() if p.name.startswith(".")] == []
    # The same members with true sizes import.
    honest = _raw_zip(
        tmp_path / "honest.zip",
        [
            (
                "manifest.json",
                json.dumps(_bundle_members(bundle)[0]).encode(),
                len(json.dumps(_bundle_members(bundle)[0])),
            ),
            ("database.sqlite", database, len(database)),
        ],
    )
    assert (await store.import_project(honest, project_id="honest")).id == "honest"


@contextlib.contextmanager
def small_disk(path: Path, size: str = "3m") -> Iterator[Path]:
    """A real file system of ``size`` (tmpfs, mounted as root: the tests run as root)."""
    path.mkdir()
    subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], check=True, timeout=30
    )
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=True, timeout=30)


async def _big_project(store: Store, megabytes: int = 6) -> AsyncProjectStore:
    """A project whose database holds ``megabytes`` of incompressible text."""
    project = await store.create_project(name="big")
    async with project.transaction() as tx:
        conv = await tx.conversations.create(title="big")
        chunk = [{"role": "user", "content": os.urandom(32 * 1024).hex()} for _ in range(16)]
        for _ in range(megabytes):
            await tx.messages.append_many(conv.id, chunk)
    return project


async def test_a_bundle_that_would_not_fit_is_refused_before_it_is_written(
    store: Store, tmp_path: Path
) -> None:
    big = await _big_project(store)
    bundle = await store.export_project(big.id, tmp_path)
    with small_disk(tmp_path / "small") as small:
        async with Store(StoreConfig(projects_dir=small / "projects")) as tiny:
            with pytest.raises(StorageError) as caught:
                await tiny.import_project(bundle)
            assert "bytes but only" in str(caught.value) and "nothing was written" in str(
                caught.value
            )
            assert not (small / "projects").exists() or list((small / "projects").iterdir()) == []


async def test_a_backup_that_would_not_fit_is_refused_before_it_is_written(
    store: Store, tmp_path: Path
) -> None:
    big = await _big_project(store)
    backup = await big.backup(tmp_path / "big-backup.sqlite")
    with small_disk(tmp_path / "small") as small:
        async with Store(StoreConfig(projects_dir=small / "projects")) as tiny:
            project = await _filled(tiny, "small")
            with pytest.raises(StorageError, match="bytes but only"):
                await tiny.restore_project(project.id, backup)
            async with project.read() as r:  # untouched, still open
                assert await r.messages.count() == 5
            left = [p.name for p in project.path.parent.iterdir() if ".restore-" in p.name]
            assert left == []  # no partial copy was started


async def test_a_legacy_database_that_would_not_fit_is_refused(
    store: Store, tmp_path: Path
) -> None:
    source = tmp_path / "legacy.db"
    build_legacy(source)
    conn = sqlite3.connect(source, isolation_level=None)
    conn.execute("CREATE TABLE padding (x BLOB)")
    conn.executemany("INSERT INTO padding VALUES (?)", [(os.urandom(1 << 20),)] * 6)
    conn.close()
    with small_disk(tmp_path / "small") as small:
        async with Store(StoreConfig(projects_dir=small / "projects")) as tiny:
            with pytest.raises(StorageError, match="the legacy import needs"):
                await tiny.import_legacy(source)
            assert not (small / "projects" / "alpha").exists()
