"""The exception hierarchy, and the one place where driver errors are translated.

    StoreError
    ├── InvalidProjectId         (ValueError)  an ID that could leave the projects directory
    ├── InvalidValue             (ValueError)  an argument that cannot be stored (float money, ...)
    ├── ProjectNotFound          (LookupError)
    ├── ProjectExists
    ├── NotFound                 (LookupError) a record
    ├── ConstraintViolation      (ValueError)  a foreign key, unique or check constraint failed
    ├── CorruptDatabase          a file that is not a healthy SQLite database
    ├── SchemaTooNew             written by a newer demiarch-store
    ├── MigrationError
    ├── PoolTimeout              (TimeoutError) no connection within acquire_timeout
    ├── DatabaseBusy             (TimeoutError) another process held the lock past busy_deadline
    ├── StorageError             (OSError)     disk full, read-only file, I/O error, permissions
    │   └── OutcomeUnknown                     the connection was lost during COMMIT
    ├── StoreClosed
    ├── BackupError
    ├── BundleError              a project bundle that is damaged, tampered with or unknown
    ├── UnexpectedSchema         a file from elsewhere holds objects the library never makes
    ├── ForeignFiles             a folder to delete holds files the library did not make
    ├── ProjectHealthy           quarantine of a healthy project, without force
    └── NotSupported             what one engine cannot do (vacuum a PostgreSQL project, ...)

Every message names what went wrong, the project, the path and what the user can do. Bound
parameter values never appear in a message: they may hold secrets.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

__all__ = [
    "BackupError",
    "BundleError",
    "ConstraintViolation",
    "CorruptDatabase",
    "DatabaseBusy",
    "ForeignFiles",
    "InvalidProjectId",
    "InvalidValue",
    "MigrationError",
    "NotFound",
    "NotSupported",
    "OutcomeUnknown",
    "PoolTimeout",
    "ProjectExists",
    "ProjectHealthy",
    "ProjectNotFound",
    "SchemaTooNew",
    "StorageError",
    "StoreClosed",
    "StoreError",
    "UnexpectedSchema",
    "translate",
]


class StoreError(Exception):
    """Base class of every error raised by demiarch-store."""

    def __init__(
        self,
        message: str,
        *,
        project: str | None = None,
        path: Path | str | None = None,
        hint: str | None = None,
    ) -> None:
        self.message = message
        self.project = project
        self.path = Path(path) if path is not None else None
        self.hint = hint
        parts = [message]
        where = []
        if project is not None:
            where.append(f"project {project!r}")
        if path is not None:
            where.append(f"at {str(path)!r}")
        if where:
            parts.append(f" ({', '.join(where)})")
        if hint:
            parts.append(f": {hint}")
        super().__init__("".join(parts))


class InvalidProjectId(StoreError, ValueError):
    """A project ID that is empty, too long or could escape the projects directory."""


class InvalidValue(StoreError, ValueError):
    """An argument a repository cannot store faithfully."""


class ProjectNotFound(StoreError, LookupError):
    """No project with this ID exists in the projects directory."""


class ProjectExists(StoreError):
    """A project with this ID already exists."""


class NotFound(StoreError, LookupError):
    """No record with this ID."""


class ConstraintViolation(StoreError, ValueError):
    """A foreign key, unique or check constraint refused a write."""


class CorruptDatabase(StoreError):
    """The file is not a healthy SQLite database."""


class SchemaTooNew(StoreError):
    """The database was written by a newer version of demiarch-store."""


class MigrationError(StoreError):
    """A schema migration failed; the database was left as it was."""


class PoolTimeout(StoreError, TimeoutError):
    """No connection became free within ``acquire_timeout``."""


class DatabaseBusy(StoreError, TimeoutError):
    """Another process held the write lock for longer than ``busy_deadline``."""


class StorageError(StoreError, OSError):
    """The operating system refused: disk full, read-only file, I/O error or permissions."""


class OutcomeUnknown(StorageError):
    """The connection to the server was lost during ``COMMIT``: the unit may or may not be applied.

    Never retried silently: read the data to find out whether the unit's writes are there.
    """


class StoreClosed(StoreError):
    """The store or project was used after ``close()``."""


class BackupError(StoreError):
    """A backup could not be written, verified or restored."""


class BundleError(StoreError):
    """A project bundle is truncated, tampered with, unsafe or in a format this code can't read."""


class UnexpectedSchema(StoreError):
    """A database from elsewhere holds a trigger, a view or another object the library never
    makes, or a schema unlike its revision's; it was refused before anything in it ran."""


class ForeignFiles(StoreError):
    """A project folder holds files the library did not make; deleting it would lose them."""


class ProjectHealthy(StoreError):
    """Quarantine was asked for a project whose database is healthy (pass ``force=True``)."""


class NotSupported(StoreError):
    """What this project's engine cannot do: a file's operation (vacuum, quarantine, a path)
    on PostgreSQL; the hint names what to use instead."""


