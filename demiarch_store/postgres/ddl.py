"""The tables of a PostgreSQL database of projects: shared tables, one set for every project.

Every table of the SQLite schema (the same ``metadata``) exists once, in the schema ``demiarch``,
with a ``project_id`` column leading its primary key, its unique constraints, its indexes and
its foreign keys (so a record refers only to records of its own project). That is the model
Citus and CockroachDB distribute (by ``project_id``), and 10,000 projects cost 10,000 rows of
``projects``, not 10,000 sets of tables.

A unit of work never names ``project_id``: the repositories' SQL is the same on both engines.
It runs as the role ``demiarch_project`` with the setting ``demiarch.project`` set to its
project (``SCOPE``); row-level security (a policy on every table) then shows it its project's
rows only and refuses any other, and ``project_id`` defaults to that setting on insert. The
store's own login (the tables' owner) is not bound by the policies: it creates, lists,
deletes and checks projects.

Column types mirror SQLite's storage classes, so the repositories' converters (``Codec``) read
and write the same Python values on both engines: integers (timestamps in microseconds, money in
nano-units, booleans) are ``BIGINT``, binary data ``BYTEA``, JSON documents ``TEXT`` (kept byte
for byte as written, as on SQLite; ``JSONB`` would reorder their keys) and strings ``TEXT``
(the repositories check lengths).
"""

from __future__ import annotations

from functools import cache
from typing import Any, Final

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Column,
    Float,
    ForeignKeyConstraint,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    PrimaryKeyConstraint,
    String,
    Table,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.dialects import postgresql
from sqlalchemy.dialects.postgresql import BYTEA, DOUBLE_PRECISION
from sqlalchemy.schema import CreateIndex, CreateTable
from sqlalchemy.types import TypeDecorator, TypeEngine

from ..schema import metadata

__all__ = ["ROLE", "SCHEMA", "SCOPE", "pg_metadata", "schema_ddl"]

SCHEMA: Final = "demiarch"
"""The PostgreSQL schema holding every table (and ``alembic_version``)."""

ROLE: Final = "demiarch_project"
"""The role a unit of work runs as: bound by the row-level security policies."""

SCOPE: Final = (
    "SELECT set_config('demiarch.project', %s, true), set_config('role', 'demiarch_project', true)"
)
"""Binds the rest of a transaction to one project (its one parameter: the project's ID)."""

_PROJECT_ID: Final = "current_setting('demiarch.project')"


def _pg_type(kind: TypeEngine[Any]) -> TypeEngine[Any]:
    impl = kind.impl_instance if isinstance(kind, TypeDecorator) else kind
    if isinstance(kind, JSON) or isinstance(impl, JSON):
        return Text()
    if isinstance(impl, Boolean | Integer | BigInteger):
        return BigInteger()
    if isinstance(impl, Float):
        return DOUBLE_PRECISION()
    if isinstance(impl, LargeBinary):
        return BYTEA()
    return Text()


@cache
def pg_metadata() -> MetaData:
    """The shared tables: each table of ``metadata`` with ``project_id`` leading every key."""
    out = MetaData(schema=SCHEMA)
    for source in metadata.sorted_tables:
        columns: list[Any] = [
            Column("project_id", Text(), nullable=False, server_default=text(_PROJECT_ID))
        ]
        for c in source.columns:
            columns.append(
                Column(
                    c.name,
                    _pg_type(c.type),
                    nullable=c.nullable or False,
                )
            )
        pk = source.primary_key
        columns.append(
            PrimaryKeyConstraint("project_id", *(c.name for c in pk.columns), name=str(pk.name))
        )
        for constraint in sorted(source.constraints, key=lambda c: str(c.name)):
            if isinstance(constraint, UniqueConstraint):
                columns.append(
                    UniqueConstraint(
                        "project_id", *(c.name for c in constraint.columns), name=constraint.name
                    )
                )
        for fk in sorted(source.foreign_key_constraints, key=lambda c: str(c.name)):
            ondelete = fk.ondelete
            if ondelete == "SET NULL":  # never project_id: only the reference's own columns
                ondelete = f"SET NULL ({', '.join(fk.column_keys)})"
            columns.append(
                ForeignKeyConstraint(
                    ["project_id", *fk.column_keys],
                    [
                        f"{SCHEMA}.{fk.referred_table.name}.project_id",
                        *(f"{SCHEMA}.{e.target_fullname}" for e in fk.elements),
                    ],
                    name=fk.name,
                    ondelete=ondelete,
                )
            )
        table = Table(source.name, out, *columns)
        for index in sorted(source.indexes, key=lambda i: str(i.name)):
            Index(
                index.name,
                table.c.project_id,
                *(table.c[c.name] for c in index.columns),
                unique=index.unique,
            )
    Table(
        "alembic_version",
        out,
        Column("version_num", String(32), nullable=False),
        PrimaryKeyConstraint("version_num", name="alembic_version_pkc"),
    )
    return out


@cache
def schema_ddl() -> tuple[str, ...]:
    """The statements creating the schema, its tables, the role and its policies, at head.

    The role is one per server (roles are shared by its databases): it is created if missing.
    The store's login must be allowed to create it (``CREATEROLE``), or an administrator
    creates it once (``CREATE ROLE demiarch_project NOLOGIN``) and grants it to the login.
    """
    dialect = postgresql.dialect()  # type: ignore[no-untyped-call]
    out = [
        f"CREATE SCHEMA IF NOT EXISTS {SCHEMA}",
        "DO $$ BEGIN CREATE ROLE demiarch_project NOLOGIN; "
        "EXCEPTION WHEN duplicate_object OR unique_violation THEN NULL; END $$",
        f"GRANT {ROLE} TO CURRENT_USER",
        f"GRANT USAGE ON SCHEMA {SCHEMA} TO {ROLE}",
    ]
    for table in pg_metadata().sorted_tables:
        out.append(str(CreateTable(table).compile(dialect=dialect)).strip())
        for index in sorted(table.indexes, key=lambda i: str(i.name)):
            out.append(str(CreateIndex(index).compile(dialect=dialect)).strip())
        if table.name == "alembic_version":
            continue
        name = f"{SCHEMA}.{table.name}"
        out += [
            f"ALTER TABLE {name} ENABLE ROW LEVEL SECURITY",
            f"CREATE POLICY project_rows ON {name} TO {ROLE} "
            "USING (project_id = current_setting('demiarch.project', true))",
            f"GRANT SELECT, INSERT, UPDATE, DELETE ON {name} TO {ROLE}",
        ]
    return tuple(out)

