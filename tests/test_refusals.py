"""What the library refuses: each case on real files, real processes and a real terminal.

Destructive operations touch only what the library made; a file from elsewhere is checked
against the schema the library's own revision makes before anything in it runs; misuse is an
error, never a silently dropped write. (docs/refusals.md: "What the library refuses".)
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
import sys
import zipfile
import zlib
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path

import pytest
from test_legacy import build_legacy

from demiarch_store import (
    AsyncProjectStore,
    BackupError,
    BundleError,
    ConstraintViolation,
    CorruptDatabase,
    ForeignFiles,
    ProjectHealthy,
    ProjectNotFound,
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


async def test_a_backup_with_the_same_schema_in_another_column_order_is_accepted(
    store: Store, tmp_path: Path
) -> None:
    """Column order is not checked: an ALTER TABLE appends, a CREATE TABLE may not."""
    project = await _filled(store)
    backup = await project.backup(tmp_path / "reordered.sqlite")
    conn = sqlite3.connect(backup, isolation_level=None)
    conn.executescript(
        """
        CREATE TABLE plugins_new (
            name VARCHAR(200) NOT NULL, id VARCHAR(32) NOT NULL, updated_at BIGINT NOT NULL,
            version VARCHAR(64), enabled BOOLEAN NOT NULL, config TEXT, state TEXT,
            installed_at BIGINT NOT NULL,
            CONSTRAINT pk_plugins PRIMARY KEY (id), CONSTRAINT uq_plugins_name UNIQUE (name));
        DROP TABLE plugins;
        ALTER TABLE plugins_new RENAME TO plugins;
        """
    )
    conn.close()
    restored = await store.restore_project(project.id, backup)
    async with restored.read() as r:
        assert await r.messages.count() == 5


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


async def test_a_bundle_whose_members_overlap_is_refused(store: Store, tmp_path: Path) -> None:
    """The zip-bomb trick of pointing several entries at one compressed stream."""
    project = await _filled(store)
    bundle = await store.export_project(project.id, tmp_path)
    manifest, database = _bundle_members(bundle)
    text = json.dumps(manifest).encode()
    zipped = _raw_zip(
        tmp_path / "overlap.zip",
        [("manifest.json", text, len(text)), ("database.sqlite", database, len(database))],
    )
    data = bytearray(zipped.read_bytes())
    entries = [i for i in range(len(data)) if data[i : i + 4] == b"PK\x01\x02"]
    first_offset = struct.unpack_from("<I", data, entries[0] + 42)[0]
    struct.pack_into("<I", data, entries[1] + 42, first_offset + 1)  # inside the manifest's
    zipped.write_bytes(bytes(data))
    with pytest.raises(BundleError, match="members overlap"):
        await store.import_project(zipped, project_id="overlap")
    assert not (store.projects_dir / "overlap").exists()


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


# -- destructive operations touch only what the library made -----------------------------------


def _tree(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file() and not p.name.endswith("-shm")
    }


def _user_folders(root: Path) -> Path:
    """A folder of a person's own work, with sub-folders whose names look like project IDs."""
    (root / "photos").mkdir(parents=True)
    (root / "photos" / "cat.jpg").write_bytes(b"\xff\xd8 a cat")
    (root / "notes").mkdir()
    (root / "notes" / "todo.txt").write_text("buy milk\n")
    (root / "empty").mkdir()
    return root


async def test_a_projects_dir_one_level_too_high_lists_no_project_and_deletes_nothing(
    tmp_path: Path,
) -> None:
    home = _user_folders(tmp_path / "home")
    before = _tree(home)
    async with Store(StoreConfig(projects_dir=home)) as store:
        assert await store.list_projects() == []  # none of them was ever a project
        for folder in ("photos", "notes", "empty"):
            with pytest.raises(ProjectNotFound, match="not a demiarch-store project") as caught:
                await store.delete_project(folder)
            assert "the folder was left as it is" in str(caught.value)
            with pytest.raises(ProjectNotFound, match="not a demiarch-store project"):
                await store.open_project(folder)
    assert _tree(home) == before
    assert (home / "empty").is_dir()


