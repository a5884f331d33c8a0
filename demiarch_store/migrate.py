"""Schema revisions: a fast check on open, and Alembic only when something must change.

Opening a project reads ``alembic_version`` with one query. A new, empty database gets the
schema at ``HEAD_REVISION`` straight from the metadata, stamped in the same transaction
(``create_schema_job``; a test proves it identical to what the migrations build). Only when
the revision is neither head nor absent does Alembic start: it upgrades inside one
``BEGIN IMMEDIATE`` transaction, after re-reading the revision under that lock, so two
processes opening the same old database migrate it once, and a failed migration leaves it as
it was. A database holding data is backed up to ``<database dir>/backups/`` (0600) first.
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Callable
from functools import cache
from importlib.resources import files
from pathlib import Path
from typing import Any
from urllib.parse import quote

from .errors import BackupError, CorruptDatabase, MigrationError, SchemaTooNew
from .schema import HEAD_REVISION

__all__ = [
    "HEAD_REVISION",
    "alembic_config",
    "alembic_head",
    "backup_before_migration",
    "create_schema_job",
    "holds_data",
    "known_revisions",
    "read_revision",
    "revision_check",
    "run_migrations",
    "schema_ddl",
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


def create_schema_job(
    conn: sqlite3.Connection, deadline_s: float, pool: Any
) -> tuple[str | None, str | None]:
    """Create the schema at head in an empty database, in one transaction; no Alembic.

    Runs on the writer thread. Re-reads the revision under the write lock, so when two
    processes create the same database only one creates the schema. Returns the revisions
    ``(before, after)``: ``(None, HEAD_REVISION)`` if it created the schema, else the revision
    another process put there, twice.
    """
    from .pool import begin_immediate

    begin_immediate(conn, deadline_s, pool)
    try:
        revision = before = read_revision(conn)
        if revision is None:
            if _user_tables(conn):
                raise CorruptDatabase(
                    "the database holds tables but no demiarch-store schema revision",
                    project=pool.project,
                    path=pool.path,
                    hint="this is not a demiarch-store project; move it aside",
                )
            statements = schema_ddl()
            if _has_version_table(conn):  # left empty by a downgrade to base
                statements = statements[1:]
            for statement in statements:
                conn.execute(statement)
            conn.execute("INSERT INTO alembic_version (version_num) VALUES (?)", (HEAD_REVISION,))
            revision = HEAD_REVISION
        conn.execute("COMMIT")
        if before is None:
            # Copy the new schema from the -wal into the database file now, so the file is
            # whole on its own from the start (PASSIVE: never waits for anyone).
            conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
        return before, revision
    finally:
        if conn.in_transaction:
            conn.execute("ROLLBACK")


def revision_check(project: str | None, path: Path) -> Callable[[sqlite3.Connection], str | None]:
    """Return the check run when a project opens, before anything may write to its file."""

    def check(conn: sqlite3.Connection) -> str | None:
        # One snapshot for both reads: between two autocommit reads another process may
        # commit a whole new schema, and tables seen without their revision look foreign.
        conn.execute("BEGIN")
        try:
            revision = read_revision(conn)
            foreign = revision is None and bool(_user_tables(conn))
        finally:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
        if revision is None:
            if foreign:
                raise CorruptDatabase(
                    "the database holds tables but no demiarch-store schema revision",
                    project=project,
                    path=path,
                    hint="this is not a demiarch-store project; move it out of the projects "
                    "directory",
                )
        elif revision != HEAD_REVISION and revision not in known_revisions():
            raise SchemaTooNew(
                f"the database is at schema revision {revision!r}, newer than this "
                f"demiarch-store knows (head {HEAD_REVISION!r})",
                project=project,
                path=path,
                hint="upgrade demiarch-store to open it; the file was not modified",
            )
        return revision

    return check


def _user_tables(conn: sqlite3.Connection) -> list[str]:
    """Return the tables other than SQLite's own and ``alembic_version``."""
    return [
        row[0]
        for row in conn.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table' "
            "AND name NOT LIKE 'sqlite\\_%' ESCAPE '\\' AND name != 'alembic_version'"
        )
    ]


def _has_version_table(conn: sqlite3.Connection) -> bool:
    row = conn.execute(
        "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = 'alembic_version'"
    ).fetchone()
    return bool(row[0])


def holds_data(conn: sqlite3.Connection) -> bool:
    """Return True if any table but ``alembic_version`` has a row."""
    for name in _user_tables(conn):
        quoted = '"' + name.replace('"', '""') + '"'
        if conn.execute(f"SELECT EXISTS (SELECT 1 FROM {quoted})").fetchone()[0]:
            return True
    return False


def backup_before_migration(
    source: sqlite3.Connection, database: Path, before: str | None, target: str | None
) -> Path:
    """Back ``source`` up into the database's backups folder (as ``project.backup()`` names
    them) and return the file; ``restore`` and ``project.backups()`` see it like any other."""
    from .backup import backups_dir_for, make_private_dir, take_backup

    directory = backups_dir_for(database)
    make_private_dir(directory)
    dest = take_backup(source, directory, None, None)
    log.info(
        "backed up %s to %s before migrating its schema from %s to %s",
        database,
        dest,
        before or "base",
        target or "base",
    )
    return dest


def run_migrations(
    path: Path,
    *,
    project: str | None,
    target: str = "head",
    busy_timeout_ms: int = 10_000,
    backup_source: sqlite3.Connection | None = None,
    script_location: str | None = None,
) -> tuple[str | None, str | None]:
    """Migrate the file to ``target`` in one transaction; return (revision before, after).

    Runs synchronously (on a connection thread). ``target`` is ``"head"``, ``"base"`` or a
    revision; older targets downgrade. If the database holds data, a backup is written to
    ``<database dir>/backups/`` first, read through ``backup_source`` (a connection of this
    process that is not in a transaction; a temporary one if not given) while the migration
    holds the write lock. Raises ``MigrationError`` naming the revision that failed; the
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
            if holds_data(raw):  # type: ignore[arg-type]
                backup = _backup(path, backup_source, before, goal, project)
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


def _backup(
    path: Path,
    source: sqlite3.Connection | None,
    before: str | None,
    goal: str | None,
    project: str | None,
) -> Path:
    own = source is None
    try:
        if source is None:
            source = sqlite3.connect(f"file:{quote(str(path.absolute()))}?mode=ro", uri=True)
        try:
            return backup_before_migration(source, path, before, goal)
        finally:
            if own:
                source.close()
    except (OSError, sqlite3.Error) as exc:
        raise BackupError(
            f"could not back up the database before migrating it: {type(exc).__name__}",
            project=project,
            path=path,
            hint="nothing was changed; check free space and permissions of the backups directory",
        ) from exc
