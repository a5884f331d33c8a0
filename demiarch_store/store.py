"""``Store``: the projects directory, the projects open in this process, and discovery."""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import re
import shutil
import sqlite3
import stat
from collections import OrderedDict
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, Literal, Self

from .backup import (
    _BACKUP_NAME,
    _PARTIAL_NAME,
    _RESTORE_NAME,
    BACKUPS_DIR,
    QUARANTINE_DIR,
    Staging,
    list_backups,
    make_private_dir,
    quarantine_database,
    stage_restore,
    write_marker,
    write_snapshot,
)
from .config import StoreConfig, load_config
from .errors import (
    BackupError,
    CorruptDatabase,
    ForeignFiles,
    InvalidProjectId,
    InvalidValue,
    NotSupported,
    ProjectHealthy,
    ProjectNotFound,
    StorageError,
    StoreClosed,
    StoreError,
    translate,
)
from .ids import DATABASE_NAME, MARKER_NAME, new_project_id, validate_project_id
from .migrate import known_revisions, read_revision, run_migrations
from .project import AsyncProjectStore, FileKey, claim_project_dir, open_files
from .schema import HEAD_REVISION
from .sqlite.connection import readonly_uri

if TYPE_CHECKING:
    from .legacy import LegacyImportReport
    from .postgres.engine import PgEngine

__all__ = [
    "ProjectFiles",
    "ProjectInfo",
    "ProjectStatus",
    "Store",
    "database_problem",
    "describe",
    "discover",
    "good_backup",
    "not_projects",
    "project_files",
    "readonly_uri",
    "refuse_foreign",
    "row_counts",
    "scan",
]

ProjectStatus = Literal["ok", "empty", "corrupt", "newer_schema", "unreadable"]

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
log = logging.getLogger("demiarch_store")


@dataclass(frozen=True, slots=True)
class ProjectInfo:
    """What discovery learns about one project directory, without changing anything."""

    id: str
    name: str | None
    status: ProjectStatus
    updated_at: datetime | None
    path: Path | None
    """The project's directory; None on PostgreSQL (a project there is rows, not a file)."""
    size_bytes: int
    error: str | None = None
    revision: str | None = None