async def test_delete_refuses_a_project_folder_holding_files_it_did_not_make(
    store: Store,
) -> None:
    project = await _filled(store)
    await project.backup()
    folder = project.path.parent
    (folder / "notes.txt").write_text("my notes about this project")
    (folder / "backups" / "keep-me.sqlite").write_bytes(b"a copy I made myself")
    (folder / "drafts").mkdir()
    with pytest.raises(ForeignFiles) as caught:
        await store.delete_project(project.id)
    message = str(caught.value)
    assert "'backups/keep-me.sqlite'" in message and "'drafts/'" in message
    assert "'notes.txt'" in message and "nothing was deleted" in message
    async with project.read() as r:  # not even closed
        assert await r.messages.count() == 5

    for extra in ("notes.txt", "backups/keep-me.sqlite"):
        (folder / extra).unlink()
    (folder / "drafts").rmdir()
    await store.delete_project(project.id)
    assert not folder.exists()


async def test_delete_removes_backups_quarantine_and_leftovers_the_library_made(
    store: Store,
) -> None:
    project = await _filled(store)
    await project.backup()
    await project.backup()
    await store.quarantine_project(project.id, force=True)
    folder = project.path.parent
    (folder / f".database.sqlite.restore-{2**22 + 7}-0abc").write_bytes(b"a restore that died")
    assert sorted(p.name for p in folder.iterdir()) == [
        ".database.sqlite.restore-4194311-0abc",
        ".demiarch-project",
        "backups",
        "database.sqlite",
        "quarantine",
    ]
    await store.delete_project(project.id)
    assert not folder.exists()


async def test_a_project_whose_database_is_missing_is_not_a_folder_that_never_was_one(
    store: Store,
) -> None:
    project = await _filled(store, "lost its database")
    await project.close()
    project.path.unlink()
    (store.projects_dir / "stranger").mkdir()
    [info] = await store.list_projects()
    assert (info.id, info.status) == (project.id, "empty")
    assert "no database file" in str(info.error)
    with pytest.raises(CorruptDatabase, match="no database file"):
        await store.open_project(project.id)
    with pytest.raises(ProjectNotFound, match="not a demiarch-store project"):
        await store.open_project("stranger")
    await store.delete_project(project.id)  # what is left is the library's: the marker
    assert not project.path.parent.exists()
    assert (store.projects_dir / "stranger").is_dir()


async def test_a_project_from_before_the_marker_is_recognised_and_gets_one(
    store: Store,
) -> None:
    project = await _filled(store, "old")
    await project.close()
    marker = project.path.parent / ".demiarch-project"
    marker.unlink()
    [info] = await store.list_projects()
    assert (info.id, info.status) == (project.id, "ok")  # its database says it is one
    assert not marker.exists()  # listing changes nothing
    reopened = await store.open_project(project.id)
    assert marker.read_text() == f"demiarch-store project {project.id}\n"
    assert oct(marker.stat().st_mode & 0o777) == "0o600"
    await reopened.close()


async def test_quarantine_of_a_healthy_project_is_refused_unless_forced(store: Store) -> None:
    project = await _filled(store)
    await project.backup()
    async with project.transaction() as tx:
        await tx.conversations.create(title="written after the backup")
    with pytest.raises(ProjectHealthy) as caught:
        await store.quarantine_project(project.id)
    assert "restore" in str(caught.value) and "force=True" in str(caught.value)
    async with project.read() as r:  # untouched and still open
        assert len(await r.conversations.list()) == 2
    assert not (project.path.parent / "quarantine").exists()
    await project.close()
    with pytest.raises(ProjectHealthy):  # closed: its file is checked read-only
        await store.quarantine_project(project.id)
    await store.quarantine_project(project.id, force=True)
    async with (await store.open_project(project.id)).read() as r:
        assert len(await r.conversations.list()) == 1  # the backup's


# -- misuse of the model: a constraint names the kind of record --------------------------------


