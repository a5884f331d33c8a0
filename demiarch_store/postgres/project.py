"""A project on PostgreSQL: the ``AsyncProjectStore`` API on its rows of the shared tables."""

from __future__ import annotations

import asyncio
from pathlib import Path
from types import TracebackType
from typing import Any, NoReturn, Self

from ..backup import BACKUPS_DIR
from ..errors import NotSupported, StoreClosed
from ..health import HealthReport, StoreStats
from ..project import AsyncProjectStore
from ..schema import HEAD_REVISION
from .bundles import backup_rows, list_backups, write_backup
from .engine import PgEngine, ProjectRow
from .session import PgHandle, PgSnapshot, PgTransaction

__all__ = ["PgProject"]


class PgProject(AsyncProjectStore):
    """One project in a PostgreSQL database (a handle on its store's pool: nothing to close).

    ``transaction()``, ``read()``, every repository, ``check()``, ``stats()``, ``backup()``,
    ``backups()`` and ``restore()`` work as on SQLite (a backup is a bundle file). ``path`` is
    None (errors name the project, and no file); ``vacuum()`` and ``optimize()`` raise
    ``NotSupported`` (the server's autovacuum does their work).
    """

    def __init__(self, engine: PgEngine, row: ProjectRow) -> None:
        self.id = row.id
        self.name = row.name
        self.config = engine.config
        self.revision: str | None = row.revision
        self.migrated = None
        self._engine = engine
        self._handle = PgHandle(engine, row.id, engine.config)
        self._closing = None
        self._on_close = []

    def __repr__(self) -> str:
        return f"<PgProject {self.id!r}>"

    def _no_file(self, what: str) -> NoReturn:
        raise NotSupported(
            f"{what} is not available on PostgreSQL: a project there lives in the database, "
            "not in a file",
            project=self.id,
            hint="use the project's transaction(), read(), stats() and check()",
        )

    @property
    def path(self) -> Path | None:  # type: ignore[override]
        """None: a project on PostgreSQL is rows of the database's shared tables."""
        return None

    @property
    def handle(self) -> PgHandle:
        """What units of work and snapshots of this project run on."""
        return self._handle

    async def open(self) -> Self:
        self._handle.check_open()
        return self

    async def close(self) -> None:
        """Forget the project (its connections belong to the store). Idempotent."""
        if self._handle.closed:
            return
        self._handle.closed = True
        for callback in self._on_close:
            callback(self)

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    @property
    def pool(self) -> Any:
        self._no_file("the SQLite connection pool")

    @property
    def closed(self) -> bool:
        return self._handle.closed

    @property
    def busy(self) -> bool:
        return False

    def _check(self) -> None:
        if self._handle.closed:
            raise StoreClosed(
                "the project is closed",
                project=self.id,
                hint="open it again with Store.open_project()",
            )

    def transaction(self) -> PgTransaction:
        self._check()
        return PgTransaction(self._handle)

    def read(self) -> PgSnapshot:
        self._check()
        return PgSnapshot(self._handle)

    @property
    def backups_dir(self) -> Path:
        """Where ``backup()`` writes by default: ``<projects_dir>/<id>/backups`` on this host.

        As on SQLite; the folder holds only backups (bundles), since the project lives in the
        database.
        """
        return self.config.projects_dir / self.id / BACKUPS_DIR

    def backups(self) -> list[Path]:
        """Return the backups in ``backups_dir``, newest first."""
        return list_backups(self.backups_dir)

    async def backup(self, dest: Path | str | None = None) -> Path:
        """Write the project as a bundle (the format of ``export_project``) and return its path.

        Args:
            dest: a new file to write, or a directory to write a new backup into. By default
                the backup goes into ``backups_dir`` as ``<sequence>-<UTC time>.demiarch.zip``
                and only the newest ``config.keep_backups`` there are kept.

        The rows are read in one snapshot while writers keep writing. A backup is a whole
        project's bundle: ``restore()`` puts it back, ``import_project`` makes a project of
        it on either engine. (``pg_dump`` backs up every project of the database at once.)

        Raises:
            BackupError: the bundle could not be written, or ``dest`` exists.
        """
        from ..__version__ import __version__

        self._check()
        keep = self.config.keep_backups if dest is None else None
        rows = await self._engine.dump(self._handle)
        path: Path = await asyncio.to_thread(
            write_backup,
            rows,
            self.backups_dir if dest is None else None,
            None if dest is None else Path(dest),
            project_id=self.id,
            version=__version__,
            keep=keep,
        )
        return path

    async def restore(self, backup: Path | str) -> None:
        """Replace the project's rows with a backup's, in one transaction: all or nothing.

        The backup is a bundle of this project (from ``backup()`` or ``export_project``, on
        either engine), verified as an import is before anything changes; one of an older
        revision is migrated on a scratch copy first. The project stays open: units of work
        that start after the restore see the backup's rows.

        Raises:
            BackupError: the file is missing, not a sound bundle, or holds another project;
                the project is untouched.
            SchemaTooNew: the backup comes from a newer demiarch-store; the project is
                untouched.
        """
        self._check()
        rows = await asyncio.to_thread(backup_rows, Path(backup), self.id)
        await self._engine.replace_rows(self._handle, rows)

    async def vacuum(self) -> None:
        raise NotSupported(
            "vacuum is not available on PostgreSQL: PostgreSQL's autovacuum does this",
            project=self.id,
            hint="nothing to do; a database administrator may run VACUUM on the server",
        )

    async def optimize(self) -> None:
        raise NotSupported(
            "optimize is not available on PostgreSQL: PostgreSQL's autovacuum analyses tables",
            project=self.id,
            hint="nothing to do; a database administrator may run ANALYZE on the server",
        )

    async def check(self, *, full: bool = False) -> HealthReport:
        """Check that the server answers and the tables are all there, row security on."""
        self._check()
        problems = await self._engine.check_tables(self._handle)
        if self.revision != HEAD_REVISION:
            problems.append(f"schema revision {self.revision!r}, not {HEAD_REVISION!r}")
        return HealthReport(
            ok=not problems,
            problems=tuple(problems),
            check="integrity_check" if full else "quick_check",
            integrity=("ok",),
            foreign_key_violations=(),
            revision=self.revision,
            head_revision=HEAD_REVISION,
            database_bytes=0,
            wal_bytes=0,
            shm_bytes=0,
            page_size=0,
            page_count=0,
            freelist_pages=0,
            checkpoint=None,
            stats=self.stats(),
        )

    def stats(self) -> StoreStats:
        """The store's counters (on PostgreSQL its projects share one pool and one set)."""
        return self._engine.stats()