class Store:
    """All projects under one projects directory.

    ``async with Store(StoreConfig(projects_dir=path)) as store:`` creates, opens, lists and
    deletes projects; projects it opened are closed with it.
    """

    def __init__(self, config: StoreConfig | None = None) -> None:
        self.config = config if config is not None else load_config()
        # Open projects, least recently used first; at most max_open_projects idle ones.
        self._open: OrderedDict[str, AsyncProjectStore] = OrderedDict()
        self._opening: dict[str, asyncio.Future[AsyncProjectStore]] = {}
        self._closed = False
        self._pg: PgEngine | None = None
        """The PostgreSQL engine, once used (``config.database_url`` set)."""

    def __repr__(self) -> str:
        return f"<Store {str(self.config.projects_dir)!r} open={len(self._open)}>"

    @property
    def projects_dir(self) -> Path:
        return self.config.projects_dir

    async def __aenter__(self) -> Self:
        self._check_open()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def _postgres(self) -> PgEngine | None:
        """The PostgreSQL engine if the store has a ``database_url`` (opened on first use)."""
        if self.config.database_url is None:
            return None
        if self._pg is None:
            from .postgres.engine import PgEngine

            self._pg = PgEngine(self.config)
        await self._pg.open()
        return self._pg

    async def close(self) -> None:
        """Close every project this store opened. Idempotent."""
        self._closed = True
        projects = list(self._open.values())
        self._open.clear()
        results = await asyncio.gather(*(p.close() for p in projects), return_exceptions=True)
        if self._pg is not None:
            await self._pg.close()
        for result in results:
            if isinstance(result, BaseException):
                raise result

    def _check_open(self) -> None:
        if self._closed:
            raise StoreClosed(
                "the store is closed",
                path=self.projects_dir,
                hint="create a new Store",
            )

    # -- paths --------------------------------------------------------------------------------

    def project_dir(self, project_id: str) -> Path:
        """Return the directory of a project, refusing IDs and links that could escape."""
        validate_project_id(project_id)
        root = self.projects_dir
        directory = root / project_id
        if directory.is_symlink():
            raise InvalidProjectId(
                "the project directory is a symlink",
                project=project_id,
                path=directory,
                hint="replace the link with a real directory inside the projects directory",
            )
        if directory.exists() and directory.resolve().parent != root.resolve():
            raise InvalidProjectId(
                "the project directory resolves outside the projects directory",
                project=project_id,
                path=directory,
                hint="move the project into the projects directory",
            )
        return directory

    def database_path(self, project_id: str) -> Path:
        """Return ``<projects_dir>/<id>/database.sqlite``."""
        return self.project_dir(project_id) / DATABASE_NAME

    def _existing(self, project_id: str) -> Path:
        """Return the database path of a project whose directory exists; else ProjectNotFound.

        A folder is a project if it holds the library's marker or a database file (projects
        made before the marker existed); any other folder is not one.
        """
        path = self.database_path(project_id)
        if not path.parent.is_dir():
            raise ProjectNotFound(
                "no such project",
                project=project_id,
                path=path.parent,
                hint="list projects with Store.list_projects() or `demiarch-store list`",
            )
        if not _is_project_dir(path.parent):
            raise ProjectNotFound(
                "the folder is not a demiarch-store project: it holds no database and no "
                f"{MARKER_NAME} marker",
                project=project_id,
                path=path.parent,
                hint="check the projects directory (is it one level too high?); "
                "the folder was left as it is",
            )
        return path

    async def _settled(self, project_id: str) -> AsyncProjectStore | None:
        """Wait for an open of this project in progress; return the project if open."""
        pending = self._opening.get(project_id)
        if pending is not None:
            try:
                await asyncio.shield(pending)
            except StoreError:
                pass  # it failed to open (corrupt?): the caller may be the cure
        project = self._open.get(project_id)
        return project if project is not None and not project.closed else None

    # -- projects -----------------------------------------------------------------------------

    async def create_project(
        self, *, name: str, description: str | None = None, project_id: str | None = None
    ) -> AsyncProjectStore:
        """Create a project with a new ID (or the given one) and return it, open."""
        self._check_open()
        if (pg := await self._postgres()) is not None:
            from .postgres.project import PgProject

            row = await pg.create_project(name=name, description=description, project_id=project_id)
            self._open[row.id] = created = PgProject(pg, row)
            return created
        project_id = new_project_id() if project_id is None else validate_project_id(project_id)
        directory = self.project_dir(project_id)
        try:
            make_private_dir(self.projects_dir)
        except OSError as exc:
            raise StorageError(
                f"cannot create the projects directory: {exc.strerror}",
                project=project_id,
                path=self.projects_dir,
                hint="check that its parent is a directory you may write",
            ) from exc
        claim_project_dir(
            directory, project_id, hint="open it with open_project() or choose another ID"
        )
        project = AsyncProjectStore(
            directory / DATABASE_NAME, config=self.config, project_id=project_id
        )
        try:
            await project.open()
            async with project.transaction() as tx:
                await tx.projects.create(id=project_id, name=name, description=description)
        except BaseException:
            await project.close()
            shutil.rmtree(directory, ignore_errors=True)
            raise
        self._adopt(project)
        await self._trim(keep=project)
        return project

    async def open_project(self, project_id: str) -> AsyncProjectStore:
        """Return the open project with this ID, opening (and migrating) it if needed."""
        self._check_open()
        if (pg := await self._postgres()) is not None:
            from .postgres.project import PgProject

            known = self._open.get(project_id)
            if known is not None and not known.closed:
                return known
            self._open[project_id] = opened = PgProject(pg, await pg.project(project_id))
            return opened
        validate_project_id(project_id)
        project = self._open.get(project_id)
        if project is not None and not project.closed:
            self._open.move_to_end(project_id)
            return project
        pending = self._opening.get(project_id)
        if pending is not None:
            return await asyncio.shield(pending)
        future: asyncio.Future[AsyncProjectStore] = asyncio.get_running_loop().create_future()
        self._opening[project_id] = future
        try:
            path = self._existing(project_id)
            try:
                st = path.lstat()
                empty = stat.S_ISREG(st.st_mode) and st.st_size == 0
            except OSError:
                empty = False  # no file: AsyncProjectStore.open() explains, as for a link
            if empty:
                raise CorruptDatabase(
                    "the project's database file is empty (0 bytes): its data is lost",
                    project=project_id,
                    path=path,
                    hint="restore it from a backup, or delete the project",
                )
            project = AsyncProjectStore(
                path, config=self.config, project_id=project_id, create=False
            )
            await project.open()
            # A project from before the marker gets one: its database just opened, so it is
            # ours. (One open(O_EXCL) that fails at once when the marker is there.)
            write_marker(path.parent, project_id)
            self._adopt(project)
            future.set_result(project)
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()  # retrieved: the waiters re-raise it themselves
            raise
        finally:
            del self._opening[project_id]
        await self._trim(keep=project)
        return project

    def _adopt(self, project: AsyncProjectStore) -> None:
        self._open[project.id] = project
        self._open.move_to_end(project.id)
        project._on_close.append(self._forget)

    async def _trim(self, *, keep: AsyncProjectStore) -> None:
        """Close least recently used idle projects until at most ``max_open_projects`` are open.

        A project with work in flight is never closed; if every other project is busy, the
        store stays over the bound until the next open finds an idle one. Each victim is
        checked and starts closing without an await in between, so no unit of work can slip
        in; a caller still holding it gets ``StoreClosed`` and calls ``open_project`` again.
        """
        while len(self._open) > self.config.max_open_projects:
            victim = next((p for p in self._open.values() if p is not keep and not p.busy), None)
            if victim is None:
                return
            del self._open[victim.id]
            try:
                await victim.close()
            except StoreError:
                log.warning("closing idle project %s failed", victim.id, exc_info=True)
                raise

    def _forget(self, project: AsyncProjectStore) -> None:
        if self._open.get(project.id) is project:
            del self._open[project.id]

    async def delete_project(self, project_id: str) -> None:
        """Close the project if open, then delete what the library made for it.

        That is its database with its ``-wal`` and ``-shm``, its backups, its quarantined
        copies, its marker, then the folder. A folder holding anything else is refused, naming
        what it found, before anything is closed or removed. On PostgreSQL: deletes the
        project's rows from every table, in one transaction.

        Raises:
            ProjectNotFound: no such project, or the folder is not a project.
            ForeignFiles: the folder holds files the library did not make.
        """
        if (pg := await self._postgres()) is not None:
            await pg.delete_project(project_id)
            gone = self._open.pop(project_id, None)
            if gone is not None:
                await gone.close()
            return
        self._check_open()
        directory = self._existing(project_id).parent
        refuse_foreign(await asyncio.to_thread(project_files, directory), project_id)
        project = await self._settled(project_id)
        if project is not None:
            await project.close()
        files = await asyncio.to_thread(project_files, directory)  # closing removed the -wal
        refuse_foreign(files, project_id)
        try:
            await asyncio.to_thread(_remove_project, files)
        except OSError as exc:
            if exc.errno in (errno.ENOTEMPTY, errno.EEXIST):
                refuse_foreign(project_files(directory), project_id)
            raise StorageError(
                f"cannot delete the project: {exc.strerror}",
                project=project_id,
                path=directory,
                hint="check the permissions of the project directory",
            ) from exc

    async def migrate_project(
        self, project_id: str, to: str = "head"
    ) -> tuple[str | None, str | None]:
        """Migrate a project's schema to ``to`` and return its revisions ``(before, after)``.

        ``to`` is ``"head"`` (the default), ``"base"`` or a revision such as ``"0001"``; an
        older revision downgrades. The project is closed first if this store has it open, and
        stays closed (opening it again upgrades it back to head). A database holding data is
        backed up to ``<project dir>/backups/`` first. Raises ``ProjectNotFound``,
        ``CorruptDatabase`` (no database file), ``SchemaTooNew`` or ``MigrationError`` (the
        database is then left as it was).

        On PostgreSQL a database's projects are all at its revision: migrating to ``"head"``
        (or its revision) checks the project and returns ``(head, head)``; any other target
        raises ``NotSupported``.
        """
        self._check_open()
        if (pg := await self._postgres()) is not None:
            return await _migrate_postgres(pg, project_id, to)
        path = self._existing(project_id)
        if not path.is_file():
            raise CorruptDatabase(
                "the project has no database file",
                project=project_id,
                path=path,
                hint="restore it from a backup or delete the project",
            )
        if not isinstance(to, str):
            raise InvalidValue("the target revision must be a string such as 'head' or '0001'")
        project = await self._settled(project_id)
        if project is not None:
            await project.close()
        st = path.stat()
        holder = open_files().get((st.st_dev, st.st_ino))
        if holder is not None and not holder.closed:
            raise StoreError(
                "the project is open elsewhere in this process",
                project=project_id,
                path=path,
                hint="close that AsyncProjectStore first; its schema must not change under it",
            )
        return await asyncio.to_thread(
            run_migrations,
            path,
            project=project_id,
            target=to,
            busy_timeout_ms=int(self.config.busy_deadline * 1000),
        )

    # -- recovery -----------------------------------------------------------------------------

    async def restore_project(self, project_id: str, backup: Path | str) -> AsyncProjectStore:
        """Replace a project's database with a backup and return the project, open.

        The backup is checked before anything changes (see ``AsyncProjectStore.restore``); an
        open project is closed (its work in flight finishes first) and reopened on the restored
        file, migrated to head if the backup is older. The same project object stays valid.

        Raises:
            BackupError: the backup is missing, damaged or too new; the live database is
                untouched and the project stays open.
            DatabaseBusy: another process has the project open.
            ProjectNotFound: no such project.

        On PostgreSQL the backup is a bundle (``backup()``, ``export_project``) of this
        project; its rows replace the project's in one transaction (see ``PgProject.restore``).
        """
        self._check_open()
        if await self._postgres() is not None:  # a bundle replaces its rows in one transaction
            opened = await self.open_project(project_id)
            await opened.restore(backup)
            return opened
        path = self._existing(project_id)
        project = await self._settled(project_id)
        if project is not None:
            await project.restore(backup)
            return project
        project = AsyncProjectStore(path, config=self.config, project_id=project_id, create=False)
        await project.restore(backup)
        self._adopt(project)
        return project

    async def quarantine_project(self, project_id: str, *, force: bool = False) -> Path:
        """Move a damaged project's database files aside together, then restore a backup.

        The project is closed if open; ``database.sqlite`` and its ``-wal``, ``-shm`` (and
        ``-journal``) move into ``<project dir>/quarantine/<UTC time>-<suffix>/``; then the
        newest backup that passes the restore checks is put in place. Without one the project
        is left empty: ``open_project`` raises ``CorruptDatabase`` until a backup is restored.
        Returns the quarantine folder.

        A healthy database (it opens, passes ``quick_check`` and ``foreign_key_check`` and is
        at a revision this code knows) is not quarantined unless ``force=True``: the backup
        put back is older than it. To go back to a backup on purpose, restore it.

        Raises:
            DatabaseBusy: another process has the project open.
            NotSupported: on PostgreSQL (there is no file to move aside).
            ProjectHealthy: the database is healthy and ``force`` is not set.
            ProjectNotFound: no such project.
        """
        self._check_open()
        if await self._postgres() is not None:
            raise NotSupported(
                "quarantine is not available on PostgreSQL: it moves a damaged database file "
                "aside, and a project there lives in the server's database",
                project=project_id,
                hint="to go back to a backup, restore it (restore_project(), `demiarch-store "
                "restore ID BACKUP`); the server's own storage is guarded by its administrators "
                "(pg_dump, replicas)",
            )
        path = self._existing(project_id)
        if path.exists():
            await asyncio.to_thread(write_marker, path.parent, project_id)
        project = await self._settled(project_id)
        if not force:
            if project is not None:
                report = await project.check()
                # Its data, not the file's mode or a blocked checkpoint, makes it damaged.
                damaged = report.integrity != ("ok",) or bool(report.foreign_key_violations)
                problem = "; ".join(report.problems) if damaged else None
            else:
                problem = await asyncio.to_thread(database_problem, path)
            if problem is None:
                raise ProjectHealthy(
                    "the project's database is healthy: quarantine would replace it with an "
                    "older backup and what was written since would be set aside",
                    project=project_id,
                    path=path,
                    hint="to go back to a backup, restore it (`demiarch-store restore ID "
                    "BACKUP`); to quarantine it all the same, pass force=True (`--force`)",
                )
        if project is not None:
            try:
                await project.close()
            except StoreError as exc:
                # A damaged file may not close cleanly; its files move aside all the same.
                log.warning("closing project %s before quarantine: %s", project_id, exc)
        try:
            target, restored = await asyncio.to_thread(
                quarantine_database, path, project=project_id
            )
        except StoreError:
            raise
        except OSError as exc:
            raise StorageError(
                f"cannot move the database aside: {exc.strerror}",
                project=project_id,
                path=path,
                hint="check the permissions of the project directory",
            ) from exc
        if restored is None:
            log.warning("project %s quarantined in %s; no good backup found", project_id, target)
        else:
            log.warning("project %s quarantined in %s; restored %s", project_id, target, restored)
        return target

    # -- bundles ------------------------------------------------------------------------------

    async def export_project(self, project_id: str, dest: Path | str) -> Path:
        """Write the project to one portable bundle file and return its path.

        ``dest`` is the bundle's path, or a directory to hold ``<id>.demiarch.zip`` (a string
        ending in ``/`` names a directory, created if missing). The bundle
        is a zip of a consistent online snapshot (taken on one of the project's reader
        connections while writers carry on) and a manifest with the project's ID, name, schema
        revision, SHA-256 and creation time. An existing file is never replaced.

        Raises ``BundleError`` if ``dest`` exists, ``ProjectNotFound`` or ``CorruptDatabase``
        for the project, ``StorageError`` if the file cannot be written.
        """
        from .__version__ import __version__
        from .bundles import export_target, write_bundle

        project = await self.open_project(project_id)
        if (pg := await self._postgres()) is not None:
            return await self._export_postgres(pg, project, dest, __version__)
        pool = project.pool
        try:
            target = await asyncio.to_thread(export_target, dest, project_id)
        except OSError as exc:
            raise StorageError(
                f"cannot create the folder for the bundle: {exc.strerror}",
                project=project_id,
                path=Path(dest),
                hint="check that its parent is a directory you may write",
            ) from exc
        try:
            staging = await asyncio.to_thread(Staging, target.parent, ".demiarch-export-")
        except OSError as exc:
            raise StorageError(
                f"cannot write the bundle: {exc.strerror}",
                project=project_id,
                path=target,
                hint="check that the directory exists and is writable",
            ) from exc
        try:
            snapshot = staging.path / DATABASE_NAME
            await project._on_reader(
                write_snapshot,
                snapshot,
                error=lambda exc: pool.translate(exc, "exporting the project"),
            )
            try:
                return await asyncio.to_thread(
                    write_bundle, snapshot, target, project_id=project_id, version=__version__
                )
            except (OSError, sqlite3.Error) as exc:
                raise pool.translate(exc, "writing the bundle") from exc
        finally:
            await asyncio.to_thread(staging.close)

    async def _export_postgres(
        self, pg: PgEngine, project: AsyncProjectStore, dest: Path | str, version: str
    ) -> Path:
        """Export a PostgreSQL project: its rows, in one snapshot, into a bundle's database."""
        from .bundles import export_target
        from .postgres.bundles import write_rows_bundle
        from .postgres.project import PgProject

        assert isinstance(project, PgProject)
        try:
            target = await asyncio.to_thread(export_target, dest, project.id)
        except OSError as exc:
            raise StorageError(
                f"cannot create the folder for the bundle: {exc.strerror}",
                project=project.id,
                path=Path(dest),
                hint="check that its parent is a directory you may write",
            ) from exc
        rows = await pg.dump(project.handle)
        try:
            return await asyncio.to_thread(
                write_rows_bundle, rows, target, project_id=project.id, version=version
            )
        except (OSError, sqlite3.Error) as exc:
            raise translate(
                exc, project=project.id, path=target, action="writing the bundle"
            ) from exc

    async def _import_postgres(
        self, pg: PgEngine, bundle: Path, project_id: str | None
    ) -> AsyncProjectStore:
        """Import a bundle into PostgreSQL: verified as on SQLite, then copied in one unit."""
        from .postgres.bundles import bundle_rows
        from .postgres.project import PgProject

        try:
            rows, manifest = await asyncio.to_thread(bundle_rows, bundle, project_id)
        except OSError as exc:
            raise translate(
                exc, project=project_id, path=bundle, action="importing the bundle"
            ) from None
        row = await pg.create_project(
            name=manifest.name or "",
            description=None,
            project_id=project_id or manifest.project_id,
            rows=rows,
        )
        self._open[row.id] = project = PgProject(pg, row)
        return project

    async def import_project(
        self, bundle: Path | str, *, project_id: str | None = None
    ) -> AsyncProjectStore:
        """Import a bundle as a new project and return it, open.

        The project keeps the bundle's ID unless ``project_id`` gives a new one (its project
        record is renamed to match). The bundle is verified completely (members, manifest,
        size, SHA-256, integrity check) on a staging copy first: a truncated, tampered or
        unsafe bundle raises ``BundleError`` and nothing is written to the projects directory.

        Raises ``ProjectExists`` if the ID is taken, ``SchemaTooNew`` if the bundle comes from
        a newer demiarch-store, ``InvalidProjectId`` for a bad ``project_id``.
        """
        from .bundles import install_bundle

        self._check_open()
        if project_id is not None:
            validate_project_id(project_id)
        bundle = Path(bundle)
        if (pg := await self._postgres()) is not None:
            return await self._import_postgres(pg, bundle, project_id)
        job = asyncio.ensure_future(
            asyncio.to_thread(install_bundle, bundle, self.projects_dir, project_id)
        )
        try:
            directory = await asyncio.shield(job)
        except asyncio.CancelledError:
            # The thread cannot be stopped: let it finish, then undo what it wrote.
            await asyncio.wait([job])
            if not job.cancelled() and job.exception() is None:
                await asyncio.to_thread(shutil.rmtree, job.result(), True)
            raise
        except OSError as exc:
            raise translate(
                exc, project=project_id, path=bundle, action="importing the bundle"
            ) from None
        try:
            return await self.open_project(directory.name)
        except BaseException:
            await asyncio.to_thread(shutil.rmtree, directory, True)
            raise

    # -- legacy -------------------------------------------------------------------------------

    async def import_legacy(self, db_path: Path | str) -> LegacyImportReport:
        """Split an old single global database into one project database each.

        Every row of the legacy ``projects`` table becomes ``<projects_dir>/<id>/`` with the
        rows of every schema table that belong to it (by ``project_id``, or through a foreign
        key to rows already copied). Idempotent: a project whose ID already exists is skipped,
        so a second run imports nothing twice. The source is opened read-only and never
        modified. Projects are not opened; ``open_project`` migrates them as usual.

        Returns a ``LegacyImportReport`` (imported, skipped with reasons, rows, notes). Raises
        ``StorageError`` or ``CorruptDatabase`` if the source cannot be read.

        On PostgreSQL each project is split into a temporary file as above, then copied into
        the database in one transaction (``import_project``'s way); a project whose ID the
        database already holds is skipped, so a second run imports nothing twice.
        """
        from .legacy import import_legacy

        self._check_open()
        if (pg := await self._postgres()) is not None:
            return await self._import_legacy_postgres(pg, Path(db_path))
        try:
            return await asyncio.to_thread(import_legacy, Path(db_path), self.projects_dir)
        except (OSError, sqlite3.Error) as exc:
            err = translate(
                exc, project=None, path=self.projects_dir, action="importing the legacy database"
            )
            if err is exc:
                raise
            raise err from exc

    async def _import_legacy_postgres(self, pg: PgEngine, source: Path) -> LegacyImportReport:
        """Split the legacy database into scratch files, then copy each project into PostgreSQL."""
        import tempfile

        from .errors import ProjectExists
        from .legacy import LegacyImportReport, import_legacy
        from .postgres.bundles import read_sqlite_rows

        with tempfile.TemporaryDirectory(prefix="demiarch-legacy-") as scratch:
            try:
                split = await asyncio.to_thread(import_legacy, source, Path(scratch))
            except (OSError, sqlite3.Error) as exc:
                err = translate(
                    exc, project=None, path=source, action="importing the legacy database"
                )
                if err is exc:
                    raise
                raise err from exc
            report = LegacyImportReport(
                source=split.source, skipped=dict(split.skipped), notes=list(split.notes)
            )
            for project_id in split.imported:
                path = Path(scratch) / project_id / DATABASE_NAME
                rows = await asyncio.to_thread(read_sqlite_rows, path)
                name = rows["projects"][0][1] if rows.get("projects") else project_id
                try:
                    await pg.create_project(
                        name=name, description=None, project_id=project_id, rows=rows
                    )
                except ProjectExists:
                    report.skipped[project_id] = (
                        "a project with this ID already exists (imported before?)"
                    )
                else:
                    report.imported.append(project_id)
                    report.rows[project_id] = split.rows[project_id]
        return report

    # -- discovery ----------------------------------------------------------------------------

    async def list_projects(self) -> list[ProjectInfo]:
        """Describe every project directory, sorted by ID, without changing any file.

        Never raises for a bad entry: a damaged, empty, newer or unreadable project is listed
        with its ``status`` and an ``error`` saying why; stray files, names that are not
        project IDs and folders with neither a database nor the library's marker are left
        out. A project open in this process is described through its own pool. Raises
        ``StorageError`` only if the projects directory itself cannot be read.
        """
        if (pg := await self._postgres()) is not None:
            return [
                ProjectInfo(
                    id=row.id,
                    name=row.name,
                    status="ok" if row.revision == HEAD_REVISION else "newer_schema",
                    updated_at=row.updated_at,
                    path=None,
                    size_bytes=0,
                    revision=row.revision,
                )
                for row in await pg.projects()
            ]
        self._check_open()
        entries = await asyncio.to_thread(scan, self.projects_dir)
        held = open_files()
        infos: dict[str, ProjectInfo] = {}
        closed_ones: list[tuple[str, Path]] = []
        opened: list[tuple[str, Path, AsyncProjectStore]] = []
        for project_id, path, key in entries:
            if isinstance(path, ProjectInfo):
                infos[project_id] = path
            elif key is not None and key in held:
                opened.append((project_id, path, held[key]))
            else:
                closed_ones.append((project_id, path))
        from_pools = asyncio.gather(*(_describe_open(i, p, proj) for i, p, proj in opened))
        from_files = await asyncio.to_thread(lambda: [describe(i, p) for i, p in closed_ones])
        for info in [*from_files, *await from_pools]:
            infos[info.id] = info
        return [infos[k] for k in sorted(infos)]


