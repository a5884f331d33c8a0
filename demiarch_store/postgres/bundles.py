"""Bundles on PostgreSQL: the same portable file (a zip of a SQLite database and a manifest).

Exporting copies the project's rows, read in one snapshot, into a new SQLite database built
from the same schema; importing verifies the bundle exactly as on SQLite (``read_bundle``),
then copies its rows into a new project's schema in one transaction. So a project moves
between the engines in both directions. Rows are held in memory while they are copied.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

from ..revisions import schema_ddl
from ..schema import HEAD_REVISION, metadata

__all__ = ["Rows", "read_sqlite_rows", "select_sql", "write_sqlite_rows"]

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
