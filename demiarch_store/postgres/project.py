"""A project on PostgreSQL: the ``AsyncProjectStore`` API on its rows of the shared tables."""

from __future__ import annotations

from pathlib import Path
from types import TracebackType
from typing import Any, NoReturn, Self

from ..errors import StoreClosed, StoreError
from ..health import HealthReport, StoreStats
from ..project import AsyncProjectStore
from ..schema import HEAD_REVISION
from .engine import PgEngine, ProjectRow
from .session import PgHandle, PgSnapshot, PgTransaction

__all__ = ["PgProject"]


class PgProject(AsyncProjectStore):
    """One project in a PostgreSQL database (a handle on its store's pool: nothing to close).

    ``transaction()``, ``read()``, every repository, ``check()`` and ``stats()`` work as on
    SQLite. ``path`` is None (errors name the project, and no file). What belongs to a file
    (``backup()``, ``restore()``, ``vacuum()``, ``optimize()``) raises ``StoreError``: back
    the database up with ``pg_dump``, or export the project as a bundle.
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
        raise StoreError(
            f"{what} is not available on PostgreSQL: a project there is rows, not a file",
            project=self.id,
            hint="back up the database with pg_dump, or export the project as a bundle",
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
        self._no_file("a backups folder")

    def backups(self) -> list[Path]:
        self._no_file("listing file backups")

    async def backup(self, dest: Path | str | None = None) -> Path:
        self._no_file("a file backup")

    async def restore(self, backup: Path | str) -> None:
        self._no_file("restoring a file backup")

    async def vacuum(self) -> None:
        self._no_file("vacuum (PostgreSQL's autovacuum does this)")

    async def optimize(self) -> None:
        self._no_file("optimize (PostgreSQL's autovacuum analyses tables)")

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
