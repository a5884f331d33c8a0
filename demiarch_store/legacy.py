"""Legacy import: split one global database of many projects into one database per project.

The legacy layout is a single SQLite file whose ``projects`` table lists every project and whose
other tables of our schema carry a ``project_id`` column. The copy is generic over
``schema.metadata``: table by table in foreign-key order, the columns both sides share, the rows
of one project (by ``project_id``, or for a table without it, the rows whose foreign key points
at rows already copied). Tables added to the schema are covered without a change here.

The source is opened read-only and never written. Each project is built in a staging file and
claimed with ``mkdir``, so a project is imported whole or not at all, exactly once, and a second
run skips what the first imported.
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import JSON

from .backup import Staging, create_database_file, make_private_dir, require_space
from .bundles import publish
from .errors import CorruptDatabase, ProjectExists, StorageError, StoreError, UnexpectedSchema
from .health import foreign_object, harden
from .ids import DATABASE_NAME, validate_project_id
from .migrate import run_migrations
from .schema import metadata
from .sqlite.connection import readonly_uri

__all__ = ["LegacyImportReport", "import_legacy"]


@dataclass(frozen=True)
class LegacyImportReport:
    """What ``Store.import_legacy`` did, project by project."""

    source: Path
    """The legacy database (left exactly as it was)."""

    imported: list[str] = field(default_factory=list)
    """IDs of the projects imported by this run, in ID order."""

    skipped: dict[str, str] = field(default_factory=dict)
    """Project ID -> why it was not imported (already there, invalid ID, bad rows)."""

    rows: dict[str, dict[str, int]] = field(default_factory=dict)
    """Project ID -> table -> rows copied, for the imported projects."""

    notes: list[str] = field(default_factory=list)
    """Tables and columns of either side that were not copied, and why."""


_Plan = list[tuple[str, list[str], str]]


def _plan(src: sqlite3.Connection, source: Path) -> tuple[_Plan, list[str]]:
    """Decide, per schema table, which columns to copy and how to pick one project's rows."""
    tables = [
        r[0]
        for r in src.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'"
        )
    ]
    columns = {t: [r[1] for r in src.execute(f'PRAGMA table_info("{t}")')] for t in tables}
    if "id" not in columns.get("projects", []):
        raise StoreError(
            "the file is not a legacy demiarch database: it has no projects table with an id",
            path=source,
            hint="point import_legacy() at the old global database",
        )
    plan: _Plan = []
    notes: list[str] = []
    copied: set[str] = set()
    for table in metadata.sorted_tables:
        name = table.name
        legacy = columns.get(name)
        if legacy is None:
            notes.append(f"table {name}: not in the legacy database; left empty")
            continue
        shared = [c.name for c in table.columns if c.name in legacy]
        extra = [c for c in legacy if c not in table.columns and c != "project_id"]
        if extra:
            notes.append(f"table {name}: legacy columns {', '.join(extra)} are not in the schema")
        if name == "projects":
            where = '"id" = :pid'
        elif "project_id" in legacy:
            where = '"project_id" = :pid'
        else:
            links = [
                fk
                for fk in table.foreign_keys
                if fk.column.table.name in copied and fk.parent.name in shared
            ]
            if not links:
                notes.append(
                    f"table {name}: no project_id column and no link to a copied table; not copied"
                )
                continue
            fk = links[0]
            where = (
                f'"{fk.parent.name}" IN (SELECT "{fk.column.name}" '
                f'FROM main."{fk.column.table.name}")'
            )
        plan.append((name, shared, where))
        copied.add(name)
    known = {t.name for t in metadata.sorted_tables} | {"alembic_version"}
    for name in sorted(set(tables) - known):
        notes.append(f"table {name}: not part of the schema; not copied")
    return plan, notes


_JSON_COLUMNS = frozenset(
    (t.name, c.name) for t in metadata.sorted_tables for c in t.columns if isinstance(c.type, JSON)
)


def _json_number_text(value: Any) -> Any:
    """A legacy JSON column declared ``JSON`` (NUMERIC affinity) may hold a top-level number as
    an SQLite number: its exact JSON text (SQLite's own conversion keeps 15 digits of a float)."""
    if isinstance(value, int | float):
        return json.dumps(value)
    return value