_QUARANTINE_NAME = re.compile(r"\d{8}T\d{6}Z-[0-9a-z]{6}")
_DATABASE_FILES = frozenset(f"{DATABASE_NAME}{s}" for s in ("", "-wal", "-shm", "-journal"))


def _is_project_dir(directory: Path) -> bool:
    return os.path.lexists(directory / MARKER_NAME) or os.path.lexists(directory / DATABASE_NAME)


@dataclass(frozen=True, slots=True)
class ProjectFiles:
    """What a project folder holds: what the library made for it, and anything else."""

    directory: Path
    is_project: bool
    """It holds the library's marker or a database file."""
    files: tuple[Path, ...]
    """Files the library made (the marker last)."""
    folders: tuple[Path, ...]
    """Folders the library made, innermost first (the project folder itself last)."""
    foreign: tuple[str, ...]
    """Everything else, as paths relative to the folder."""
    backups: int
    quarantined: int


def project_files(directory: Path) -> ProjectFiles:
    """Sort what a project folder holds into what the library made and the rest.

    Never follows a link: a link is the library's only where a database file may be one.
    """
    files: list[Path] = []
    folders: list[Path] = []
    foreign: list[str] = []
    counts = {BACKUPS_DIR: 0, QUARANTINE_DIR: 0}

    def entries(folder: Path) -> list[os.DirEntry[str]]:
        return sorted(os.scandir(folder), key=lambda e: e.name)

    def plain(entry: os.DirEntry[str]) -> bool:
        return entry.is_file(follow_symlinks=False)

    marker = None
    for entry in entries(directory):
        name, path = entry.name, Path(entry.path)
        if name == MARKER_NAME and plain(entry):
            marker = path
        elif name in _DATABASE_FILES and (plain(entry) or entry.is_symlink()):
            files.append(path)
        elif _RESTORE_NAME.fullmatch(name) and plain(entry):
            files.append(path)  # a restore that died half-way
        elif name == BACKUPS_DIR and entry.is_dir(follow_symlinks=False):
            for inner in entries(path):
                if (_BACKUP_NAME.fullmatch(inner.name) or _PARTIAL_NAME.fullmatch(inner.name)) and (
                    plain(inner)
                ):
                    files.append(Path(inner.path))
                    counts[BACKUPS_DIR] += _BACKUP_NAME.fullmatch(inner.name) is not None
                else:
                    foreign.append(f"{name}/{inner.name}")
            folders.append(path)
        elif name == QUARANTINE_DIR and entry.is_dir(follow_symlinks=False):
            for moved in entries(path):
                if _QUARANTINE_NAME.fullmatch(moved.name) and moved.is_dir(follow_symlinks=False):
                    for inner in entries(Path(moved.path)):
                        if inner.name in _DATABASE_FILES and (plain(inner) or inner.is_symlink()):
                            files.append(Path(inner.path))
                        else:
                            foreign.append(f"{name}/{moved.name}/{inner.name}")
                    folders.append(Path(moved.path))
                    counts[QUARANTINE_DIR] += 1
                else:
                    foreign.append(f"{name}/{moved.name}")
            folders.append(path)
        else:
            foreign.append(name + ("/" if entry.is_dir(follow_symlinks=False) else ""))
    if marker is not None:
        files.append(marker)
    folders.append(directory)
    return ProjectFiles(
        directory=directory,
        is_project=_is_project_dir(directory),
        files=tuple(files),
        folders=tuple(folders),
        foreign=tuple(foreign),
        backups=counts[BACKUPS_DIR],
        quarantined=counts[QUARANTINE_DIR],
    )


