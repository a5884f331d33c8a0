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
from pathlib import Path
from typing import Any
from urllib.parse import quote

from .errors import BackupError, CorruptDatabase, SchemaTooNew
from .revisions import (
    alembic_config,
    alembic_head,
    has_version_table,
    holds_data,
    known_revisions,
    migrate_file,
    read_revision,
    schema_ddl,
    user_tables,
)
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


def create_schema_job(
    conn: sqlite3.Connection, deadline_s: float, pool: Any
) -> tuple[str | None, str | None]:
    """Create the schema at head in an empty database, in one transaction; no Alembic.

    Runs on the writer thread. Re-reads the revision under the write lock, so when two
    processes create the same database only one creates the schema. Returns the revisions
    ``(before, after)``: ``(None, HEAD_REVISION)`` if it created the schema, else the revision
    another process put there, twice.
    """
    from .sqlite.writer import begin_immediate

    begin_immediate(conn, deadline_s, pool)
    try:
        revision = before = read_revision(conn)
        if revision is None:
            if user_tables(conn):
                raise CorruptDatabase(
                    "the database holds tables but no demiarch-store schema revision",
                    project=pool.project,
                    path=pool.path,
                    hint="this is not a demiarch-store project; move it aside",
                )
            statements = schema_ddl()
            if has_version_table(conn):  # left empty by a downgrade to base
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
            foreign = revision is None and bool(user_tables(conn))
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

    As ``revisions.migrate_file``; if the database holds data, a backup is written to
    ``<database dir>/backups/`` first, read through ``backup_source`` (a connection of this
    process that is not in a transaction; a temporary one if not given) while the migration
    holds the write lock.
    """

    def back_up(before: str | None, goal: str | None) -> Path:
        return _backup(path, backup_source, before, goal, project)

    return migrate_file(
        path,
        project=project,
        target=target,
        busy_timeout_ms=busy_timeout_ms,
        back_up=back_up,
        script_location=script_location,
    )


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
