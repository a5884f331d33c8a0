"""The same API on PostgreSQL: backups (bundles), restore, migrate, quarantine, the legacy
import, and every command of the command line, on the real server.

Every test runs in the session's fresh database (conftest.pg_database_url); without a server
these tests are not collected and one line says so (with CI=true they fail).
"""

from __future__ import annotations

import io
import json
import sqlite3
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from demiarch_store import (
    BackupError,
    InvalidValue,
    NotSupported,
    ProjectNotFound,
    SchemaTooNew,
    Store,
    StoreConfig,
    StoreError,
)
from demiarch_store.bundles import MANIFEST_NAME, Manifest, write_bundle
from demiarch_store.cli import main
from demiarch_store.migrate import run_migrations
from demiarch_store.postgres.project import PgProject
from demiarch_store.schema import HEAD_REVISION

pytestmark = pytest.mark.anyio


@pytest.fixture
def pg_config(pg_database_url: str, tmp_path: Path) -> StoreConfig:
    return StoreConfig(
        projects_dir=tmp_path / "projects",
        database_url=pg_database_url,
        busy_deadline=2.0,
        acquire_timeout=5.0,
        keep_backups=2,
    )


async def _messages(project: Any, conversation_id: str) -> list[str]:
    async with project.read() as r:
        return [m.content for m in await r.messages.list(conversation_id)]


async def _dump(project: Any) -> Any:
    assert isinstance(project, PgProject)
    return await project._engine.dump(project.handle)


# -- backups ------------------------------------------------------------------------------------


async def test_backups_are_bundles_kept_in_the_projects_folder_and_restore_puts_one_back(
    pg_config: StoreConfig, tmp_path: Path
) -> None:
    async with Store(pg_config) as store:
        project = await store.create_project(name="backed up")
        async with project.transaction() as tx:
            conv = await tx.conversations.create(title="t")
            await tx.messages.append(conv.id, role="user", content="one")
        first = await project.backup()
        assert (
            first.parent == project.backups_dir == pg_config.projects_dir / project.id / "backups"
        )
        assert first.name.startswith("000001-") and first.name.endswith(".demiarch.zip")
        assert zipfile.ZipFile(first).namelist() == [MANIFEST_NAME, "database.sqlite"]
        for text in ("two", "three"):
            async with project.transaction() as tx:
                await tx.messages.append(conv.id, role="user", content=text)
            await project.backup()
        kept = project.backups()  # keep_backups=2: the first one was pruned
        assert [p.name[:6] for p in kept] == ["000003", "000002"]
        assert not first.exists()

        await project.restore(kept[1])  # the state after "two"
        assert await _messages(project, conv.id) == ["one", "two"]
        async with project.transaction() as tx:  # still open and usable
            await tx.messages.append(conv.id, role="user", content="after")
        assert await _messages(project, conv.id) == ["one", "two", "after"]

        # To a file, or into a folder; never over an existing file.
        named = await project.backup(tmp_path / "friday.demiarch.zip")
        assert named == tmp_path / "friday.demiarch.zip" and named.is_file()
        (tmp_path / "folder").mkdir()
        into = await project.backup(tmp_path / "folder")
        assert into.parent == tmp_path / "folder" and into.name.startswith("000001-")
        with pytest.raises(BackupError, match="already exists"):
            await project.backup(named)

        # restore_project goes through the store, and a backup imports as a new project.
        again = await store.restore_project(project.id, named)
        assert again is project
        assert await _messages(project, conv.id) == ["one", "two", "after"]
        copy = await store.import_project(kept[0], project_id=f"{project.id}_copy")
        assert await _messages(copy, conv.id) == ["one", "two", "three"]
        await store.delete_project(copy.id)
        await store.delete_project(project.id)
        assert kept[0].is_file()  # deleting a project on PostgreSQL keeps its backups


async def test_restore_refuses_another_projects_backup_and_bad_files(
    pg_config: StoreConfig, tmp_path: Path
) -> None:
    async with Store(pg_config) as store:
        mine = await store.create_project(name="mine")
        other = await store.create_project(name="other")
        async with mine.transaction() as tx:
            await tx.conversations.create(title="kept")
        before = await _dump(mine)
        theirs = await other.backup()
        with pytest.raises(BackupError, match="holds project") as caught:
            await mine.restore(theirs)
        assert caught.value.project == mine.id and "import" in (caught.value.hint or "")
        with pytest.raises(BackupError, match="no such bundle file"):
            await mine.restore(tmp_path / "missing.demiarch.zip")
        cut = tmp_path / "cut.demiarch.zip"
        cut.write_bytes(theirs.read_bytes()[:200])
        with pytest.raises(BackupError):
            await mine.restore(cut)
        assert await _dump(mine) == before