def refuse_foreign(files: ProjectFiles, project_id: str) -> None:
    """Raise unless the folder is a project holding only what the library made."""
    if not files.is_project:
        raise ProjectNotFound(
            "the folder is not a demiarch-store project: it holds no database and no "
            f"{MARKER_NAME} marker",
            project=project_id,
            path=files.directory,
            hint="nothing was deleted; check the projects directory (is it one level too high?)",
        )
    if files.foreign:
        shown = ", ".join(repr(f) for f in files.foreign[:5])
        more = f" and {len(files.foreign) - 5} more" if len(files.foreign) > 5 else ""
        raise ForeignFiles(
            f"the project folder holds files demiarch-store did not make: {shown}{more}",
            project=project_id,
            path=files.directory,
            hint="nothing was deleted; move those files out of the folder, then delete again",
        )


def _remove_project(files: ProjectFiles) -> None:
    """Remove exactly the files and folders listed; a folder something was added to stays."""
    for path in files.files:
        path.unlink(missing_ok=True)
    for folder in files.folders:
        try:
            os.rmdir(folder)
        except FileNotFoundError:
            continue


def not_projects(projects_dir: Path) -> list[str]:
    """Name the folders in ``projects_dir`` that discovery leaves out as not projects."""
    try:
        entries = sorted(os.scandir(projects_dir), key=lambda e: e.name)
    except OSError:
        return []
    return [
        e.name
        for e in entries
        if not e.name.startswith(".")
        and e.is_dir(follow_symlinks=False)
        and not _is_project_dir(Path(e.path))
    ]


