"""The one place where psycopg errors become the library's errors."""

from __future__ import annotations

from typing import Final

import psycopg
import psycopg_pool
from psycopg import errors as pg
from sqlalchemy.sql.schema import ColumnCollectionConstraint

from ..errors import (
    ConstraintViolation,
    CorruptDatabase,
    DatabaseBusy,
    InvalidValue,
    PoolTimeout,
    StorageError,
    StoreError,
)

__all__ = ["RETRYABLE", "translate"]

RETRYABLE: Final = frozenset({"40001", "40P01"})
"""SQLSTATEs after which a unit of work is re-run whole: serialization failure, deadlock."""

_LOCK_TIMEOUT: Final = frozenset({"55P03", "57014"})
"""Lock not available (``lock_timeout``) and query canceled (``statement_timeout``)."""


def translate(exc: BaseException, *, project: str | None, url: str, action: str) -> BaseException:
    """Return the StoreError for a psycopg error; return anything else unchanged.

    Messages name the SQLSTATE and the kind of failure, never the server's text (it may quote
    bound values).
    """
    if isinstance(exc, StoreError) or not isinstance(exc, psycopg.Error | psycopg_pool.PoolTimeout):
        return exc
    where = {"project": project, "path": None}
    hint_server = f"check that the server at {url} is up and reachable"
    err: StoreError
    if isinstance(exc, psycopg_pool.PoolTimeout):
        err = PoolTimeout(
            f"{action} failed: no connection to the server within acquire_timeout",
            **where,
            hint="raise pool_size or acquire_timeout, or hold units of work for less time",
        )
    elif isinstance(exc, psycopg.Error) and exc.sqlstate in RETRYABLE | _LOCK_TIMEOUT:
        err = DatabaseBusy(
            f"{action} failed: the server kept the unit waiting (SQLSTATE {exc.sqlstate})",
            **where,
            hint="other units held the same rows past busy_deadline; retry later",
        )
    elif isinstance(exc, pg.IntegrityError):
        detail, hint = _constraint(exc)
        err = ConstraintViolation(f"{action} failed: {detail}", **where, hint=hint)
    elif isinstance(exc, pg.DataError):
        why = f"SQLSTATE {exc.sqlstate}" if exc.sqlstate else "refused before it was sent"
        err = InvalidValue(
            f"{action} failed: a value cannot be stored ({why})",
            **where,
            hint="check the values passed (NUL characters in text, numbers out of range)",
        )
    elif isinstance(exc, pg.DataCorrupted | pg.IndexCorrupted):
        err = CorruptDatabase(
            f"{action} failed: the server reports damaged data (SQLSTATE {exc.sqlstate})",
            **where,
            hint="restore the database from a backup (pg_dump) and tell its administrator",
        )
    elif isinstance(exc, psycopg.OperationalError):
        err = StorageError(
            f"{action} failed: the server could not be reached or dropped the connection",
            **where,
            hint=hint_server,
        )
    else:
        err = StorageError(
            f"{action} failed: {type(exc).__name__} (SQLSTATE {getattr(exc, 'sqlstate', None)})",
            **where,
            hint=hint_server + "; if it is, please report this bug",
        )
    err.__cause__ = exc
    return err


def _constraint(exc: psycopg.Error) -> tuple[str, str]:
    """Say which constraint failed, as SQLite's messages do (table and columns, never values)."""
    from ..errors import _noun
    from ..schema import metadata

    diag = exc.diag
    table = metadata.tables.get(diag.table_name or "")
    name = diag.constraint_name or ""
    if isinstance(exc, pg.ForeignKeyViolation) and table is not None:
        for fk in table.foreign_keys:
            if fk.constraint is not None and fk.constraint.name == name:
                parent = _noun(fk.column.table.name)
                return (
                    f"FOREIGN KEY constraint failed: the {parent} this {_noun(table.name)} "
                    "refers to does not exist",
                    f"a referenced record does not exist: create the {parent} first, or check "
                    "the ID (it may be mistyped or deleted)",
                )
        for other in metadata.tables.values():  # a row still referenced from another table
            for fk in other.foreign_keys:
                if fk.constraint is not None and fk.constraint.name == name:
                    return (
                        "FOREIGN KEY constraint failed: the record is still referenced",
                        f"delete or detach the {_noun(other.name)} records that refer to it first",
                    )
        return "FOREIGN KEY constraint failed", "a referenced record does not exist"
    if isinstance(exc, pg.UniqueViolation) and table is not None:
        columns = ["id"] if name == f"pk_{table.name}" else []
        for c in table.columns:
            if name in (f"{table.name}_{c.name}_key",):
                columns = [c.name]
        for uq in table.constraints:
            if uq.name == name and isinstance(uq, ColumnCollectionConstraint):
                columns = [c.name for c in uq.columns]
        shown = ", ".join(f"{table.name}.{c}" for c in columns) or table.name
        if columns == ["id"]:
            return f"UNIQUE constraint failed: {shown}", "a record with this ID already exists"
        return (
            f"UNIQUE constraint failed: {shown}",
            "a value that must be unique (such as a name) is taken",
        )
    if isinstance(exc, pg.NotNullViolation):
        return f"NOT NULL constraint failed: {diag.table_name}.{diag.column_name}", (
            "a required value is missing"
        )
    return (
        f"a constraint failed (SQLSTATE {exc.sqlstate}, {name or 'unnamed'})",
        "a referenced record does not exist or a unique value is already taken",
    )