def _bundle_at_revision(source: Path, dest: Path, revision: str) -> None:
    """Rewrite a bundle as if written at ``revision`` (its manifest made consistent)."""
    work = dest.parent / "work.sqlite"
    with zipfile.ZipFile(source) as zf:
        work.write_bytes(zf.read("database.sqlite"))
        manifest = json.loads(zf.read(MANIFEST_NAME))
    conn = sqlite3.connect(work, isolation_level=None)
    conn.execute("UPDATE alembic_version SET version_num = ?", (revision,))
    conn.close()
    import hashlib

    manifest.pop("format")
    manifest.update(
        revision=revision,
        sha256=hashlib.sha256(work.read_bytes()).hexdigest(),
        size_bytes=work.stat().st_size,
    )
    with zipfile.ZipFile(dest, "w") as zf:
        zf.writestr(MANIFEST_NAME, Manifest(**manifest).to_json())
        zf.write(work, "database.sqlite")
    work.unlink()


async def test_a_backup_from_a_newer_revision_is_schema_too_new(
    pg_config: StoreConfig, tmp_path: Path
) -> None:
    async with Store(pg_config) as store:
        project = await store.create_project(name="newer")
        before = await _dump(project)
        newer = tmp_path / "newer.demiarch.zip"
        _bundle_at_revision(await project.backup(), newer, "9999")
        with pytest.raises(SchemaTooNew):
            await project.restore(newer)
        assert await _dump(project) == before


async def test_a_restore_that_fails_half_way_leaves_the_project_unchanged(
    pg_config: StoreConfig, tmp_path: Path
) -> None:
    """A bundle SQLite accepts but PostgreSQL refuses part-way: text holding a NUL character.

    The restore has emptied the project's tables and refilled those before ``messages`` when
    the server refuses the row: the transaction rolls back, and the project is exactly as it
    was, still usable.
    """
    async with Store(pg_config) as store:
        project = await store.create_project(name="half way")
        async with project.transaction() as tx:
            conv = await tx.conversations.create(title="t")
            await tx.messages.append(conv.id, role="user", content="on postgresql")
        bundle = await store.export_project(project.id, f"{tmp_path}/out/")
    sqlite_config = StoreConfig(projects_dir=tmp_path / "local")
    async with Store(sqlite_config) as local:
        copy = await local.import_project(bundle)
        async with copy.transaction() as tx:
            await tx.conversations.create(title="a second one")
            await tx.messages.append(conv.id, role="user", content="nul \x00 inside")
        poisoned_bundle = await local.export_project(copy.id, f"{tmp_path}/poisoned/")
    async with Store(pg_config) as store:
        project = await store.open_project(project.id)
        before = await _dump(project)
        with pytest.raises(StoreError) as caught:
            await project.restore(poisoned_bundle)
        # The bundle itself was sound (not a BackupError): the server refused a row.
        assert isinstance(caught.value, InvalidValue) and caught.value.project == project.id
        assert "restoring the project failed" in str(caught.value) and "NUL" in str(caught.value)
        assert await _dump(project) == before
        assert await _messages(project, conv.id) == ["on postgresql"]
        async with project.transaction() as tx:
            await tx.messages.append(conv.id, role="user", content="still usable")
        assert await _messages(project, conv.id) == ["on postgresql", "still usable"]


async def test_a_bundle_of_an_older_revision_is_migrated_on_import_and_restore(
    pg_config: StoreConfig, tmp_path: Path
) -> None:
    sqlite_config = StoreConfig(projects_dir=tmp_path / "local")
    async with Store(sqlite_config) as local:
        old = await local.create_project(name="old")
        async with old.transaction() as tx:
            conv = await tx.conversations.create(title="from 0004")
            await tx.messages.append(conv.id, role="user", content="kept")
        path = old.path
        await old.close()
    run_migrations(path, project=old.id, target="0004")
    bundle = write_bundle(path, tmp_path / "old.demiarch.zip", project_id=old.id, version="t")
    assert json.loads(zipfile.ZipFile(bundle).read(MANIFEST_NAME))["revision"] == "0004"
    async with Store(pg_config) as store:
        imported = await store.import_project(bundle)
        assert imported.revision == HEAD_REVISION
        assert await _messages(imported, conv.id) == ["kept"]
        async with imported.transaction() as tx:
            await tx.messages.append(conv.id, role="user", content="later")
        await imported.restore(bundle)
        assert await _messages(imported, conv.id) == ["kept"]
        await store.delete_project(imported.id)


# -- what differs -------------------------------------------------------------------------------