def scan(projects_dir: Path) -> list[tuple[str, Path | ProjectInfo, FileKey | None]]:
    """List the project directories: (id, database path or a finished info, file key)."""
    try:
        entries = sorted(os.scandir(projects_dir), key=lambda e: e.name)
    except FileNotFoundError:
        return []
    except OSError as exc:
        raise StorageError(
            f"cannot read the projects directory: {exc.strerror}",
            path=projects_dir,
            hint="check that it is a directory you may read",
        ) from exc
    out: list[tuple[str, Path | ProjectInfo, FileKey | None]] = []
    for entry in entries:
        try:
            validate_project_id(entry.name)
        except StoreError:
            continue  # dot-files, staging directories and foreign names are not projects
        try:
            is_link = entry.is_symlink()
            is_dir = entry.is_dir(follow_symlinks=True)
        except OSError:
            is_link, is_dir = False, False
        if is_link:
            if is_dir or not os.path.exists(entry.path):
                why = "the project directory is a symlink; projects must be real directories"
                info = _info(entry.name, Path(entry.path), "unreadable", why)
                out.append((entry.name, info, None))
            continue  # a link to a file is a stray file
        if not is_dir:
            continue  # a stray file among the project directories
        path = Path(entry.path) / DATABASE_NAME
        try:
            st = os.lstat(path)
            key: FileKey | None = (st.st_dev, st.st_ino)
        except FileNotFoundError:
            if not os.path.lexists(Path(entry.path) / MARKER_NAME):
                continue  # no database, no marker: a folder that never was a project
            key = None
        except OSError:
            key = None
        out.append((entry.name, path, key))
    return out


