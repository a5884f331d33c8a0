"""Bundles on PostgreSQL: the same portable file (a zip of a SQLite database and a manifest).

Exporting copies the project's rows, read in one snapshot, into a new SQLite database built
from the same schema; importing verifies the bundle exactly as on SQLite (``read_bundle``),
migrates a bundle of an older revision to head, then copies its rows into a new project in one
transaction. So a project moves between the engines in both directions. A backup of a
PostgreSQL project is such a bundle too (``write_backup``), and restoring one replaces the
project's rows in one transaction. Rows are held in memory while they are copied.
"""

from __future__ import annotations

import os
import re
import sqlite3
import tempfile
from pathlib import Path
from typing import Any, Final

from ..backup import Staging, fsync_dir, link_numbered, make_private_dir
from ..bundles import BUNDLE_SUFFIX, Manifest, read_bundle, write_bundle
from ..errors import BackupError, BundleError, SchemaTooNew, StoreError
from ..ids import DATABASE_NAME
from ..revisions import schema_ddl
from ..schema import HEAD_REVISION, metadata

__all__ = [
    "BACKUP_NAME",
    "Rows",
    "backup_rows",
    "bundle_rows",
    "list_backups",
    "read_sqlite_rows",
    "select_sql",
    "write_backup",
    "write_rows_bundle",
    "write_sqlite_rows",
]

Rows = dict[str, list[tuple[Any, ...]]]
"""Every table's rows, by table name, columns in the metadata's order."""


def select_sql(table: str) -> str:
    """The query reading a whole table, columns in the metadata's order, by primary key."""
    t = metadata.tables[table]
    columns = ", ".join(f'"{c.name}"' for c in t.columns)
    order = ", ".join(f'"{c.name}"' for c in t.primary_key.columns) or "1"
    return f'SELECT {columns} FROM "{table}" ORDER BY {order}'


def insert_sql(table: str, placeholder: str) -> str:
    t = metadata.tables[table]
    columns = ", ".join(f'"{c.name}"' for c in t.columns)
    marks = ", ".join(placeholder for _ in t.columns)
    return f'INSERT INTO "{table}" ({columns}) VALUES ({marks})'


def write_sqlite_rows(path: Path, rows: Rows) -> None:
    """Create a project database at head in ``path`` holding ``rows`` (runs in a thread)."""
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute("PRAGMA journal_mode = DELETE")
        conn.execute("BEGIN")
        for statement in schema_ddl():
            conn.execute(statement)
        conn.execute("INSERT INTO alembic_version (version_num) VALUES (?)", (HEAD_REVISION,))
        for table in metadata.sorted_tables:
            conn.executemany(insert_sql(table.name, "?"), rows.get(table.name, []))
        problems = conn.execute("PRAGMA foreign_key_check").fetchall()
        if problems:
            raise sqlite3.IntegrityError(f"{len(problems)} rows break foreign keys")
        conn.execute("COMMIT")
    finally:
        conn.close()


def read_sqlite_rows(path: Path) -> Rows:
    """Read every table of a (verified) project database (runs in a thread)."""
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, isolation_level=None)
    try:
        return {
            table.name: conn.execute(select_sql(table.name)).fetchall()
            for table in metadata.sorted_tables
        }
    finally:
        conn.close()


# -- bundles of rows --------------------------------------------------------------------------


def write_rows_bundle(rows: Rows, target: Path, *, project_id: str, version: str) -> Path:
    """Write ``rows`` as a new bundle file ``target`` (never replaced); runs in a thread.

    The bundle's database is built in a hidden staging folder beside ``target`` (on its file
    system: ``write_bundle`` links the finished archive into place).
    """
    with Staging(target.parent, ".demiarch-export-") as staging:
        snapshot = staging.path / DATABASE_NAME
        write_sqlite_rows(snapshot, rows)
        return write_bundle(snapshot, target, project_id=project_id, version=version)


