"""``Store``: the projects directory, the projects open in this process, and discovery."""

from __future__ import annotations

import asyncio
import os
import shutil
import sqlite3
import stat
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import TracebackType
from typing import Literal, Self

from .config import StoreConfig
from .errors import (
    CorruptDatabase,
    InvalidProjectId,
    ProjectExists,
    ProjectNotFound,
    StorageError,
    StoreClosed,
    StoreError,
)
from .ids import DATABASE_NAME, new_project_id, validate_project_id
from .migrate import read_revision
from .project import AsyncProjectStore, make_private_dir
from .schema import HEAD_REVISION

__all__ = ["ProjectInfo", "ProjectStatus", "Store"]

ProjectStatus = Literal["ok", "empty", "corrupt", "newer_schema", "unreadable"]

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


@dataclass(frozen=True, slots=True)
class ProjectInfo:
    """What discovery learns about one project directory, without changing anything."""

    id: str
    name: str | None
    status: ProjectStatus
    updated_at: datetime | None
    path: Path
    size_bytes: int
    error: str | None = None
    revision: str | None = None


class Store:
    """All projects under one projects directory.

    ``async with Store(StoreConfig(projects_dir=path)) as store:`` creates, opens, lists and
    deletes projects; projects it opened are closed with it.
    """

    def __init__(self, config: StoreConfig | None = None) -> None:
        self.config = config if config is not None else StoreConfig()
        self._open: dict[str, AsyncProjectStore] = {}
        self._opening: dict[str, asyncio.Future[AsyncProjectStore]] = {}
        self._closed = False

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

    async def close(self) -> None:
        """Close every project this store opened. Idempotent."""
        self._closed = True
        projects = list(self._open.values())
        self._open.clear()
        results = await asyncio.gather(*(p.close() for p in projects), return_exceptions=True)
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

    # -- projects -----------------------------------------------------------------------------

    async def create_project(
        self, *, name: str, description: str | None = None, project_id: str | None = None
    ) -> AsyncProjectStore:
        """Create a project with a new ID (or the given one) and return it, open."""
        self._check_open()
        project_id = new_project_id() if project_id is None else validate_project_id(project_id)
        directory = self.project_dir(project_id)
        make_private_dir(self.projects_dir)
        try:
            os.mkdir(directory, 0o700)
        except FileExistsError:
            raise ProjectExists(
                "a project with this ID already exists",
                project=project_id,
                path=directory,
                hint="open it with open_project() or choose another ID",
            ) from None
        except OSError as exc:
            raise StorageError(
                f"cannot create the project directory: {exc.strerror}",
                project=project_id,
                path=directory,
                hint="check the permissions of the projects directory",
            ) from exc
        os.chmod(directory, 0o700)
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
        return project

    async def open_project(self, project_id: str) -> AsyncProjectStore:
        """Return the open project with this ID, opening (and migrating) it if needed."""
        self._check_open()
        validate_project_id(project_id)
        project = self._open.get(project_id)
        if project is not None and not project.closed:
            return project
        pending = self._opening.get(project_id)
        if pending is not None:
            return await asyncio.shield(pending)
        future: asyncio.Future[AsyncProjectStore] = asyncio.get_running_loop().create_future()
        self._opening[project_id] = future
        try:
            path = self.database_path(project_id)
            if not path.parent.is_dir():
                raise ProjectNotFound(
                    "no such project",
                    project=project_id,
                    path=path.parent,
                    hint="list projects with Store.list_projects() or `demiarch-store list`",
                )
            project = AsyncProjectStore(
                path, config=self.config, project_id=project_id, create=False
            )
            await project.open()
            self._adopt(project)
            future.set_result(project)
            return project
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()  # retrieved: the waiters re-raise it themselves
            raise
        finally:
            del self._opening[project_id]

    def _adopt(self, project: AsyncProjectStore) -> None:
        self._open[project.id] = project
        project._on_close.append(self._forget)

    def _forget(self, project: AsyncProjectStore) -> None:
        if self._open.get(project.id) is project:
            del self._open[project.id]

    async def delete_project(self, project_id: str) -> None:
        """Close the project if open, then delete its directory: database, -wal, -shm, backups."""
        self._check_open()
        directory = self.project_dir(project_id)
        project = self._open.get(project_id)
        if project is not None:
            await project.close()
        if not directory.is_dir():
            raise ProjectNotFound(
                "no such project",
                project=project_id,
                path=directory,
                hint="list projects with Store.list_projects()",
            )
        try:
            await asyncio.to_thread(shutil.rmtree, directory)
        except OSError as exc:
            raise StorageError(
                f"cannot delete the project: {exc.strerror}",
                project=project_id,
                path=directory,
                hint="check the permissions of the project directory",
            ) from exc

    # -- discovery ----------------------------------------------------------------------------

    async def list_projects(self) -> list[ProjectInfo]:
        """Describe every project directory, sorted by ID. Never raises for a bad entry."""
        self._check_open()
        return await asyncio.to_thread(discover, self.projects_dir)


