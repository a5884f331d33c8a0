"""Schema revisions on SQLite: reading a database's revision, Alembic's scripts, running them.

The bottom of the migration code: it imports no engine and no backup code, so ``health`` (which
builds the expected schema of a revision in a scratch database) and ``backup`` can use it, and
``migrate`` (which backs a database up before migrating it) sits above them all.
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Callable
from functools import cache
from importlib.resources import files
from pathlib import Path
from typing import Any

from .errors import BackupError, MigrationError, SchemaTooNew

__all__ = [
    "ALEMBIC_VERSION_DDL",
    "alembic_config",
    "alembic_head",
    "has_version_table",
    "holds_data",
    "known_revisions",
    "migrate_file",
    "read_revision",
    "schema_ddl",
    "user_tables",
]

log = logging.getLogger("demiarch_store")


def read_revision(conn: sqlite3.Connection) -> str | None:
    """Return the database's schema revision, or None for a database without our schema."""
    # Reading the schema first makes a file that is not a database fail here, before anything
    # could write to it.
    conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
    try:
        row = conn.execute("SELECT version_num FROM alembic_version").fetchone()
    except sqlite3.OperationalError as exc:
        if "no such table" in str(exc):
            return None
        raise
    if row is None:
        return None
    if not isinstance(row[0], str):
        # version_num is NOT NULL text: anything else is a damaged page, not a newer schema.
        err = sqlite3.DatabaseError("the schema revision row is damaged")
        err.sqlite_errorcode = sqlite3.SQLITE_CORRUPT
        raise err
    return row[0]


def alembic_config(script_location: str | None = None) -> Any:
    """Return an Alembic ``Config`` for the shipped migrations (or another script folder)."""
    from alembic.config import Config

    cfg = Config()
    location = script_location or str(files("demiarch_store.migrations"))
    cfg.set_main_option("script_location", location)
    return cfg


@cache
def _script(script_location: str | None) -> Any:
    from alembic.script import ScriptDirectory

    return ScriptDirectory.from_config(alembic_config(script_location))


def known_revisions(script_location: str | None = None) -> tuple[str, ...]:
    """Return every revision this code knows, oldest first (starts Alembic's script loader)."""
    script = _script(script_location)
    return tuple(reversed([rev.revision for rev in script.walk_revisions()]))


def alembic_head(script_location: str | None = None) -> str:
    """Return Alembic's head revision (``HEAD_REVISION`` for the shipped migrations)."""
    return str(_script(script_location).get_current_head())


ALEMBIC_VERSION_DDL = (
    "CREATE TABLE alembic_version (\n"
    "\tversion_num VARCHAR(32) NOT NULL, \n"
    "\tCONSTRAINT alembic_version_pkc PRIMARY KEY (version_num)\n)"
)
"""Alembic's own version table, as Alembic creates it on SQLite."""


@cache
def schema_ddl() -> tuple[str, ...]:
    """Return the statements creating the schema at ``HEAD_REVISION`` (tables, then indexes)."""
    from sqlalchemy.dialects import sqlite
    from sqlalchemy.schema import CreateIndex, CreateTable

    from .schema import metadata

    dialect = sqlite.dialect()
    statements = [ALEMBIC_VERSION_DDL]
    for table in metadata.sorted_tables:
        statements.append(str(CreateTable(table).compile(dialect=dialect)).strip())
        for index in sorted(table.indexes, key=lambda i: str(i.name)):
            statements.append(str(CreateIndex(index).compile(dialect=dialect)).strip())
    return tuple(statements)


def user_tables(conn: sqlite3.Connection) -> list[str]:
    """Return the tables other than SQLite's own and ``alembic_version``."""
    return [
        row[0]
        for row in conn.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table' "
            "AND name NOT LIKE 'sqlite\\_%' ESCAPE '\\' AND name != 'alembic_version'"
        )
    ]


def has_version_table(conn: sqlite3.Connection) -> bool:
    row = conn.execute(
        "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = 'alembic_version'"
    ).fetchone()
    return bool(row[0])


def holds_data(conn: sqlite3.Connection) -> bool:
    """Return True if any table but ``alembic_version`` has a row."""
    for name in user_tables(conn):
        quoted = '"' + name.replace('"', '""') + '"'
        if conn.execute(f"SELECT EXISTS (SELECT 1 FROM {quoted})").fetchone()[0]:
            return True
    return False