async def test_a_constraint_violation_names_the_kind_of_record_missing(
    project: AsyncProjectStore,
) -> None:
    with pytest.raises(ConstraintViolation) as caught:
        async with project.transaction() as tx:
            await tx.messages.append("no-such-conversation", role="user", content="hi")
    assert "the conversation this message refers to does not exist" in str(caught.value)
    with pytest.raises(ConstraintViolation) as caught:
        async with project.transaction() as tx:
            await tx.llm_calls.record(
                model="m", input_tokens=1, output_tokens=1, cost_usd=0, agent_id="nobody"
            )
    assert "the agent this llm call refers to does not exist" in str(caught.value)
    assert "no-such" not in str(caught.value)  # never a value


# -- the command line ----------------------------------------------------------------------------

TIMEOUT = 60


def cli(projects_dir: Path, *args: str, input: str = "") -> subprocess.CompletedProcess[str]:
    """Run ``demiarch-store`` as a real process with its output piped (not a terminal)."""
    env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES")}
    return subprocess.run(
        [sys.executable, "-m", "demiarch_store", "--projects-dir", str(projects_dir), *args],
        input=input,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        env=env,
    )


def _created(projects_dir: Path, name: str = "my app") -> str:
    made = cli(projects_dir, "create", name, "--json")
    assert made.returncode == 0, made.stderr
    project_id: str = json.loads(made.stdout)["id"]
    return project_id


def test_cli_delete_refuses_folders_it_did_not_make(tmp_path: Path) -> None:
    home = _user_folders(tmp_path / "home")
    before = _tree(home)
    listed = cli(home, "list")
    assert listed.returncode == 0
    assert "No projects in" in listed.stdout
    assert "Left out 3 folders that are not a project (no database, no marker): " in listed.stdout
    for folder in ("photos", "empty"):
        refused = cli(home, "delete", "--yes", folder)
        assert refused.returncode == 1
        assert refused.stderr.startswith("error: the folder is not a demiarch-store project")
    assert _tree(home) == before and (home / "empty").is_dir()

    projects = tmp_path / "projects"
    project_id = _created(projects)
    (projects / project_id / "report.pdf").write_bytes(b"%PDF")
    refused = cli(projects, "delete", "--yes", project_id)
    assert refused.returncode == 1
    assert "holds files demiarch-store did not make: 'report.pdf'" in refused.stderr
    (projects / project_id / "report.pdf").unlink()
    assert cli(projects, "backup", project_id).returncode == 0
    asked = cli(projects, "delete", project_id, input="n\n")
    assert f"Delete project {project_id} ('my app'): its database, 1 backup in " in asked.stderr
    assert "(The folder holds nothing else.)" in asked.stderr
    assert cli(projects, "delete", "--yes", project_id).returncode == 0
    assert not (projects / project_id).exists()


def test_cli_quarantine_refuses_a_healthy_project_and_its_prompt_names_what_replaces_what(
    tmp_path: Path,
) -> None:
    projects = tmp_path / "projects"
    project_id = _created(projects)
    asyncio.run(_add(projects, project_id, 3))
    assert cli(projects, "backup", project_id).returncode == 0
    asyncio.run(_add(projects, project_id, 4))
    refused = cli(projects, "quarantine", "--yes", project_id)
    assert refused.returncode == 1
    line = refused.stderr.strip()
    assert line.startswith("error: the project's database is healthy")
    assert f"restore {project_id} BACKUP" in line and "add `--force`" in line
    assert "()" not in line and "force=True" not in line

    asked = cli(projects, "quarantine", "--force", project_id, input="n\n")
    assert asked.returncode == 1
    prompt = asked.stderr
    assert f"Project {project_id} is healthy. Its database now holds: 1 conversation, " in prompt
    assert "7 messages" in prompt  # the live counts
    [backup] = (projects / project_id / "backups").iterdir()
    stamp = backup.stem.split("-")[1]
    when = f"{stamp[:4]}-{stamp[4:6]}-{stamp[6:8]} {stamp[9:11]}:{stamp[11:13]}:{stamp[13:15]} UTC"
    assert f"The backup {backup.name} taken {when} (1 conversation, 3 messages)" in prompt
    assert not (projects / project_id / "quarantine").exists()

    done = cli(projects, "quarantine", "--force", project_id, input="y\n")
    assert done.returncode == 0, done.stderr
    shown = json.loads(cli(projects, "show", project_id, "--json").stdout)
    assert shown["tables"]["messages"] == 3