async def test_migrate_is_a_check_at_head_and_file_operations_are_not_supported(
    pg_config: StoreConfig,
) -> None:
    async with Store(pg_config) as store:
        project = await store.create_project(name="differs")
        assert await store.migrate_project(project.id) == (HEAD_REVISION, HEAD_REVISION)
        assert await store.migrate_project(project.id, to=HEAD_REVISION) == (
            HEAD_REVISION,
            HEAD_REVISION,
        )
        with pytest.raises(NotSupported, match="not available on PostgreSQL") as caught:
            await store.migrate_project(project.id, to="0001")
        assert "SQLite" in (caught.value.hint or "")
        with pytest.raises(ProjectNotFound):
            await store.migrate_project("no-such-project")
        with pytest.raises(NotSupported, match="quarantine") as quarantined:
            await store.quarantine_project(project.id, force=True)
        assert "restore" in (quarantined.value.hint or "")
        with pytest.raises(NotSupported, match="autovacuum does this"):
            await project.vacuum()
        with pytest.raises(NotSupported, match="autovacuum"):
            await project.optimize()
        async with project.read() as r:  # nothing changed
            assert [p.name for p in await r.projects.list()] == ["differs"]


def build_legacy(path: Path, ids: tuple[str, ...]) -> None:
    conn = sqlite3.connect(path, isolation_level=None)
    conn.executescript(
        """
        CREATE TABLE projects (id TEXT PRIMARY KEY, name TEXT NOT NULL, description TEXT,
            config TEXT, created_at INTEGER NOT NULL, updated_at INTEGER NOT NULL);
        CREATE TABLE conversations (id TEXT PRIMARY KEY, project_id TEXT NOT NULL, title TEXT,
            meta TEXT, created_at INTEGER NOT NULL, updated_at INTEGER NOT NULL);
        CREATE TABLE messages (id TEXT PRIMARY KEY, project_id TEXT NOT NULL,
            conversation_id TEXT NOT NULL, role TEXT NOT NULL, content TEXT NOT NULL,
            meta TEXT, created_at INTEGER NOT NULL);
        """
    )
    for pid in ids:
        conn.execute("INSERT INTO projects VALUES (?, ?, NULL, NULL, 1, 1)", (pid, pid.upper()))
        conn.execute(
            "INSERT INTO conversations VALUES (?, ?, 'old', NULL, 1, 1)", (f"{pid}-c", pid)
        )
        for n in range(3):
            conn.execute(
                "INSERT INTO messages VALUES (?, ?, ?, 'user', 'hi', NULL, ?)",
                (f"{pid}-m{n}", pid, f"{pid}-c", 1 + n),
            )
    conn.close()


async def test_import_legacy_splits_into_postgresql_projects_once(
    pg_config: StoreConfig, tmp_path: Path
) -> None:
    legacy = tmp_path / "ralph.db"
    build_legacy(legacy, ("legacy_a", "legacy_b", "Not Valid"))
    before = legacy.read_bytes()
    async with Store(pg_config) as store:
        report = await store.import_legacy(legacy)
        assert report.imported == ["legacy_a", "legacy_b"]
        assert "Not Valid" in report.skipped and report.rows["legacy_a"]["messages"] == 3
        again = await store.import_legacy(legacy)
        assert again.imported == [] and "imported before" in again.skipped["legacy_a"]
        project = await store.open_project("legacy_b")
        assert project.path is None and await _messages(project, "legacy_b-c") == ["hi"] * 3
        assert [i.name for i in await store.list_projects() if i.id.startswith("legacy_")] == [
            "LEGACY_A",
            "LEGACY_B",
        ]
        for pid in report.imported:
            await store.delete_project(pid)
    assert legacy.read_bytes() == before
    assert not pg_config.projects_dir.exists()  # nothing written to the projects directory


# -- the command line ---------------------------------------------------------------------------


@dataclass
class Result:
    code: int
    out: str
    err: str

    def json(self) -> Any:
        return json.loads(self.out)


