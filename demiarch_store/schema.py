"""The schema: SQLAlchemy Core tables in one ``MetaData``, and the column types they use.

Nothing here is SQLite-only, so the same tables and Alembic revisions can run on PostgreSQL.
Timestamps are stored as integer microseconds since the Unix epoch (UTC) and money as integer
nano-units (1e-9) of the currency: both exact, sortable and summable in SQL.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal, InvalidOperation
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Column,
    Dialect,
    ForeignKey,
    Index,
    MetaData,
    String,
    Table,
    Text,
)
from sqlalchemy.types import TypeDecorator

from .errors import InvalidValue

__all__ = [
    "HEAD_REVISION",
    "Money",
    "Timestamp",
    "conversations",
    "from_nanos",
    "messages",
    "metadata",
    "projects",
    "to_micros",
    "to_nanos",
    "utcnow",
]

HEAD_REVISION = "0001"
"""The Alembic revision the tables below describe (a test checks it is Alembic's head)."""

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
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
    return (value - _EPOCH) // _MICRO


class Timestamp(TypeDecorator[datetime]):
    """A timezone-aware UTC datetime stored as integer microseconds since the epoch."""

    impl = BigInteger
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> int | None:
        return None if value is None else to_micros(value)

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        return None if value is None else _EPOCH + timedelta(microseconds=value)


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
    Column("config", JSON(none_as_null=True), nullable=True),
    Column("created_at", Timestamp, nullable=False),
    Column("updated_at", Timestamp, nullable=False),
)
"""This project's own metadata: one row, the project itself."""

conversations = Table(
    "conversations",
    metadata,
    Column("id", _ID, primary_key=True),
    Column("title", Text, nullable=True),
    Column("meta", JSON(none_as_null=True), nullable=True),
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
    Column("meta", JSON(none_as_null=True), nullable=True),
    Column("created_at", Timestamp, nullable=False),
    Index(None, "conversation_id", "id"),
)
