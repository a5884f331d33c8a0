"""The tables of a project on PostgreSQL, from the same metadata SQLite's schema comes from.

Column types mirror SQLite's storage classes, so the repositories' converters (``Codec``) read
and write the same Python values on both engines: integers (timestamps in microseconds, money in
nano-units, booleans) are ``BIGINT``, binary data ``BYTEA``, JSON documents ``TEXT`` (kept byte
for byte as written, as on SQLite; ``JSONB`` would reorder their keys) and strings ``TEXT``
(the repositories check lengths).
"""

from __future__ import annotations

import hashlib
from functools import cache
from typing import Any

from sqlalchemy import JSON, BigInteger, Boolean, Float, Integer, LargeBinary, MetaData, Text
from sqlalchemy.dialects import postgresql
from sqlalchemy.dialects.postgresql import BYTEA, DOUBLE_PRECISION
from sqlalchemy.schema import CreateIndex, CreateTable
from sqlalchemy.types import TypeDecorator, TypeEngine

from ..schema import HEAD_REVISION, metadata

__all__ = ["REGISTRY", "project_ddl", "registry_ddl", "schema_name"]

REGISTRY = "demiarch"
"""The schema holding the registry of projects and the database's schema revision."""


def schema_name(project_id: str) -> str:
    """Return the schema of a project (a valid, unquoted-safe identifier within 63 bytes)."""
    digest = hashlib.blake2b(project_id.encode(), digest_size=6).hexdigest()
    return f"p_{project_id.lower()[:40]}_{digest}"


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
def _statements() -> tuple[str, ...]:
    """The project's DDL with the placeholder schema ``__schema__``."""
    copy = MetaData()
    for table in metadata.sorted_tables:
        table.to_metadata(copy, schema="__schema__")
    dialect = postgresql.dialect()  # type: ignore[no-untyped-call]
    out = []
    for table in copy.sorted_tables:
        for column in table.columns:
            column.type = _pg_type(column.type)
        out.append(str(CreateTable(table).compile(dialect=dialect)).strip())
        for index in sorted(table.indexes, key=lambda i: str(i.name)):
            out.append(str(CreateIndex(index).compile(dialect=dialect)).strip())
    return tuple(out)


def project_ddl(project_id: str) -> list[str]:
    """Return the statements creating a project's schema and tables at ``HEAD_REVISION``."""
    schema = schema_name(project_id)
    return [f'CREATE SCHEMA "{schema}"'] + [s.replace("__schema__", schema) for s in _statements()]


def registry_ddl() -> list[str]:
    """Return the statements creating the registry (idempotent)."""
    return [
        f"CREATE SCHEMA IF NOT EXISTS {REGISTRY}",
        f"CREATE TABLE IF NOT EXISTS {REGISTRY}.alembic_version ("
        "version_num VARCHAR(32) NOT NULL PRIMARY KEY)",
        f"CREATE TABLE IF NOT EXISTS {REGISTRY}.projects ("
        "project_id TEXT PRIMARY KEY, name TEXT NOT NULL, schema_name TEXT NOT NULL UNIQUE, "
        "revision VARCHAR(32) NOT NULL, created_at BIGINT NOT NULL, updated_at BIGINT NOT NULL)",
    ]


assert HEAD_REVISION  # the revision a new project's schema is created at