def bundle_rows(bundle: Path, project_id: str | None) -> tuple[Rows, Manifest]:
    """Verify a bundle as on SQLite, bring it to head, and return its rows; runs in a thread.

    ``project_id`` gives the project a new ID (its project record is renamed). A bundle of an
    older revision is migrated on a scratch copy; one of a newer revision raises
    ``SchemaTooNew``. Nothing is written outside a temporary folder.
    """
    from ..migrate import run_migrations

    with tempfile.TemporaryDirectory(prefix="demiarch-import-") as scratch:
        staging, manifest = read_bundle(bundle, Path(scratch), project_id)
        with staging:
            database = staging.path / DATABASE_NAME
            if manifest.revision != HEAD_REVISION:
                run_migrations(database, project=project_id or manifest.project_id)
            return read_sqlite_rows(database), manifest


# -- backups: bundles in a folder --------------------------------------------------------------

BACKUP_NAME: Final = re.compile(r"(\d{6,})-(\d{8}T\d{6}Z)" + re.escape(BUNDLE_SUFFIX))
"""``<sequence>-<UTC time>.demiarch.zip``: the sequence orders them even if the clock goes back."""


def list_backups(directory: Path) -> list[Path]:
    """Return the finished backups in ``directory``, newest first."""
    try:
        names = os.listdir(directory)
    except (FileNotFoundError, NotADirectoryError):
        return []
    found = [(int(m[1]), n) for n in names if (m := BACKUP_NAME.fullmatch(n)) is not None]
    return [directory / name for _, name in sorted(found, reverse=True)]


def write_backup(
    rows: Rows,
    directory: Path | None,
    dest: Path | None,
    *,
    project_id: str,
    version: str,
    keep: int | None,
) -> Path:
    """Write ``rows`` as a bundle into ``directory`` (or ``dest``, a new file or a directory)
    under the next ``<sequence>-<UTC time>`` name; then keep only the newest ``keep`` there.
    Runs in a thread.

    A name is only given to a finished, fsynced archive (linked into place), so a crash leaves
    a hidden staging folder (removed by the next backup), never a file that looks like a backup.
    """
    if dest is not None:
        dest = dest.expanduser()
        if dest.is_dir():
            directory, dest = dest, None
    try:
        if dest is not None:
            return write_rows_bundle(rows, dest, project_id=project_id, version=version)
        assert directory is not None
        make_private_dir(directory)
        with Staging(directory, ".demiarch-backup-") as staging:
            finished = write_rows_bundle(
                rows,
                staging.path / f"backup{BUNDLE_SUFFIX}",
                project_id=project_id,
                version=version,
            )
            final = link_numbered(finished, list_backups(directory), directory, BUNDLE_SUFFIX)
        fsync_dir(directory)
        if keep is not None:
            for old in list_backups(directory)[keep:]:
                old.unlink(missing_ok=True)  # another process may have pruned it
            fsync_dir(directory)
        return final
    except BundleError as exc:  # the file exists, or the project record is missing
        raise BackupError(exc.message, project=project_id, path=exc.path, hint=exc.hint) from exc
    except (OSError, sqlite3.Error) as exc:
        why = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise BackupError(
            f"the backup could not be written: {why}",
            project=project_id,
            path=dest or directory,
            hint="check that the folder exists, is writable and has free space",
        ) from exc


def backup_rows(backup: Path, project_id: str) -> Rows:
    """Verify a backup (a bundle) of project ``project_id`` and return its rows at head.

    Runs in a thread. A file that is not a sound bundle, or a bundle of another project, raises
    ``BackupError`` (nothing changed); one of a newer revision, ``SchemaTooNew``.
    """
    try:
        rows, manifest = bundle_rows(backup.expanduser(), None)
    except (SchemaTooNew, BackupError):
        raise
    except StoreError as exc:
        raise BackupError(
            f"the backup cannot be restored: {exc.message}",
            project=project_id,
            path=backup,
            hint="choose another backup (a bundle written by backup() or export_project()); "
            "the project was left as it was",
        ) from exc
    except OSError as exc:
        raise BackupError(
            f"the backup cannot be read: {exc.strerror}",
            project=project_id,
            path=backup,
            hint="check the path and its permissions; the project was left as it was",
        ) from exc
    if manifest.project_id != project_id:
        raise BackupError(
            f"the backup holds project {manifest.project_id!r}, not {project_id!r}",
            project=project_id,
            path=backup,
            hint="restore a backup of this project; to add that project beside it, import the "
            "bundle (import_project(), `demiarch-store import`)",
        )
    return rows
