"""The schema: SQLAlchemy Core tables in one ``MetaData``, and the column types they use.

Nothing here is SQLite-only, so the same tables and Alembic revisions can run on PostgreSQL.
Timestamps are stored as integer microseconds since the Unix epoch (UTC) and money as integer
nano-units (1e-9) of the currency: both exact, sortable and summable in SQL. JSON values are
``JSON`` everywhere, declared ``TEXT`` on SQLite so that SQLite keeps their JSON text as written.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from decimal import Decimal, InvalidOperation
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Column,
    Dialect,
    Float,
    ForeignKey,
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
)
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.compiler import TypeCompiler
from sqlalchemy.types import TypeDecorator

from .errors import InvalidValue, _noun

__all__ = [
    "HEAD_REVISION",
    "MICROS_PER_DAY",
    "Money",
    "Timestamp",
    "agent_sessions",
    "agent_states",
    "agents",
    "explain_foreign_key",
    "checkpoints",
    "code_generation",
    "conversations",
    "from_nanos",
    "json_document",
    "lg_blobs",
    "lg_checkpoints",
    "lg_writes",
    "llm_calls",
    "memory_items",
    "memory_vectors",
    "messages",
    "metadata",
    "plugins",
    "projects",
    "sessions",
    "skill_tags",
    "skills",
    "to_micros",
    "to_nanos",
    "utcnow",
]

HEAD_REVISION = "0005"
"""The Alembic revision the tables below describe (a test checks it is Alembic's head)."""

MICROS_PER_DAY = 86_400_000_000
"""Microseconds in a UTC day: ``created_at // MICROS_PER_DAY`` is the day number, portably."""

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
"""Timestamps are stored as microseconds since this instant."""
_MICRO = timedelta(microseconds=1)
_ONE = Decimal(1)


def utcnow() -> datetime:
    """Return the current time, timezone-aware UTC, truncated to what is stored."""
    return datetime.now(UTC)


def to_micros(value: datetime) -> int:
    """Return microseconds since the epoch for an aware datetime."""
    if not isinstance(value, datetime) or value.tzinfo is None:
        raise InvalidValue(
            f"expected a timezone-aware datetime, got {type(value).__name__}",
            hint="use datetime.now(timezone.utc) or attach a tzinfo",
        )
    return (value - EPOCH) // _MICRO


class Timestamp(TypeDecorator[datetime]):
    """A timezone-aware UTC datetime stored as integer microseconds since the epoch."""

    impl = BigInteger
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> int | None:
        return None if value is None else to_micros(value)

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        # timedelta(days, seconds, microseconds) positionally: this runs for every row read.
        return None if value is None else EPOCH + timedelta(0, 0, value)


def to_nanos(value: object) -> int:
    """Return integer nano-units for an exact amount (``Decimal``, ``int`` or ``str``)."""
    if isinstance(value, bool) or not isinstance(value, Decimal | int | str):
        raise InvalidValue(
            f"money must be a Decimal, int or str, not {type(value).__name__}",
            hint="floats cannot hold amounts exactly; pass Decimal('0.0021')",
        )
    try:
        amount = Decimal(value)
    except InvalidOperation:
        raise InvalidValue("money must be a number", hint="pass Decimal('0.0021')") from None
    if not amount.is_finite():
        raise InvalidValue("money must be finite", hint="pass Decimal('0.0021')")
    scaled = amount.scaleb(9)
    if scaled != scaled.to_integral_value():
        raise InvalidValue(
            "money has more precision than 1e-9",
            hint="round the amount to at most 9 decimal places",
        )
    nanos = int(scaled)
    if not -(2**63) <= nanos < 2**63:
        raise InvalidValue(
            "money is out of range",
            hint="amounts must stay within about 9.2 billion (64-bit nano-units)",
        )
    return nanos


def from_nanos(value: int) -> Decimal:
    """Return the exact ``Decimal`` for integer nano-units, without trailing zeros."""
    amount = Decimal(value).scaleb(-9)
    return amount.quantize(_ONE) if amount == amount.to_integral_value() else amount.normalize()


class Money(TypeDecorator[Decimal]):
    """An exact amount stored as integer nano-units; ``Decimal`` in the API."""

    impl = BigInteger
    cache_ok = True

    def process_bind_param(self, value: object, dialect: Dialect) -> int | None:
        return None if value is None else to_nanos(value)

    def process_result_value(self, value: Any, dialect: Dialect) -> Decimal | None:
        return None if value is None else from_nanos(value)


class _JSONText(JSON):
    """The JSON type as SQLite declares it for demiarch-store: ``TEXT`` (see ``json_document``)."""


@compiles(_JSONText, "sqlite")
def _render_json_text(type_: _JSONText, compiler: TypeCompiler, **kw: Any) -> str:
    return "TEXT"


def json_document() -> JSON:
    """Return the type of a JSON column: ``JSON``, whose SQL ``NULL`` is Python ``None``.

    On SQLite the column is declared ``TEXT``. Declared ``JSON`` it would have NUMERIC affinity,
    and SQLite would convert the JSON text of a top-level number into a number: ``1.0`` would be
    stored (and read back) as the integer 1, ``1e5`` as 100000, an integer beyond 64 bits as an
    inexact float. With TEXT affinity the text is stored as written and every value reads back
    exactly. Other databases get their own ``JSON`` type (``json`` on PostgreSQL).
    """
    return JSON(none_as_null=True).with_variant(_JSONText(none_as_null=True), "sqlite")


metadata = MetaData(
    naming_convention={
        "ix": "ix_%(table_name)s_%(column_0_N_name)s",
        "uq": "uq_%(table_name)s_%(column_0_N_name)s",
        "ck": "ck_%(table_name)s_%(constraint_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
    }
)

_ID = String(32)

projects = Table(
    "projects",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("name", String(200), nullable=False),
    Column("description", Text, nullable=True),
    Column("config", json_document(), nullable=True),
    Column("created_at", Timestamp, nullable=False),
    Column("updated_at", Timestamp, nullable=False),
)
"""This project's own metadata: one row, the project itself."""

conversations = Table(
    "conversations",
    metadata,
    Column("id", _ID, primary_key=True),
    Column("title", Text, nullable=True),
    Column("meta", json_document(), nullable=True),
    Column("created_at", Timestamp, nullable=False),
    Column("updated_at", Timestamp, nullable=False),
)

messages = Table(
    "messages",
    metadata,
    Column("id", _ID, primary_key=True),
    Column(
        "conversation_id",
        _ID,
        ForeignKey("conversations.id", ondelete="CASCADE"),
        nullable=False,
    ),
    Column("role", String(32), nullable=False),
    Column("content", Text, nullable=False),
    Column("meta", json_document(), nullable=True),
    Column("created_at", Timestamp, nullable=False),
    Index(None, "conversation_id", "id"),
)

agents = Table(
    "agents",
    metadata,
    Column("id", _ID, primary_key=True),
    Column("name", String(200), nullable=False),
    Column("role", String(100), nullable=True),
    Column("status", String(32), nullable=False),
    Column("config", json_document(), nullable=True),
    Column("state", json_document(), nullable=True),
    Column("created_at", Timestamp, nullable=False),
    Column("updated_at", Timestamp, nullable=False),
    Index(None, "status", "id"),
)
"""Agents: configuration and the state they resume from; listed by status."""

skills = Table(
    "skills",
    metadata,
    Column("id", _ID, primary_key=True),
    Column("name", String(200), nullable=False, unique=True),
    Column("description", Text, nullable=True),
    Column("definition", json_document(), nullable=True),
    Column("agent_id", _ID, ForeignKey("agents.id", ondelete="SET NULL"), nullable=True),
    Column("uses", Integer, nullable=False),
    Column("successes", Integer, nullable=False),
    Column("failures", Integer, nullable=False),
    Column("last_used_at", Timestamp, nullable=True),
    Column("created_at", Timestamp, nullable=False),
    Column("updated_at", Timestamp, nullable=False),
    Index(None, "agent_id"),
)
"""Learned skills: a unique name, a free-form definition and a success record."""

skill_tags = Table(
    "skill_tags",
    metadata,
    Column("skill_id", _ID, ForeignKey("skills.id", ondelete="CASCADE"), nullable=False),
    Column("tag", String(100), nullable=False),
    PrimaryKeyConstraint("skill_id", "tag"),
    Index(None, "tag", "skill_id"),
)
"""The tags of skills, one row each, so finding by tag is an indexed lookup on any database."""

code_generation = Table(
    "code_generation",
    metadata,
    Column("id", _ID, primary_key=True),
    Column("path", String(1000), nullable=False),
    Column("version", Integer, nullable=False),
    Column("language", String(64), nullable=True),
    Column("content", Text, nullable=False),
    Column("content_hash", String(64), nullable=False),
    Column("agent_id", _ID, ForeignKey("agents.id", ondelete="SET NULL"), nullable=True),
    Column(
        "conversation_id",
        _ID,
        ForeignKey("conversations.id", ondelete="SET NULL"),
        nullable=True,
    ),
    Column("meta", json_document(), nullable=True),
    Column("created_at", Timestamp, nullable=False),
    UniqueConstraint("path", "version"),
    # Deleting an agent or a conversation sets these to NULL: indexed, that is no table scan.
    Index(None, "agent_id"),
    Index(None, "conversation_id"),
)
"""Generated artifacts: every store of a path is a new version (1, 2, ...)."""

llm_calls = Table(
    "llm_calls",
    metadata,
    Column("id", _ID, primary_key=True),
    Column("provider", String(64), nullable=True),
    Column("model", String(200), nullable=False),
    Column("input_tokens", Integer, nullable=False),
    Column("output_tokens", Integer, nullable=False),
    Column("cost_usd", Money, nullable=False),
    Column("latency_ms", Integer, nullable=True),
    Column("status", String(32), nullable=False),
    Column("error", Text, nullable=True),
    Column("agent_id", _ID, ForeignKey("agents.id", ondelete="SET NULL"), nullable=True),
    Column(
        "conversation_id",
        _ID,
        ForeignKey("conversations.id", ondelete="SET NULL"),
        nullable=True,
    ),
    Column("created_at", Timestamp, nullable=False),
    Index(None, "created_at"),
    Index(None, "model"),
    Index(None, "agent_id"),
    Index(None, "conversation_id"),
)
"""One row per LLM API call, for cost tracking. Deleting an agent or conversation keeps the cost."""

checkpoints = Table(
    "checkpoints",
    metadata,
    Column("id", _ID, primary_key=True),
    Column("run_id", String(200), nullable=False),
    Column("parent_id", _ID, ForeignKey("checkpoints.id", ondelete="SET NULL"), nullable=True),
    Column("state", LargeBinary, nullable=False),
    Column("state_hash", String(64), nullable=False),
    Column("meta", json_document(), nullable=True),
    Column("created_at", Timestamp, nullable=False),
    Index(None, "run_id", "id"),
    Index(None, "parent_id"),
)
"""Recovery checkpoints: a state blob per step of a run, linked to its parent."""

plugins = Table(
    "plugins",
    metadata,
    Column("id", _ID, primary_key=True),
    Column("name", String(200), nullable=False, unique=True),
    Column("version", String(64), nullable=True),
    Column("enabled", Boolean(create_constraint=False), nullable=False),
    Column("config", json_document(), nullable=True),
    Column("state", json_document(), nullable=True),
    Column("installed_at", Timestamp, nullable=False),
    Column("updated_at", Timestamp, nullable=False),
)
"""Installed plugins: a unique name, on or off, with JSON config and state."""

sessions = Table(
    "sessions",
    metadata,
    Column("id", _ID, primary_key=True),
    Column("user_id", String(200), nullable=True),
    Column("agent_id", _ID, ForeignKey("agents.id", ondelete="SET NULL"), nullable=True),
    Column("meta", json_document(), nullable=True),
    Column("started_at", Timestamp, nullable=False),
    Column("last_active_at", Timestamp, nullable=False),
    Column("ended_at", Timestamp, nullable=True),
    Index(None, "ended_at", "id"),
    Index(None, "agent_id"),
)
"""User sessions: started, touched while active, ended."""


# -- LangGraph: checkpoints, their writes and channel values; long-term memory (0004) ---------

lg_checkpoints = Table(
    "lg_checkpoints",
    metadata,
    Column("thread_id", Text, nullable=False),
    Column("checkpoint_ns", Text, nullable=False),
    Column("checkpoint_id", Text, nullable=False),
    Column("parent_checkpoint_id", Text, nullable=True),
    Column("run_id", Text, nullable=True),
    Column("step", Integer, nullable=True),
    Column("checkpoint_type", String(32), nullable=False),
    Column("checkpoint", LargeBinary, nullable=False),
    Column("metadata", json_document(), nullable=True),
    Column("channel_versions", json_document(), nullable=True),
    Column("created_at", Timestamp, nullable=False),
    PrimaryKeyConstraint("thread_id", "checkpoint_ns", "checkpoint_id"),
    Index(None, "run_id"),
)
"""LangGraph checkpoints (``DemiarchSaver``): the serialized checkpoint without its channel
values, which live in ``lg_blobs``; ``run_id`` and ``step`` are copied out of the metadata."""

lg_blobs = Table(
    "lg_blobs",
    metadata,
    Column("thread_id", Text, nullable=False),
    Column("checkpoint_ns", Text, nullable=False),
    Column("channel", Text, nullable=False),
    Column("version", Text, nullable=False),
    Column("value_type", String(32), nullable=False),
    Column("value", LargeBinary, nullable=True),
    PrimaryKeyConstraint("thread_id", "checkpoint_ns", "channel", "version"),
)
"""LangGraph channel values, one per channel version: a value that did not change between
checkpoints is stored once."""

lg_writes = Table(
    "lg_writes",
    metadata,
    Column("thread_id", Text, nullable=False),
    Column("checkpoint_ns", Text, nullable=False),
    Column("checkpoint_id", Text, nullable=False),
    Column("task_id", Text, nullable=False),
    Column("idx", Integer, nullable=False),
    Column("channel", Text, nullable=False),
    Column("task_path", Text, nullable=False),
    Column("value_type", String(32), nullable=False),
    Column("value", LargeBinary, nullable=True),
    PrimaryKeyConstraint("thread_id", "checkpoint_ns", "checkpoint_id", "task_id", "idx"),
)
"""LangGraph pending writes: what the tasks of a step wrote, linked to the checkpoint before it."""

memory_items = Table(
    "memory_items",
    metadata,
    Column("namespace", Text, nullable=False),
    Column("key", Text, nullable=False),
    Column("value", json_document(), nullable=False),
    Column("created_at", Timestamp, nullable=False),
    Column("updated_at", Timestamp, nullable=False),
    Column("expires_at", Timestamp, nullable=True),
    Column("ttl_minutes", Float, nullable=True),
    PrimaryKeyConstraint("namespace", "key"),
    Index(None, "expires_at"),
)
"""Long-term memory (``DemiarchStore``): JSON documents by namespace (labels joined with
``.``) and key, with an optional time to live."""

memory_vectors = Table(
    "memory_vectors",
    metadata,
    Column("namespace", Text, nullable=False),
    Column("key", Text, nullable=False),
    Column("field", Text, nullable=False),
    Column("embedding", LargeBinary, nullable=False),
    PrimaryKeyConstraint("namespace", "key", "field"),
    ForeignKeyConstraint(
        ["namespace", "key"], ["memory_items.namespace", "memory_items.key"], ondelete="CASCADE"
    ),
)
"""Embeddings of memory items (float32, little-endian), one per indexed field."""

# -- Agent frameworks' sessions: OpenAI Agents SDK, Google ADK (0005) ------------------------

agent_sessions = Table(
    "agent_sessions",
    metadata,
    Column("id", _ID, primary_key=True),
    Column("framework", String(32), nullable=False),
    Column("app_name", String(200), nullable=False),
    Column("user_id", String(200), nullable=False),
    Column("session_id", String(512), nullable=False),
    Column(
        "conversation_id",
        _ID,
        ForeignKey("conversations.id", ondelete="CASCADE"),
        nullable=False,
        unique=True,
    ),
    Column("state", json_document(), nullable=True),
    Column("created_at", Timestamp, nullable=False),
    Column("updated_at", Timestamp, nullable=False),
    UniqueConstraint("framework", "app_name", "user_id", "session_id"),
)
"""Agent frameworks' sessions (OpenAI Agents SDK, Google ADK): each is one conversation, whose
messages are the session's items or events. Deleting the conversation deletes the session."""

agent_states = Table(
    "agent_states",
    metadata,
    Column("id", _ID, primary_key=True),
    Column("framework", String(32), nullable=False),
    Column("scope", String(16), nullable=False),
    Column("app_name", String(200), nullable=False),
    Column("user_id", String(200), nullable=False),
    Column("state", json_document(), nullable=False),
    Column("updated_at", Timestamp, nullable=False),
    UniqueConstraint("framework", "scope", "app_name", "user_id"),
)
"""State an agent framework shares between sessions: an app's (``scope="app"``, ``user_id=""``)
or one user's in an app (``scope="user"``), as ADK's ``app:`` and ``user:`` state keys."""


_STATEMENT = re.compile(
    r'\s*(INSERT(?:\s+OR\s+\w+)?\s+INTO|UPDATE|DELETE\s+FROM)\s+"?(\w+)"?', re.I
)


def explain_foreign_key(sql: str, params: Any) -> tuple[str, str] | None:
    """Say what a failed foreign key in ``sql`` was about, and what to do: or None.

    SQLite itself says only "FOREIGN KEY constraint failed". The statement's table names the
    kind of record, and which parameters were given (their names or places, never their
    values) which references it made. The writer stores the answer on the exception
    (``foreign_key``), where ``errors.translate`` finds it.
    """
    match = _STATEMENT.match(sql)
    table = metadata.tables.get(match[2]) if match else None
    if match is None or table is None:
        return None
    if match[1].upper().startswith("DELETE"):
        children = sorted(
            {
                _noun(t.name)
                for t in metadata.sorted_tables
                for fk in t.foreign_keys
                if fk.column.table is table
            }
        )
        if not children:
            return None
        kinds = " or ".join(children)
        return (
            f"a {kinds} still refers to this {_noun(table.name)}",
            f"delete or detach the {kinds} records that refer to it first",
        )
    given: set[str] | None = None
    if isinstance(params, dict):
        given = {k for k, v in params.items() if v is not None}
    elif isinstance(params, tuple):  # positional: their places in the INSERT's column list
        columns = re.search(r"\(([^)]*)\)\s*VALUES", sql, re.I)
        names = [c.strip().strip('"') for c in columns[1].split(",")] if columns else []
        if names:
            given = {n for n, v in zip(names, params, strict=False) if v is not None}
    parents = sorted(
        {
            _noun(fk.column.table.name)
            for fk in table.foreign_keys
            if given is None or fk.parent.name in given
        }
    )
    if not parents:
        return None
    kinds = " or ".join(parents)
    return (
        f"the {kinds} this {_noun(table.name)} refers to does not exist",
        f"a referenced record does not exist: create the {kinds} first, or check the ID "
        "(it may be mistyped or deleted)",
    )
