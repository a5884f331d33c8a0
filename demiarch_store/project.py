"""``AsyncProjectStore``: one project's database file, its pool and its schema."""

from __future__ import annotations

import asyncio
import logging
import os
import stat
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Any, Self

from .backup import (
    backups_dir_for,
    create_database_file,
    list_backups,
    make_private_dir,
    remove_file,
    replace_database,
    restore_staging,
    stage_restore,
    take_backup,
    write_marker,
)
from .config import StoreConfig
from .errors import (
    BackupError,
    CorruptDatabase,
    ProjectExists,
    StorageError,
    StoreClosed,
    StoreError,
    translate,
)
from .health import HealthReport, StoreStats, build_report, check_job
from .migrate import HEAD_REVISION, create_schema_job, revision_check, run_migrations
from .sqlite.pool import Pool, stats_of
from .sqlite.wal_index import open_in_this_process
from .transaction import Snapshot, Transaction

__all__ = [
    "AsyncProjectStore",
    "FileKey",
    "claim_project_dir",
    "create_database_file",  # defined in backup.py; kept here for existing imports
    "has_sqlite_header",
    "make_private_dir",  # likewise
    "open_files",
]

log = logging.getLogger("demiarch_store")

FileKey = tuple[int, int]
_open_files: dict[FileKey, AsyncProjectStore] = {}
"""Every project open in this process, by the (device, inode) of its database file."""


def open_files() -> dict[FileKey, AsyncProjectStore]:
    """Return a copy of the projects open in this process, by (device, inode) of their file.

    Discovery uses it to describe an open project through its own pool: opening and closing a
    second handle on a file the process holds would drop the process's POSIX locks on it.
    """
    return _open_files.copy()


def claim_project_dir(directory: Path, project_id: str, *, hint: str) -> None:
    """Create a project's directory (mode 0700) and its marker: ``mkdir`` decides who gets the ID.

    Raises ``ProjectExists`` (with ``hint``) if it exists, ``StorageError`` if it cannot be made.
    """
    try:
        os.mkdir(directory, 0o700)
    except FileExistsError:
        raise ProjectExists(
            "a project with this ID already exists",
            project=project_id,
            path=directory,
            hint=hint,
        ) from None
    except OSError as exc:
        raise StorageError(
            f"cannot create the project directory: {exc.strerror}",
            project=project_id,
            path=directory,
            hint="check the permissions of the projects directory",
        ) from exc
    os.chmod(directory, 0o700)
    write_marker(directory, project_id)  # discovery and delete know the folder as ours


_MAGIC = b"SQLite format 3\x00"


def has_sqlite_header(path: Path) -> bool:
    """Return True for an empty file or one that starts with SQLite's 100-byte header."""
    with open(path, "rb") as f:
        head = f.read(100)
    return head == b"" or (len(head) == 100 and head.startswith(_MAGIC))