def discover(projects_dir: Path) -> list[ProjectInfo]:
    """Describe each project directory under ``projects_dir`` from its file alone."""
    infos = []
    for project_id, path, _ in scan(projects_dir):
        infos.append(path if isinstance(path, ProjectInfo) else describe(project_id, path))
    return infos


async def _describe_open(project_id: str, path: Path, project: AsyncProjectStore) -> ProjectInfo:
    """Describe a project open in this process with one query on one of its readers."""
    sql = (
        "SELECT v.version_num, p.name, p.updated_at FROM alembic_version AS v "
        "LEFT JOIN projects AS p ON 1 LIMIT 1"
    )

    async def query() -> list[Any]:
        async with project.read() as r:
            return await r.fetch(sql, {})

    try:
        pool = project.pool
        if pool._loop is asyncio.get_running_loop():
            rows = await query()
        else:  # open in another thread's event loop: run the query there
            fut = asyncio.run_coroutine_threadsafe(query(), pool._loop)
            rows = await asyncio.wrap_future(fut)
    except StoreClosed:
        # Closing meanwhile: once closed, the file is free to be read directly.
        if pool._loop is asyncio.get_running_loop():
            await project.close()
            return await asyncio.to_thread(describe, project_id, path)
        return _info(project_id, path, "unreadable", "the project is closing in another thread")
    except CorruptDatabase as exc:
        return _info(project_id, path, "corrupt", str(exc), size=_size(path))
    except StoreError as exc:
        return _info(project_id, path, "unreadable", str(exc), size=_size(path))
    revision, name, updated = rows[0] if rows else (None, None, None)
    status: ProjectStatus = "ok" if name is not None else "empty"
    return _info(
        project_id,
        path,
        status,
        None if name is not None else "the database holds no project record",
        size=_size(path),
        name=name,
        updated_at=_micros(updated),
        revision=revision,
    )