def discover(projects_dir: Path) -> list[ProjectInfo]:
    """Scan ``projects_dir`` read-only and describe each project directory."""
    try:
        entries = sorted(os.scandir(projects_dir), key=lambda e: e.name)
    except FileNotFoundError:
        return []
    except OSError:
        return []
    infos = []
    for entry in entries:
        try:
            validate_project_id(entry.name)
        except StoreError:
            continue  # stray files and foreign names are not projects
        if not entry.is_dir(follow_symlinks=False):
            if entry.is_symlink():
                infos.append(
                    _info(
                        entry.name,
                        Path(entry.path),
                        "unreadable",
                        "the project directory is a symlink",
                    )
                )
            continue
        infos.append(describe(entry.name, Path(entry.path) / DATABASE_NAME))
    return infos


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


def describe(project_id: str, path: Path) -> ProjectInfo:
    """Describe one project's database without modifying it."""
    try:
        st = path.lstat()
    except FileNotFoundError:
        return _info(project_id, path, "empty", "the project directory holds no database")
    except OSError as exc:
        return _info(project_id, path, "unreadable", exc.strerror)
    if stat.S_ISLNK(st.st_mode) or not stat.S_ISREG(st.st_mode):
        return _info(project_id, path, "unreadable", "the database is not a regular file")
    size = st.st_size
    if size == 0:
        return _info(project_id, path, "empty", "the database file is empty", size=size)
    try:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, check_same_thread=False)
    except sqlite3.Error as exc:
        return _info(project_id, path, "unreadable", str(exc), size=size)
    try:
        conn.execute("PRAGMA trusted_schema = OFF")
        revision = read_revision(conn)
        if revision is None:
            return _info(project_id, path, "empty", "the database has no schema yet", size=size)
        if revision != HEAD_REVISION:
            from .migrate import known_revisions

            if revision not in known_revisions():
                return _info(
                    project_id,
                    path,
                    "newer_schema",
                    f"schema revision {revision!r} is newer than this code knows",
                    size=size,
                    revision=revision,
                )
        row = conn.execute("SELECT name, updated_at FROM projects LIMIT 1").fetchone()
        name, updated = (row[0], row[1]) if row else (None, None)
        updated_at = _EPOCH + timedelta(microseconds=updated) if updated is not None else None
        return _info(
            project_id,
            path,
            "ok",
            None,
            size=size,
            name=name,
            updated_at=updated_at,
            revision=revision,
        )
    except sqlite3.DatabaseError as exc:
        code = getattr(exc, "sqlite_errorcode", 0) & 0xFF
        if code in (sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB):
            return _info(project_id, path, "corrupt", str(exc), size=size)
        return _info(project_id, path, "unreadable", str(exc), size=size)
    except UnicodeDecodeError:  # sqlite3 decodes TEXT itself: a damaged page
        return _info(
            project_id, path, "corrupt", "the file holds text that is not valid UTF-8", size=size
        )
    except CorruptDatabase as exc:  # pragma: no cover - read_revision raises sqlite errors
        return _info(project_id, path, "corrupt", str(exc), size=size)
    finally:
        conn.close()