@pytest.fixture
def cli(
    pg_database_url: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> Any:
    """Run the CLI in this process with ``--database-url`` (projects dir: backups only)."""
    monkeypatch.setenv("COLUMNS", "200")
    monkeypatch.delenv("DEMIARCH_DATABASE_URL", raising=False)
    base = ["--projects-dir", str(tmp_path / "projects"), "--database-url", pg_database_url]

    def invoke(*args: str, input: str | None = None) -> Result:
        capsys.readouterr()
        monkeypatch.setattr(sys, "stdin", io.StringIO(input or ""))
        code = main([*base, *args])
        captured = capsys.readouterr()
        return Result(code, captured.out, captured.err)

    return invoke


def one_error_line(result: Result) -> str:
    assert result.code == 1, result
    lines = result.err.strip().splitlines()
    assert len(lines) == 1, result.err
    assert lines[0].startswith("error: ")
    return lines[0]


def test_every_command_works_on_postgresql(cli: Any, tmp_path: Path) -> None:
    created = cli("create", "on the server", "--description", "cli", "--json")
    assert created.code == 0, created.err
    pid = created.json()["id"]
    assert "PostgreSQL database" in created.json()["path"]

    listed = cli("list")
    assert listed.code == 0 and pid in listed.out and "in the PostgreSQL database" in listed.out
    assert "Left out" not in listed.out

    demo = cli("demo", "--agents", "2", "--turns", "2")
    assert demo.code == 0, demo.err
    assert "Stored in" in demo.out and "LLM calls" in demo.out

    shown = cli("show", pid, "--json").json()
    assert shown["engine"] == "postgresql" and shown["name"] == "on the server"
    assert shown["tables"]["projects"] == 1 and shown["revision"] == HEAD_REVISION
    text = cli("show", pid)
    assert text.code == 0 and "Stored in" in text.out and "Files" not in text.out

    stats = cli("stats", pid, "--json")
    assert stats.code == 0, stats.err
    assert stats.json()["tables"]["projects"] == 1 and "commits" in stats.json()["pool"]
    assert "Stored in" in cli("stats", pid).out

    checked = cli("check", pid)
    assert checked.code == 0 and "healthy" in checked.out and "Pages" not in checked.out
    every = cli("check", "--all", "--json")
    assert every.code == 0 and pid in [r["id"] for r in every.json()]

    revision = cli("revision", pid)
    assert revision.code == 0 and "up to date" in revision.out
    assert cli("migrate", pid).out.strip() == f"{pid}: already at {HEAD_REVISION}"
    assert cli("migrate", "--all").code == 0
    assert cli("costs", pid).code == 0

    backup = cli("backup", pid, "--json")
    assert backup.code == 0, backup.err
    path = Path(backup.json()["backup"])
    assert path.parent == tmp_path / "projects" / pid / "backups" and path.is_file()
    to = cli("backup", pid, "--to", str(tmp_path / "friday.demiarch.zip"))
    assert to.code == 0 and (tmp_path / "friday.demiarch.zip").is_file()

    refused = cli("restore", pid, str(path), input="n\n")
    assert refused.code == 1 and "Replace the records of project" in refused.err
    restored = cli("restore", pid, str(path), "--yes")
    assert restored.code == 0 and f"Restored project {pid}" in restored.out

    exported = cli("export", pid, f"{tmp_path}/bundles/")
    assert exported.code == 0, exported.err
    bundle = tmp_path / "bundles" / f"{pid}.demiarch.zip"
    taken = cli("import", str(bundle))
    assert "--id NEW_ID" in one_error_line(taken)
    imported = cli("import", str(bundle), "--id", f"{pid}_copy", "--json")
    assert imported.code == 0 and imported.json()["id"] == f"{pid}_copy"

    legacy = tmp_path / "ralph.db"
    build_legacy(legacy, ("cli_legacy",))
    assert cli("import-legacy", str(legacy), "--json").json()["imported"] == ["cli_legacy"]

    asked = cli("delete", pid, input="n\n")
    assert asked.code == 1 and "backups in" in asked.err and "are kept" in asked.err
    for gone in (pid, f"{pid}_copy", "cli_legacy", demo_id(demo.out)):
        assert cli("delete", "--yes", gone).code == 0
    assert pid not in cli("list").out
    assert path.is_file()  # the backups stay


def demo_id(out: str) -> str:
    return out.strip().splitlines()[-1].split()[-1]


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["vacuum", "{pid}"], "PostgreSQL's autovacuum does this"),
        (["quarantine", "--yes", "{pid}"], "quarantine is not available on PostgreSQL"),
        (["migrate", "{pid}", "--to", "0001", "--yes"], "export the project and import it"),
        (["migrate", "--all", "--to", "0001"], "not available on PostgreSQL"),
        (["show", "no-such-project"], "no such project"),
        (["restore", "--yes", "{pid}", "{tmp}/missing.demiarch.zip"], "no such bundle file"),
    ],
)
def test_what_postgresql_cannot_do_is_one_line_saying_why(
    cli: Any, tmp_path: Path, args: list[str], says: str
) -> None:
    pid = cli("create", "refusals", "--json").json()["id"]
    try:
        result = cli(*(a.format(pid=pid, tmp=tmp_path) for a in args))
        assert says in one_error_line(result)
    finally:
        assert cli("delete", "--yes", pid).code == 0


def test_an_unreachable_database_is_one_line(tmp_path: Path, capsys: Any) -> None:
    url = "postgresql://postgres@127.0.0.1:5432/demiarch_no_such_database"
    code = main(["--projects-dir", str(tmp_path), "--database-url", url, "list"])
    err = capsys.readouterr().err
    assert code == 1
    assert one_error_line(Result(code, "", err)).startswith("error: cannot connect")
