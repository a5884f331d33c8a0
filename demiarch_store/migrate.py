"""Schema revisions: a fast check on open, and Alembic only when something must change.

Opening a project reads ``alembic_version`` with one query. Only when the revision is not the
head this code was built with does Alembic start: it is told to upgrade inside one
``BEGIN IMMEDIATE`` transaction, after re-reading the revision under that lock, so two processes
opening the same old database migrate it once and a failed migration leaves it as it was.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from functools import cache
from importlib.resources import files
from pathlib import Path
from typing import Any

from .errors import CorruptDatabase, MigrationError, SchemaTooNew
from .schema import HEAD_REVISION

__all__ = [
    "HEAD_REVISION",
    "alembic_config",
    "known_revisions",
    "read_revision",
    "revision_check",
    "run_migrations",
]


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


def alembic_config() -> Any:
    """Return an Alembic ``Config`` pointing at the migrations shipped with the package."""
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(files("demiarch_store.migrations")))
    return cfg


@cache
def known_revisions() -> tuple[str, ...]:
    """Return every revision this code knows, oldest first (starts Alembic's script loader)."""
    from alembic.script import ScriptDirectory

    script = ScriptDirectory.from_config(alembic_config())
    return tuple(reversed([rev.revision for rev in script.walk_revisions()]))


def revision_check(project: str | None, path: Path) -> Callable[[sqlite3.Connection], str | None]:
    """Return the check run when a project opens, before anything may write to its file."""

    def check(conn: sqlite3.Connection) -> str | None:
        revision = read_revision(conn)
        if revision is None:
            tables = conn.execute(
                "SELECT count(*) FROM sqlite_master WHERE type = 'table'"
            ).fetchone()[0]
            if tables:
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


def run_migrations(
    path: Path,
    *,
    project: str | None,
    target: str = "head",
    busy_timeout_ms: int = 10_000,
) -> tuple[str | None, str | None]:
    """Migrate the file to ``target`` in one transaction; return (revision before, after).

    Runs synchronously (on a connection thread). Raises ``MigrationError`` naming the revision
    that failed; the transaction is rolled back, so the schema and data stay as they were.
    """
    from alembic import command
    from sqlalchemy import create_engine, event
    from sqlalchemy.pool import NullPool

    def creator() -> sqlite3.Connection:
        conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout_ms)}")
        return conn

    engine = create_engine("sqlite://", creator=creator, poolclass=NullPool)

    @event.listens_for(engine, "begin")
    def _begin(conn: Any) -> None:
        conn.exec_driver_sql("BEGIN IMMEDIATE")

    applied: list[str] = []
    step: list[str | None] = [None]

    def on_apply(*, step: Any, **_: Any) -> None:
        applied.append(str(step.up_revision_id if step.is_upgrade else step.down_revision_ids))

    cfg = alembic_config()
    cfg.attributes["on_version_apply"] = on_apply
    before: str | None = None
    try:
        with engine.begin() as conn:
            raw = conn.connection.dbapi_connection
            assert raw is not None
            before = read_revision(raw)  # type: ignore[arg-type]
            step[0] = before
            if target == "head" and before == HEAD_REVISION:
                return before, before
            cfg.attributes["connection"] = conn
            if target == "head" or _is_ahead(target, before):
                command.upgrade(cfg, target)
            else:
                command.downgrade(cfg, target)
            after = read_revision(raw)  # type: ignore[arg-type]
            problems = raw.execute("PRAGMA foreign_key_check").fetchall()
            if problems:
                raise MigrationError(
                    f"migration to {after!r} left {len(problems)} rows violating foreign keys",
                    project=project,
                    path=path,
                    hint="the migration was rolled back; please report this bug",
                )
        return before, after
    except MigrationError:
        raise
    except Exception as exc:
        failed = _next_revision(before, applied, target)
        raise MigrationError(
            f"migrating the schema from {before!r} failed at revision {failed!r}: "
            f"{type(exc).__name__}",
            project=project,
            path=path,
            hint="the database was left as it was; check free space and permissions, "
            "or report the bug",
        ) from exc
    finally:
        engine.dispose()


def _is_ahead(target: str, current: str | None) -> bool:
    revisions = known_revisions()
    if target not in revisions and target != "base":
        raise MigrationError(
            f"unknown schema revision {target!r}",
            hint=f"known revisions: {', '.join(revisions)}",
        )
    if target == "base":
        return False
    return current is None or revisions.index(target) > revisions.index(current)


def _next_revision(before: str | None, applied: list[str], target: str) -> str:
    revisions = known_revisions()
    last = applied[-1] if applied else before
    if last in revisions:
        index = revisions.index(last) + 1
        return revisions[index] if index < len(revisions) else target
    return revisions[0] if revisions else target
