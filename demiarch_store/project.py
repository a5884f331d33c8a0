"""``AsyncProjectStore``: one project's database file, its pool and its schema."""

from __future__ import annotations

import asyncio
import os
import stat
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Any, Self

from .config import StoreConfig
from .errors import CorruptDatabase, StorageError, StoreClosed
from .migrate import HEAD_REVISION, create_schema_job, revision_check, run_migrations
from .pool import Pool
from .transaction import Snapshot, Transaction

__all__ = ["AsyncProjectStore", "create_database_file", "make_private_dir"]


def make_private_dir(path: Path) -> None:
    """Create ``path`` (and missing parents) with mode 0700, whatever the umask."""
    missing = []
    p = path
    while not p.exists():
        missing.append(p)
        p = p.parent
    for d in reversed(missing):
        try:
            os.mkdir(d, 0o700)
        except FileExistsError:
            continue
        os.chmod(d, 0o700)


def create_database_file(path: Path) -> None:
    """Create an empty database file with mode 0600 before SQLite opens it.

    ``O_EXCL|O_NOFOLLOW`` refuses an existing file or a planted symlink; SQLite later gives the
    ``-wal`` and ``-shm`` files the database's mode.
    """
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    fd = os.open(path, flags, 0o600)
    try:
        os.fchmod(fd, 0o600)
    finally:
        os.close(fd)


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
        except OSError as exc:
            raise StorageError(
                f"cannot create the database file: {exc.strerror}",
                project=self.id,
                path=path,
                hint="check the permissions of the projects directory",
            ) from exc
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
        except BaseException:
            await pool.close()
            self._pool = None
            raise
        return self

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


def _migrate_job(conn: Any, path: Path, project: str, busy_ms: int) -> tuple[Any, Any]:
    # The writer connection is idle here: it reads the pre-migration backup while the
    # migration's own connection holds the write lock.
    return run_migrations(path, project=project, busy_timeout_ms=busy_ms, backup_source=conn)