class AsyncProjectStore:
    """One project's SQLite database: a writer, a few readers, and the schema at head.

    Usable alone on any database file::

        async with AsyncProjectStore(Path("agent.sqlite")) as project:
            async with project.transaction() as tx:
                conv = tx.conversations.create(title="planning")

    ``Store`` makes these for the projects in its directory.
    """

    def __init__(
        self,
        path: Path | str,
        *,
        config: StoreConfig | None = None,
        project_id: str | None = None,
        create: bool = True,
    ) -> None:
        self.path = Path(path)
        self.id = project_id if project_id is not None else self.path.stem
        self.config = config if config is not None else StoreConfig(projects_dir=self.path.parent)
        self._create = create
        self._pool: Pool | None = None
        self._closing: asyncio.Future[None] | None = None
        self._on_close: list[Callable[[AsyncProjectStore], None]] = []
        self.revision: str | None = None
        """The schema revision the database is at once open."""
        self.migrated: tuple[str | None, str | None] | None = None
        """``(before, after)`` if opening changed the schema revision; ``(None, head)``: created."""
        self._file_key: FileKey | None = None

    def __repr__(self) -> str:
        state = "open" if self._pool is not None and not self._pool.closed else "closed"
        return f"<AsyncProjectStore {self.id!r} {state} {str(self.path)!r}>"

    # -- life cycle ---------------------------------------------------------------------------

    async def open(self) -> Self:
        """Open the file (creating it if allowed), migrate it to head, start the pool."""
        if self._pool is not None:
            return self
        path = self.path
        try:
            if path.is_symlink():
                raise StorageError(
                    "the database file is a symlink",
                    project=self.id,
                    path=path,
                    hint="replace the link with the real file",
                )
            if not path.exists():
                if not self._create:
                    raise CorruptDatabase(
                        "the project has no database file",
                        project=self.id,
                        path=path,
                        hint="restore it from a backup or delete the project",
                    )
                make_private_dir(path.parent)
                try:
                    create_database_file(path)
                except FileExistsError:
                    pass  # another process created it first: open theirs
            elif not stat.S_ISREG(path.stat().st_mode):
                raise CorruptDatabase(
                    "the database path is not a regular file",
                    project=self.id,
                    path=path,
                    hint="move it aside",
                )
            elif not open_in_this_process(path) and not has_sqlite_header(path):
                # Refuse before SQLite opens it: closing a read-write connection to a file
                # with a damaged header deletes its -wal, which may hold the only copy of
                # recent commits. (A file this process has open was checked when it was
                # opened; reading it again would close a descriptor of it, which drops the
                # locks SQLite holds on it here.)
                raise CorruptDatabase(
                    "the file is not a SQLite database (its header is damaged)",
                    project=self.id,
                    path=path,
                    hint="restore it from a backup (store.quarantine_project() moves it aside "
                    "and restores the newest good backup)",
                )
        except OSError as exc:
            raise StorageError(
                f"cannot create the database file: {exc.strerror}",
                project=self.id,
                path=path,
                hint="check the permissions of the projects directory",
            ) from exc
        self.migrated = None  # a reopen (restore) reports what this opening did, not the last
        pool = Pool(path, self.config, project=self.id)
        revision = await pool.open(revision_check(self.id, path))
        self._pool = pool
        try:
            if revision is None:
                # A new database: create the schema at head directly (no Alembic start-up).
                before, revision = await pool.run_writer(
                    create_schema_job,
                    self.config.busy_deadline,
                    pool,
                    action="creating the schema",
                )
                if before != revision:
                    self.migrated = (before, revision)
            if revision != HEAD_REVISION:
                before, revision = await pool.run_writer(
                    _migrate_job,
                    path,
                    self.id,
                    int(self.config.busy_deadline * 1000),
                    action="migrating the schema",
                )
                if before != revision:
                    self.migrated = (before, revision)
            self.revision = revision
            st = os.stat(path)
        except BaseException:
            await pool.close()
            self._pool = None
            raise
        self._forget_file()  # a reopen after a restore: the old file's inode may be reused
        self._file_key = (st.st_dev, st.st_ino)
        _open_files.setdefault(self._file_key, self)
        return self

    def _forget_file(self) -> None:
        if self._file_key is not None and _open_files.get(self._file_key) is self:
            del _open_files[self._file_key]
        self._file_key = None

    async def close(self) -> None:
        """Wait for work in flight, then close every connection and its thread. Idempotent."""
        if self._closing is not None:
            await asyncio.shield(self._closing)
            return
        self._closing = asyncio.get_running_loop().create_future()
        try:
            if self._pool is not None:
                await self._pool.close()
        finally:
            self._forget_file()
            self._closing.set_result(None)
            for callback in self._on_close:
                callback(self)

    async def __aenter__(self) -> Self:
        return await self.open()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    @property
    def pool(self) -> Pool:
        """The connection pool (opens with the project, closes with it)."""
        if self._pool is None:
            raise StoreClosed(
                "the project is not open" if self._closing is None else "the project is closed",
                project=self.id,
                path=self.path,
                hint="use `async with` or await open() first",
            )
        return self._pool

    @property
    def closed(self) -> bool:
        return self._closing is not None

    @property
    def busy(self) -> bool:
        """True while a unit of work or a read is in flight."""
        return self._pool is not None and self._pool._in_flight > 0

    # -- work ---------------------------------------------------------------------------------

    def transaction(self) -> Transaction:
        """Start a unit of work: ``async with project.transaction() as tx:``.

        Commits when the block ends; rolls back if it raises (or is cancelled). Writes made with
        ``tx.<repository>`` are sent in one hop at commit and grouped with concurrent units.
        """
        pool = self.pool
        pool.check_open()
        return Transaction(pool)

    def read(self) -> Snapshot:
        """Start a read-only snapshot on a reader: ``async with project.read() as r:``."""
        pool = self.pool
        pool.check_open()
        return Snapshot(pool)

    # -- backup, health, maintenance ----------------------------------------------------------

    @property
    def backups_dir(self) -> Path:
        """Where ``backup()`` writes by default: ``<project dir>/backups``.

        A database used alone under another name (``agent.sqlite``) gets
        ``agent.sqlite.backups`` beside it, so files sharing a folder keep separate backups.
        """
        return backups_dir_for(self.path)

    def backups(self) -> list[Path]:
        """Return the backups in ``backups_dir``, newest first."""
        return list_backups(self.backups_dir)

    async def backup(self, dest: Path | str | None = None) -> Path:
        """Write a consistent snapshot of the database while writers keep writing.

        Args:
            dest: a new file to write, or a directory to write a new backup into. By default
                the backup goes into ``backups_dir`` and only the newest
                ``config.keep_backups`` there are kept.

        Returns the backup's path once it is complete, verified with ``integrity_check`` and
        fsynced; the file has mode 0600. Backups are named ``<sequence>-<UTC time>.sqlite``:
        the sequence keeps them in order and never reuses a name, even if the clock goes back.

        Raises:
            BackupError: the snapshot could not be written or verified, or ``dest`` exists.
        """
        self.pool.check_open()
        keep = self.config.keep_backups if dest is None else None
        try:
            directory, target = await asyncio.to_thread(self._backup_target, dest)
        except OSError as exc:
            raise BackupError(
                f"cannot create the backups directory: {exc.strerror}",
                project=self.id,
                path=self.backups_dir,
                hint="check the permissions of the project directory",
            ) from exc
        path: Path = await self._on_reader(
            take_backup,
            directory,
            target,
            keep,
            error=lambda exc: _backup_error(exc, self.id, target or directory),
        )
        return path

    def _backup_target(self, dest: Path | str | None) -> tuple[Path, Path | None]:
        """Return (directory, file or None for a new name); create the default directory."""
        if dest is None:
            make_private_dir(self.backups_dir)
            return self.backups_dir, None
        dest = Path(dest)
        return (dest, None) if dest.is_dir() else (dest.parent, dest)

    async def restore(self, backup: Path | str) -> None:
        """Replace this database with a backup, then reopen it (migrating it to head).

        The backup is checked first (read-only, ``trusted_schema=OFF``, ``integrity_check``,
        a known schema revision) and copied beside the database; only then is the project
        closed (waiting for work in flight) and the copy renamed over the database.

        Raises:
            BackupError: the backup is missing, damaged or too new; the database is untouched.
            DatabaseBusy: another process has the database open.
        """
        if self._closing is not None:
            raise StoreClosed(
                "the project is closed",
                project=self.id,
                path=self.path,
                hint="restore through Store.restore_project() or a new AsyncProjectStore",
            )
        backup = Path(backup)
        staging = await asyncio.to_thread(restore_staging, self.path)
        was_open = self._pool is not None
        try:
            await asyncio.to_thread(stage_restore, backup, staging, project=self.id, live=self.path)
            pool, self._pool = self._pool, None
            if pool is not None:
                await pool.close()
            self._forget_file()  # its file is about to be replaced; discovery reads it directly
            try:
                await asyncio.to_thread(replace_database, staging, self.path, project=self.id)
            except BaseException as exc:
                if was_open:  # the old database is still in place: carry on with it
                    try:
                        await self._reopen()
                    except StoreError as again:  # now closed; the first error says why
                        log.warning("reopening %s after a failed restore: %s", self.id, again)
                err = translate(
                    exc, project=self.id, path=self.path, action="putting the backup in place"
                )
                if err is exc:
                    raise
                raise err from exc
        finally:
            await asyncio.to_thread(remove_file, staging)
        await self._reopen()

    async def _reopen(self) -> None:
        try:
            await self.open()
        except BaseException:
            await self.close()  # marks the project closed, so a Store forgets it
            raise

    async def check(self, *, full: bool = False) -> HealthReport:
        """Check the database's health and return a report (``report.ok``, ``report.problems``).

        Runs ``quick_check`` (``full=True``: the slower ``integrity_check``) and
        ``foreign_key_check`` on a reader, and a ``PASSIVE`` checkpoint that shows whether a
        reader keeps the WAL from being reset; adds file sizes and the pool's figures. Damage
        found is reported as a problem; a file too damaged to read at all raises
        ``CorruptDatabase``.
        """
        figures = await self._on_reader(
            check_job,
            self.path,
            full,
            error=lambda exc: self.pool.translate(exc, "checking the database"),
        )
        return build_report(
            figures, full=full, stats=self.stats(), config=self.config, path=self.path
        )

    def stats(self) -> StoreStats:
        """Return a snapshot of the counters and latencies since the project opened."""
        return stats_of(self.pool)

    async def vacuum(self) -> None:
        """Rebuild the file to give free pages back to the file system (holds the writer)."""
        await self._on_writer(_vacuum_job, "vacuuming the database")

    async def optimize(self) -> None:
        """Run ``PRAGMA optimize`` (refresh the query planner's statistics where useful).

        It also runs, best effort, when the project closes.
        """
        await self._on_writer(_optimize_job, "optimizing the database")

    async def _on_reader(
        self,
        job: Callable[..., Any],
        *args: Any,
        error: Callable[[BaseException], BaseException] | None = None,
        action: str = "reading",
    ) -> Any:
        """Run ``job(conn, *args)`` on a reader, as work in flight; ``error`` maps a failure
        (by default the driver's error for ``action``, translated).

        Work in flight keeps ``Store``'s LRU from closing the project meanwhile.
        """
        pool = self.pool
        pool.enter()
        try:
            worker = await pool.acquire_reader()
            try:
                return await worker.submit(job, *args)
            except asyncio.CancelledError:
                raise
            except BaseException as exc:
                mapped = pool.translate(exc, action) if error is None else error(exc)
                if mapped is exc:
                    raise
                raise mapped from exc
            finally:
                pool.release_reader(worker, started=True)
        finally:
            pool.leave()

    async def _on_writer(self, job: Callable[..., Any], action: str) -> None:
        pool = self.pool
        pool.enter()
        try:
            await pool.acquire_writer()
            try:
                await pool.run_writer(job, action=action)
            finally:
                pool.release_writer()
        finally:
            pool.leave()


def _vacuum_job(conn: Any) -> None:
    conn.execute("VACUUM")
    # VACUUM wrote the whole database to the WAL: give that space back too.
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")


def _optimize_job(conn: Any) -> None:
    conn.execute("PRAGMA optimize")


def _backup_error(exc: BaseException, project: str, path: Path) -> BackupError:
    if isinstance(exc, FileExistsError):
        return BackupError(
            "the backup file already exists",
            project=project,
            path=path,
            hint="choose a new file name or a directory",
        )
    if isinstance(exc, StoreError):
        why = str(exc)
    elif isinstance(exc, OSError):
        why = exc.strerror or str(exc)
    else:
        why = str(exc) if isinstance(exc, Exception) else type(exc).__name__
    return BackupError(
        f"the backup failed: {why}",
        project=project,
        path=path,
        hint="check the free space and permissions of the destination; the database is fine",
    )


def _migrate_job(conn: Any, path: Path, project: str, busy_ms: int) -> tuple[Any, Any]:
    # The writer connection is idle here: it reads the pre-migration backup while the
    # migration's own connection holds the write lock.
    return run_migrations(path, project=project, busy_timeout_ms=busy_ms, backup_source=conn)