async def _add(projects: Path, project_id: str, count: int) -> None:
    async with Store(StoreConfig(projects_dir=projects)) as store:
        project = await store.open_project(project_id)
        async with project.transaction() as tx:
            convs = await tx.conversations.list()
            conv = convs[0] if convs else await tx.conversations.create(title="c")
            await tx.messages.append_many(conv.id, [{"role": "user", "content": "x"}] * count)


def test_cli_read_commands_report_a_missing_projects_dir_and_create_says_it_creates_it(
    tmp_path: Path,
) -> None:
    missing = tmp_path / "typo" / "projects"
    for args in (["list"], ["check", "--all"], ["migrate", "--all"], ["show", "abc"]):
        result = cli(missing, *args)
        assert result.returncode == 1, args
        assert "the projects directory does not exist" in result.stderr, args
        assert "No projects" not in result.stdout
    assert not missing.exists()
    made = cli(missing, "create", "first")
    assert made.returncode == 0
    assert made.stderr.strip() == f"Created the projects directory {missing} (it did not exist)"
    again = cli(missing, "create", "second")
    assert again.stderr == ""


def test_cli_export_to_a_new_folder_with_a_trailing_slash(tmp_path: Path) -> None:
    projects = tmp_path / "projects"
    project_id = _created(projects)
    folder = tmp_path / "exports"
    result = cli(projects, "export", project_id, f"{folder}/", "--json")
    assert result.returncode == 0, result.stderr
    assert folder.is_dir(), "a file was written with the folder's name"
    assert json.loads(result.stdout)["bundle"] == str(folder / f"{project_id}.demiarch.zip")
    nested = tmp_path / "a" / "b"
    assert cli(projects, "export", project_id, f"{nested}/").returncode == 0
    assert (nested / f"{project_id}.demiarch.zip").is_file()


def test_cli_json_before_or_after_the_command(tmp_path: Path) -> None:
    projects = tmp_path / "projects"
    project_id = _created(projects)
    for args in (["--json", "list"], ["list", "--json"], ["--json", "show", project_id]):
        result = cli(projects, *args)
        assert result.returncode == 0, result.stderr
        data = json.loads(result.stdout)
        assert (data[0] if isinstance(data, list) else data)["id"] == project_id


def test_cli_hints_name_commands_never_python_calls(tmp_path: Path) -> None:
    projects = tmp_path / "projects"
    healthy = _created(projects, "healthy")
    broken = _created(projects, "broken")
    database = projects / broken / "database.sqlite"
    database.write_bytes(b"overwritten by mistake" * 100)
    bundle = tmp_path / "b.zip"
    assert cli(projects, "export", healthy, str(bundle)).returncode == 0
    legacy = tmp_path / "legacy.db"
    sqlite3.connect(legacy).close()
    errors = [
        cli(projects, "show", broken),  # CorruptDatabase: "store.quarantine_project() ..."
        cli(projects, "import", str(bundle)),  # ProjectExists
        cli(projects, "import-legacy", str(legacy)),  # "point import_legacy() at ..."
        cli(projects, "quarantine", "--yes", healthy),  # "force=True"
    ]
    for result in errors:
        assert result.returncode == 1
        line = result.stderr.strip()
        assert line.startswith("error: ") and "demiarch-store" in line, line
        assert "()" not in line and "=True" not in line and "project_id=" not in line, line


# -- a real terminal, narrow, and piped output: nothing is cut --------------------------------