_BUSY = {sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED}
_CORRUPT = {sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB}
_STORAGE = {
    sqlite3.SQLITE_FULL: ("the disk is full", "free some space and retry"),
    sqlite3.SQLITE_IOERR: ("an I/O error occurred", "check the disk and the file system"),
    sqlite3.SQLITE_READONLY: (
        "the database is read-only",
        "check the permissions of the file and its directory",
    ),
    sqlite3.SQLITE_CANTOPEN: (
        "the database file cannot be opened",
        "check that the directory exists and is writable",
    ),
    sqlite3.SQLITE_PERM: ("permission denied", "check the permissions of the file"),
    sqlite3.SQLITE_NOLFS: ("the file is too large", "free some space or split the project"),
}

_CONSTRAINT_HINTS = {
    sqlite3.SQLITE_CONSTRAINT_FOREIGNKEY: (
        "a referenced record does not exist (an agent, conversation, checkpoint, ...) or "
        "one still referenced cannot be removed; create or keep it first"
    ),
    sqlite3.SQLITE_CONSTRAINT_UNIQUE: "a value that must be unique (such as a name) is taken",
    sqlite3.SQLITE_CONSTRAINT_PRIMARYKEY: "a record with this ID already exists",
    sqlite3.SQLITE_CONSTRAINT_NOTNULL: "a required value is missing",
}


_UNDECODABLE = "Could not decode to UTF-8"
def _noun(table: str) -> str:
    """A person's word for one row of ``table``: ``llm_calls`` -> ``llm call``."""
    return table.removesuffix("s").replace("_", " ")


def translate(
    exc: BaseException,
    *,
    project: str | None,
    path: Path | str | None,
    action: str,
) -> BaseException:
    """Return the StoreError for a driver error; return anything else unchanged.

    This is the only place where ``sqlite3`` errors become the library's errors.
    """
    if isinstance(exc, UnicodeDecodeError) or (
        isinstance(exc, sqlite3.OperationalError) and str(exc).startswith(_UNDECODABLE)
    ):
        # sqlite3 decodes TEXT as UTF-8 itself: bytes that are not are a damaged file. Its
        # message quotes the stored text, so it must not reach ours.
        err: StoreError = CorruptDatabase(
            f"{action} failed: the file holds text that is not valid UTF-8",
            project=project,
            path=path,
            hint="restore it from a backup, or move it aside and recreate the project",
        )
        err.__cause__ = exc
        return err
    if isinstance(exc, UnicodeEncodeError | OverflowError):
        what = "text that is not valid Unicode" if isinstance(exc, UnicodeError) else "a huge int"
        err = InvalidValue(
            f"{action} failed: a value cannot be stored ({what})",
            project=project,
            path=path,
            hint="remove lone surrogates from text; keep integers within 64 bits",
        )
        err.__cause__ = exc
        return err
    if isinstance(exc, StoreError) or not isinstance(exc, sqlite3.Error):
        if isinstance(exc, OSError) and not isinstance(exc, StoreError):
            oserr = StorageError(
                f"{action} failed: {exc.strerror or exc}",
                project=project,
                path=path,
                hint="check the permissions and free space of the projects directory",
            )
            oserr.__cause__ = exc
            return oserr
        return exc
    code = getattr(exc, "sqlite_errorcode", None)
    primary = code & 0xFF if isinstance(code, int) else None
    detail = str(exc)
    if primary in _BUSY:
        err = DatabaseBusy(
            f"{action} failed: the database is locked by another connection",
            project=project,
            path=path,
            hint="another process holds the write lock; retry later or raise busy_deadline",
        )
    elif primary in _CORRUPT:
        err = CorruptDatabase(
            f"{action} failed: the file is not a healthy SQLite database ({detail})",
            project=project,
            path=path,
            hint="restore it from a backup, or move it aside and recreate the project",
        )
    elif primary == sqlite3.SQLITE_CONSTRAINT:
        # sqlite3 names the constraint and its columns here, never the values.
        hint = _CONSTRAINT_HINTS.get(
            code if isinstance(code, int) else 0,
            "a referenced record does not exist or a unique value is already taken",
        )
        explained = getattr(exc, "foreign_key", None)  # see schema.explain_foreign_key
        if code == sqlite3.SQLITE_CONSTRAINT_FOREIGNKEY and explained is not None:
            detail, hint = f"{detail}: {explained[0]}", explained[1]
        err = ConstraintViolation(
            f"{action} failed: {detail}", project=project, path=path, hint=hint
        )
    elif primary in _STORAGE:
        what, hint = _STORAGE[primary]
        err = StorageError(f"{action} failed: {what}", project=project, path=path, hint=hint)
    else:
        # Never echo the SQL's parameters; sqlite3 messages name tables and columns only.
        err = StoreError(
            f"{action} failed: {detail}",
            project=project,
            path=path,
            hint="this is likely a bug in demiarch-store; please report it",
        )
    err.__cause__ = exc
    return err