def migrate_file(
    path: Path,
    *,
    project: str | None,
    target: str = "head",
    busy_timeout_ms: int = 10_000,
    back_up: Callable[[str | None, str | None], Path] | None = None,
    script_location: str | None = None,
) -> tuple[str | None, str | None]:
    """Migrate the file to ``target`` in one transaction; return (revision before, after).

    Runs synchronously (on a connection thread). ``target`` is ``"head"``, ``"base"`` or a
    revision; older targets downgrade. If the database holds data, ``back_up(before, goal)`` is
    called first, while the migration holds the write lock (``migrate.run_migrations`` passes
    one that writes a backup). Raises ``MigrationError`` naming the revision that failed; the
    transaction is rolled back, so the schema and data stay as they were.
    """
    from alembic import command
    from sqlalchemy import create_engine, event
    from sqlalchemy.pool import NullPool

    def creator() -> sqlite3.Connection:
        conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout_ms)}")
        # Off whatever SQLite's compiled default: a revision that rebuilds a table (0003) drops
        # the old copy, which with foreign keys on would delete or null the rows pointing at it.
        # PRAGMA foreign_key_check below verifies every reference before the commit.
        conn.execute("PRAGMA foreign_keys = OFF")
        return conn

    script = _script(script_location)
    revisions = known_revisions(script_location)
    if target == "head":
        goal: str | None = alembic_head(script_location)
    elif target == "base":
        goal = None
    elif target in revisions:
        goal = target
    else:
        raise MigrationError(
            f"unknown schema revision {target!r}",
            project=project,
            path=path,
            hint=f"known revisions: head, base, {', '.join(revisions)}",
        )

    engine = create_engine("sqlite://", creator=creator, poolclass=NullPool)

    @event.listens_for(engine, "begin")
    def _begin(conn: Any) -> None:
        conn.exec_driver_sql("BEGIN IMMEDIATE")

    applied: list[object] = []

    def on_apply(**_: Any) -> None:
        applied.append(None)

    cfg = alembic_config(script_location)
    cfg.attributes["on_version_apply"] = on_apply
    before: str | None = None
    backup: Path | None = None
    steps: list[str] = []
    try:
        with engine.begin() as conn:
            raw = conn.connection.dbapi_connection
            assert raw is not None
            before = read_revision(raw)  # type: ignore[arg-type]
            if before is not None and before not in revisions:
                raise SchemaTooNew(
                    f"the database is at schema revision {before!r}, newer than this "
                    f"demiarch-store knows (head {revisions[-1]!r})",
                    project=project,
                    path=path,
                    hint="upgrade demiarch-store to open it; the file was not modified",
                )
            if before == goal:
                return before, before
            upgrade = _position(revisions, goal) > _position(revisions, before)
            if upgrade:
                steps = [r.revision for r in script.iterate_revisions(goal, before or "base")]
                steps.reverse()
            else:
                steps = [r.revision for r in script.iterate_revisions(before, goal or "base")]
            if back_up is not None and holds_data(raw):  # type: ignore[arg-type]
                backup = back_up(before, goal)
            cfg.attributes["connection"] = conn
            if upgrade:
                command.upgrade(cfg, goal or "base")
            else:
                command.downgrade(cfg, goal or "base")
            after = read_revision(raw)  # type: ignore[arg-type]
            problems = raw.execute("PRAGMA foreign_key_check").fetchall()
            if problems:
                raise MigrationError(
                    f"migration to {after!r} left {len(problems)} rows violating foreign keys",
                    project=project,
                    path=path,
                    hint="the migration was rolled back; please report this bug",
                )
        log.info("migrated %s from %s to %s", path, before, after)
        return before, after
    except (MigrationError, SchemaTooNew, BackupError):
        raise
    except Exception as exc:
        failed = steps[len(applied)] if len(applied) < len(steps) else target
        raise MigrationError(
            f"migrating the schema from {before!r} to {goal!r} failed at revision "
            f"{failed!r}: {type(exc).__name__}",
            project=project,
            path=path,
            hint="the database was left as it was"
            + (f" (a copy taken before is {str(backup)!r})" if backup is not None else "")
            + "; check free space and permissions, or report the bug",
        ) from exc
    finally:
        engine.dispose()


def _position(revisions: tuple[str, ...], revision: str | None) -> int:
    return -1 if revision is None else revisions.index(revision)