def _pty(args: list[str], *, columns: int) -> str:
    """Run the CLI on a pseudo-terminal ``columns`` wide; return what it displayed."""
    import fcntl
    import pty
    import re
    import select
    import termios
    import time

    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, columns, 0, 0))
    drop = {"COLUMNS", "LINES", "NO_COLOR", "FORCE_COLOR", "TTY_COMPATIBLE", "TTY_INTERACTIVE"}
    env = {k: v for k, v in os.environ.items() if k not in drop}
    proc = subprocess.Popen(
        [sys.executable, "-m", "demiarch_store", *args],
        stdin=slave,
        stdout=slave,
        stderr=slave,
        env={**env, "TERM": "xterm-256color"},
        start_new_session=True,
    )
    os.close(slave)
    seen = b""
    deadline = time.monotonic() + TIMEOUT
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 1.0)
            if not ready:
                if proc.poll() is not None:
                    break
                continue
            try:
                chunk = os.read(master, 4096)
            except OSError:
                break
            if not chunk:
                break
            seen += chunk
        assert proc.wait(timeout=TIMEOUT) == 0, seen.decode(errors="replace")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=TIMEOUT)
        os.close(master)
    text = seen.decode(errors="replace")
    return re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", text).replace("\r", "")


def _costly_project(projects: Path) -> tuple[str, str]:
    project_id = _created(projects, "a project with a rather long name for a narrow terminal")

    async def spend() -> None:
        async with Store(StoreConfig(projects_dir=projects)) as store:
            project = await store.open_project(project_id)
            async with project.transaction() as tx:
                await tx.llm_calls.record(
                    model="gpt-x-very-long-model-name-2026",
                    input_tokens=1234567,
                    output_tokens=7654321,
                    cost_usd=Decimal("1234.567891"),
                )

    asyncio.run(spend())
    return project_id, "1234.567891"


@pytest.mark.parametrize("columns", [40, 60])
def test_a_narrow_terminal_never_cuts_an_id_a_path_or_an_amount(
    tmp_path: Path, columns: int
) -> None:
    projects = tmp_path / "a-rather-deep-folder-for-projects" / "projects"
    project_id, amount = _costly_project(projects)
    base = ["--projects-dir", str(projects)]
    listed = _pty([*base, "list"], columns=columns)
    assert project_id in listed and "1 project in" in listed
    shown = _pty([*base, "show", project_id], columns=columns)
    assert str(projects / project_id / "database.sqlite") in shown
    assert amount in shown
    costs = _pty([*base, "costs", project_id], columns=columns)
    assert amount in costs and "1,234,567" in costs and "gpt-x-very-long-model-name-2026" in costs
    assert "…" not in listed + shown + costs


def test_piped_output_never_cuts_an_id_a_path_or_an_amount(tmp_path: Path) -> None:
    projects = tmp_path / ("a-rather-deep-folder-" * 4) / "projects"
    project_id, amount = _costly_project(projects)
    shown = cli(projects, "show", project_id)
    assert str(projects / project_id / "database.sqlite") in shown.stdout
    assert amount in shown.stdout
    listed = cli(projects, "list")
    assert f"1 project in {projects}" in listed.stdout
    costs = cli(projects, "costs", project_id)
    assert amount in costs.stdout and "gpt-x-very-long-model-name-2026" in costs.stdout
    assert "…" not in shown.stdout + listed.stdout + costs.stdout


# -- the docs page -----------------------------------------------------------------------------


def test_the_docs_page_runs_and_prints_what_it_shows(tmp_path: Path) -> None:
    import re

    # docs/refusals.md marks this block "checked by" this test; tests/test_docs_examples.py
    # leaves it to this one, which compares the output exactly.
    section = (Path(__file__).resolve().parent.parent / "docs" / "refusals.md").read_text()
    code = re.search(r"```python\n(.*?)```", section, re.S)
    shown = re.search(r"Output:\n\n```text\n(.*?)```", section, re.S)
    assert code and shown
    done = subprocess.run(
        [sys.executable, "-c", code.group(1)],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout == shown.group(1)