def _copy(staged: Path, source_uri: str, plan: _Plan, project_id: str) -> dict[str, int]:
    """Copy one project's rows into ``staged`` (a fresh database at head) in one transaction."""
    conn = sqlite3.connect(staged, isolation_level=None)
    try:
        conn.execute("PRAGMA foreign_keys = ON")
        conn.execute("PRAGMA trusted_schema = OFF")
        conn.create_function("demiarch_json_text", 1, _json_number_text, deterministic=True)
        conn.execute("ATTACH DATABASE ? AS legacy", (source_uri,))
        counts: dict[str, int] = {}
        conn.execute("BEGIN IMMEDIATE")
        for name, cols, where in plan:
            names = ", ".join(f'"{c}"' for c in cols)
            values = ", ".join(
                f'demiarch_json_text("{c}")' if (name, c) in _JSON_COLUMNS else f'"{c}"'
                for c in cols
            )
            cur = conn.execute(
                f'INSERT INTO main."{name}" ({names}) '
                f'SELECT {values} FROM legacy."{name}" WHERE {where}',
                {"pid": project_id},
            )
            counts[name] = cur.rowcount
        problems = conn.execute("PRAGMA main.foreign_key_check").fetchall()
        if problems:
            raise sqlite3.IntegrityError(
                f"{len(problems)} rows break foreign keys (first in table {problems[0][0]})"
            )
        conn.execute("COMMIT")
        conn.execute("DETACH DATABASE legacy")
        return counts
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    finally:
        conn.close()


def _clone(template: Path, dest: Path) -> None:
    """Fill the new file ``dest`` with the template database (the schema at head, no rows)."""
    tmpl = sqlite3.connect(template)
    try:
        dst = sqlite3.connect(dest)
        try:
            tmpl.backup(dst)
        finally:
            dst.close()
    finally:
        tmpl.close()


def import_legacy(source: Path, projects_dir: Path) -> LegacyImportReport:
    """Split the legacy database ``source`` into ``<projects_dir>/<id>/database.sqlite`` files.

    Runs in a thread. Raises ``StorageError`` if the source cannot be read, ``CorruptDatabase``
    if it is not a healthy database, ``StoreError`` if it has no ``projects`` table.
    """
    source = source.expanduser()
    if not source.is_file():
        raise StorageError(
            "no legacy database at this path",
            path=source,
            hint="point import_legacy() at the old global database file",
        )
    wal, shm = Path(f"{source}-wal"), Path(f"{source}-shm")
    if wal.exists() and wal.stat().st_size > 0 and not shm.exists():
        # Reading without the -shm would mean either creating it (writing beside the source)
        # or ignoring the -wal's transactions (losing them): refuse instead.
        raise StorageError(
            "the legacy database has a -wal file but no -shm: its last transactions are not "
            "readable without writing",
            path=source,
            hint="open it once with the old application or the sqlite3 shell, then retry",
        )
    # readonly_uri never lets SQLite create side files (ATTACH accepts the same URI).
    uri = readonly_uri(source)
    report = LegacyImportReport(source=source)
    try:
        src = sqlite3.connect(uri, uri=True, isolation_level=None)
        try:
            harden(src)
            src.execute("BEGIN")
            # Before any of its tables is read: a view or a trigger would run its own SQL.
            foreign = foreign_object(src)
            if foreign is not None:
                raise UnexpectedSchema(
                    f"the legacy database holds {foreign}, which demiarch-store never makes; "
                    "nothing was imported",
                    path=source,
                    hint="drop it with the sqlite3 shell on a copy of the file you trust, "
                    "then import that copy",
                )
            plan, notes = _plan(src, source)
            ids = [r[0] for r in src.execute("SELECT id FROM projects ORDER BY id")]
        finally:
            src.close()
    except sqlite3.Error as exc:
        raise CorruptDatabase(
            f"cannot read the legacy database ({exc})",
            path=source,
            hint="check that it is the old global database and is not damaged",
        ) from exc
    report.notes.extend(notes)
    if any(not os.path.lexists(projects_dir / str(i)) for i in ids):
        # Every project's rows come from the source: together they take about its size.
        require_space(
            projects_dir,
            source.stat().st_size,
            what="the legacy import",
            project=None,
            source=source,
        )
    make_private_dir(projects_dir)
    with Staging(projects_dir, ".legacy-") as staging_dir:
        staging = staging_dir.path
        template = staging / "template.sqlite"
        create_database_file(template)
        run_migrations(template, project=None)
        for project_id in ids:
            key = str(project_id)
            try:
                validate_project_id(project_id)
            except StoreError:
                report.skipped[key] = (
                    "not a valid project ID (1-64 lowercase letters, digits, '-' or '_')"
                )
                continue
            if os.path.lexists(projects_dir / project_id):
                report.skipped[key] = "a project with this ID already exists (imported before?)"
                continue
            work = staging / project_id
            work.mkdir(mode=0o700)
            staged = work / DATABASE_NAME
            create_database_file(staged)
            _clone(template, staged)
            try:
                counts = _copy(staged, uri, plan, project_id)
                publish(staged, projects_dir, project_id)
            except ProjectExists:
                report.skipped[key] = "a project with this ID already exists (imported before?)"
            except sqlite3.Error as exc:
                report.skipped[key] = f"its rows could not be copied: {exc}"
            else:
                report.imported.append(project_id)
                report.rows[project_id] = counts
            finally:
                shutil.rmtree(work, ignore_errors=True)
    return report