def _size(path: Path) -> int:
    """Return the size of ``database.sqlite`` (without its ``-wal``), 0 if it cannot be read."""
    try:
        return os.lstat(path).st_size
    except OSError:
        return 0


def _micros(value: object) -> datetime | None:
    if isinstance(value, int) and not isinstance(value, bool):
        try:
            return _EPOCH + timedelta(microseconds=value)
        except OverflowError:
            return None
    return None


def _info(
    project_id: str,
    path: Path,
    status: ProjectStatus,
    error: str | None,
    *,
    size: int = 0,
    name: str | None = None,
    updated_at: datetime | None = None,
    revision: str | None = None,
) -> ProjectInfo:
    return ProjectInfo(
        id=project_id,
        name=name,
        status=status,
        updated_at=updated_at,
        path=path,
        size_bytes=size,
        error=error,
        revision=revision,
    )


def _fingerprint(path: Path) -> tuple[tuple[int, int] | None, ...]:
    out: list[tuple[int, int] | None] = []
    for suffix in ("", "-wal", "-shm"):
        try:
            st = os.stat(f"{path}{suffix}")
            out.append((st.st_size, st.st_mtime_ns))
        except OSError:
            out.append(None)
    return tuple(out)


def describe(project_id: str, path: Path) -> ProjectInfo:
    """Describe one project's database from its file, without modifying anything.

    The file must not be open in this process (``Store.list_projects`` routes those through
    their pools). If the read fails while another process changes the file, it reads again.
    """
    for _ in range(3):
        before = _fingerprint(path)
        info = _describe_file(project_id, path)
        if info.status in ("ok", "empty", "newer_schema") or _fingerprint(path) == before:
            break
    return info


def _describe_file(project_id: str, path: Path) -> ProjectInfo:
    try:
        st = path.lstat()
    except FileNotFoundError:
        return _info(project_id, path, "empty", "the project directory holds no database file")
    except OSError as exc:
        return _info(project_id, path, "unreadable", f"cannot read the database: {exc.strerror}")
    if stat.S_ISLNK(st.st_mode):
        why = "the database file is a symlink; a project must hold the real file"
        return _info(project_id, path, "unreadable", why)
    if not stat.S_ISREG(st.st_mode):
        return _info(project_id, path, "unreadable", "the database is not a regular file")
    size = _size(path)
    if st.st_size == 0:
        return _info(project_id, path, "empty", "the database file is empty (0 bytes)", size=size)
    if not os.access(path, os.R_OK):
        return _info(project_id, path, "unreadable", "permission denied", size=size)
    try:
        conn = sqlite3.connect(readonly_uri(path), uri=True, isolation_level=None)
    except sqlite3.Error as exc:
        return _info(project_id, path, "unreadable", str(exc), size=size)
    try:
        conn.execute("PRAGMA busy_timeout = 1000")
        conn.execute("PRAGMA trusted_schema = OFF")
        conn.execute("BEGIN")  # one snapshot for every query below
        revision = read_revision(conn)
        if revision is None:
            tables = conn.execute(
                "SELECT count(*) FROM sqlite_master WHERE type = 'table'"
            ).fetchone()[0]
            if tables:
                why = "the database holds tables but no demiarch-store schema revision"
                return _info(project_id, path, "corrupt", why, size=size)
            return _info(project_id, path, "empty", "the database has no schema yet", size=size)
        if revision != HEAD_REVISION and revision not in known_revisions():
            why = f"schema revision {revision!r} is newer than this demiarch-store knows"
            return _info(project_id, path, "newer_schema", why, size=size, revision=revision)
        row = conn.execute("SELECT name, updated_at FROM projects LIMIT 1").fetchone()
        if row is None:
            why = "the database holds no project record"
            return _info(project_id, path, "empty", why, size=size, revision=revision)
        return _info(
            project_id,
            path,
            "ok",
            None,
            size=size,
            name=row[0],
            updated_at=_micros(row[1]),
            revision=revision,
        )
    except sqlite3.Error as exc:
        code = getattr(exc, "sqlite_errorcode", 0) & 0xFF
        if code in (sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB, sqlite3.SQLITE_ERROR):
            return _info(project_id, path, "corrupt", str(exc), size=size)
        if code in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED):
            why = "the database is locked by another process; list again later"
            return _info(project_id, path, "unreadable", why, size=size)
        return _info(project_id, path, "unreadable", str(exc), size=size)
    except UnicodeDecodeError:  # sqlite3 decodes TEXT itself: a damaged page
        return _info(
            project_id, path, "corrupt", "the file holds text that is not valid UTF-8", size=size
        )
    finally:
        conn.close()


def database_problem(path: Path) -> str | None:
    """Say what is wrong with a project's database file, or None if it is healthy.

    Read-only (as ``describe``): the file opens, its schema revision is one this code knows,
    and it passes ``quick_check`` and ``foreign_key_check``. The file must not be open in this
    process (a project open here is checked with ``project.check()``).
    """
    info = describe(path.parent.name, path)
    if info.status not in ("ok", "empty") or info.revision is None:
        return f"{info.status}: {info.error or 'the database holds no schema'}"
    try:
        conn = sqlite3.connect(readonly_uri(path), uri=True, isolation_level=None)
    except sqlite3.Error as exc:
        return f"it cannot be opened ({exc})"
    try:
        conn.execute("PRAGMA trusted_schema = OFF")
        rows = conn.execute("PRAGMA quick_check(10)").fetchall()
        if rows != [("ok",)]:
            return f"quick_check failed: {rows[0][0]}"
        if conn.execute("PRAGMA foreign_key_check").fetchmany(1):
            return "rows violate foreign keys"
    except (sqlite3.Error, UnicodeDecodeError) as exc:
        return f"it cannot be read ({exc})"
    finally:
        conn.close()
    return None


def row_counts(path: Path) -> dict[str, int] | None:
    """Count the rows of each table of a database file, read-only; None if it cannot be read.

    For a file this process does not have open (a backup, a closed project).
    """
    try:
        conn = sqlite3.connect(readonly_uri(path), uri=True, isolation_level=None)
    except sqlite3.Error:
        return None
    try:
        conn.execute("PRAGMA trusted_schema = OFF")
        conn.execute("BEGIN")
        names = [
            r[0]
            for r in conn.execute(
                "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%' "
                "AND name != 'alembic_version' ORDER BY name"
            )
        ]
        counts = {}
        for name in names:
            quoted = '"' + name.replace('"', '""') + '"'
            counts[name] = int(conn.execute(f"SELECT count(*) FROM {quoted}").fetchone()[0])
        return counts
    except (sqlite3.Error, UnicodeDecodeError):
        return None
    finally:
        conn.close()


def good_backup(database: Path, project_id: str) -> Path | None:
    """Return the backup quarantine would put back: the newest that passes the restore checks."""
    for backup in list_backups(database.parent / BACKUPS_DIR):
        try:
            stage_restore(backup, None, project=project_id, live=database)
        except BackupError:
            continue
        return backup
    return None


async def _migrate_postgres(pg: PgEngine, project_id: str, to: str) -> tuple[str, str]:
    """Migrate a PostgreSQL project: a database's projects all sit at its revision (head)."""
    if to not in ("head", HEAD_REVISION):
        if not isinstance(to, str):
            raise InvalidValue("the target revision must be a string such as 'head' or '0001'")
        raise NotSupported(
            f"migrating a project to revision {to!r} is not available on PostgreSQL: the "
            f"projects of a database are all at its revision ({HEAD_REVISION!r})",
            project=project_id,
            hint="to use an older revision, export the project and import it into a SQLite "
            "projects directory, then migrate it there",
        )
    row = await pg.project(project_id)  # ProjectNotFound, SchemaTooNew or MigrationError
    return row.revision, row.revision
