"""Repositories: one generic base with the shared CRUD, and short declarations per table.

A repository hangs off a unit of work (``tx.messages``) or a read snapshot (``r.messages``).
Writes are *deferred*: they return their record at once (IDs and timestamps are made here) and
reach the database at commit, or before the unit's first read. Reads run at once.
"""

from __future__ import annotations

import builtins
import functools
import hashlib
import json
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from functools import cached_property
from itertools import repeat
from operator import attrgetter, is_
from typing import Any, ClassVar, Generic, Literal, TypeVar

from sqlalchemy import (
    BigInteger,
    Table,
    bindparam,
    func,
    insert,
    literal_column,
    select,
    tuple_,
    type_coerce,
    update,
)
from sqlalchemy.dialects import sqlite
from sqlalchemy.sql import ClauseElement, ColumnElement
from sqlalchemy.types import TypeDecorator

from . import schema
from .engine import Op, Runner
from .errors import InvalidValue
from .ids import new_record_id, new_record_ids
from .records import (
    Agent,
    AgentSession,
    AgentState,
    CheckpointRecord,
    CodeArtifact,
    Conversation,
    CostTotal,
    GraphBlob,
    GraphCheckpoint,
    GraphThread,
    GraphWrite,
    LLMCall,
    MemoryItem,
    MemoryVector,
    Message,
    Plugin,
    ProjectRecord,
    SessionRecord,
    Skill,
)
from .schema import from_nanos, to_micros, to_nanos, utcnow

__all__ = [
    "AgentRepository",
    "AgentSessionRepository",
    "AgentStateRepository",
    "CheckpointRepository",
    "CodeGenerationRepository",
    "ConversationRepository",
    "GraphBlobRepository",
    "GraphCheckpointRepository",
    "GraphWriteRepository",
    "LLMCallRepository",
    "MemoryItemRepository",
    "MemoryVectorRepository",
    "MessageRepository",
    "PluginRepository",
    "ProjectRepository",
    "Repositories",
    "Repository",
    "SessionRepository",
    "SkillRepository",
]

R = TypeVar("R")

_DIALECT = sqlite.dialect(
    paramstyle="named",
    # Standard JSON only: NaN and Infinity are not JSON (PostgreSQL's json and SQLite's own
    # json() refuse them), so a value holding one is an InvalidValue, not a file others reject.
    json_serializer=functools.partial(json.dumps, allow_nan=False),
)
_POSITIONAL = sqlite.dialect(paramstyle="qmark")


def compile_sql(stmt: ClauseElement, *, positional: bool = False) -> str:
    """Compile a Core statement once into SQL with named parameters (or ``?`` placeholders).

    Parameters the statement fixes itself (such as SQLite's ``OFFSET 0`` after a ``LIMIT``) are
    rendered inline, so a caller supplies exactly the ``bindparam`` names it declared.
    """
    compiled = stmt.compile(dialect=_POSITIONAL if positional else _DIALECT)
    if positional:
        return str(compiled)
    text = str(compiled)
    for name, value in compiled.params.items():
        if value is not None and isinstance(value, int) and not isinstance(value, bool):
            text = text.replace(f":{name}", str(int(value)))
    return text


class Codec:
    """Converts a table's rows between Python values and what is stored, without SQLAlchemy."""

    def __init__(self, table: Table) -> None:
        columns = list(table.columns)
        self.names = [c.name for c in columns]
        self.binders: list[tuple[str, Callable[[Any], Any]]] = []
        self.loaders: list[Callable[[Any], Any] | None] = []
        for c in columns:
            bind: Callable[[Any], Any] | None = c.type.bind_processor(_DIALECT)
            # JSON columns need nothing more: declared TEXT on SQLite (``schema.json_document``),
            # they hold the JSON text as written and always read back as text.
            load: Callable[[Any], Any] | None = c.type.result_processor(_DIALECT, None)
            if bind is not None:
                self.binders.append((c.name, bind))
            self.loaders.append(load)
        self.row_loaders = [
            (i, _direct(c.type, p))
            for i, (c, p) in enumerate(zip(columns, self.loaders, strict=True))
            if p is not None
        ]
        self.timestamps = [isinstance(c.type, schema.Timestamp) for c in columns]
        self.getter = attrgetter(*self.names)
        names = self.names
        self.row_binders = [(names.index(name), proc) for name, proc in self.binders]

    def bind(self, values: Mapping[str, Any]) -> dict[str, Any]:
        out = dict(values)
        for name, proc in self.binders:
            if name in out:
                try:
                    out[name] = proc(out[name])
                except (TypeError, ValueError) as exc:
                    raise _unstorable(name, exc) from exc
        return out

    def bind_record(self, record: Any) -> tuple[Any, ...]:
        """Return a whole record's stored values, in column order (for positional SQL)."""
        row = self.getter(record)
        if not self.row_binders:
            return tuple(row)
        out = list(row)
        for i, proc in self.row_binders:
            try:
                out[i] = proc(out[i])
            except (TypeError, ValueError) as exc:
                raise _unstorable(self.names[i], exc) from exc
        return tuple(out)

    def bind_records(self, records: Sequence[Any]) -> list[tuple[Any, ...]]:
        """Return many records' stored values, in column order, converting column by column.

        A column holding the same object in every record (the batch's timestamp, no metadata)
        is converted once.
        """
        rows = list(map(self.getter, records))
        if not self.row_binders or not rows:
            return rows
        columns: list[Iterable[Any]] = list(zip(*rows, strict=True))
        n = len(rows)
        for i, proc in self.row_binders:
            column = columns[i]
            first = next(iter(column))
            try:
                if all(map(is_, column, repeat(first))):
                    columns[i] = repeat(proc(first), n)
                else:
                    columns[i] = list(map(proc, column))
            except (TypeError, ValueError) as exc:
                raise _unstorable(self.names[i], exc) from exc
        return list(zip(*columns, strict=True))


def _unstorable(name: str, exc: Exception) -> InvalidValue:
    if isinstance(exc, InvalidValue):
        return exc
    # The driver's text names the type, never the value (it may be a secret).
    return InvalidValue(
        f"{name} cannot be stored: {type(exc).__name__}",
        hint="pass JSON-compatible values: dict, list, str, int, bool, None",
    )


def _constructor(cls: type[Any]) -> Callable[..., Any]:
    """Return a positional constructor for a frozen, slotted record dataclass.

    A frozen dataclass's ``__init__`` goes through ``object.__setattr__`` for every field; this
    one sets the slots directly (like the ``__init__`` dataclasses generate, it is generated
    code), about twice as fast. Records are built for every row read or written. A record class
    with a ``__post_init__`` or without slots keeps its own constructor.
    """
    fields = list(getattr(cls, "__dataclass_fields__", {}))
    slots = set(getattr(cls, "__slots__", ()))
    if not fields or hasattr(cls, "__post_init__") or not set(fields) <= slots:
        return cls
    args = ", ".join(f"v{i}" for i in range(len(fields)))
    body = "".join(f"    s{i}(o, v{i})\n" for i in range(len(fields)))
    source = f"def make({args}):\n    o = new(cls)\n{body}    return o\n"
    namespace: dict[str, Any] = {"new": object.__new__, "cls": cls}
    for i, name in enumerate(fields):
        namespace[f"s{i}"] = cls.__dict__[name].__set__
    exec(source, namespace)  # noqa: S102 - generated from the field names only
    return namespace["make"]  # type: ignore[no-any-return]


def _row_loader(cls: type[Any], codec: Codec, make: Callable[..., Any]) -> Callable[[Any], Any]:
    """Return ``row -> record`` in one generated function: unpack, convert, construct.

    The columns' converters (``Codec.row_loaders``) and the record's constructor, with no
    intermediate list or calls (it runs for every row read). A timestamp column converts
    inline; other columns call their loader when the value is not NULL.
    """
    n = len(codec.names)
    loaders = dict(codec.row_loaders)
    fields = list(getattr(cls, "__dataclass_fields__", {}))
    slots = set(getattr(cls, "__slots__", ()))
    direct = bool(fields) and not hasattr(cls, "__post_init__") and set(fields) <= slots
    namespace: dict[str, Any] = {
        "make": make,
        "new": object.__new__,
        "cls": cls,
        "EPOCH": schema.EPOCH,
        "td": timedelta,
    }
    values = []
    for i in range(n):
        proc = loaders.get(i)
        if proc is None:
            values.append(f"v{i}")
        elif codec.timestamps[i]:
            values.append(f"(None if v{i} is None else EPOCH + td(0, 0, v{i}))")
        else:
            namespace[f"p{i}"] = proc
            values.append(f"(None if v{i} is None else p{i}(v{i}))")
    unpack = ", ".join(f"v{i}" for i in range(n)) + ("," if n == 1 else "")
    if direct:
        for i, name in enumerate(fields):
            namespace[f"s{i}"] = cls.__dict__[name].__set__
        body = "    o = new(cls)\n" + "".join(
            f"    s{i}(o, {value})\n" for i, value in enumerate(values)
        )
        body += "    return o\n"
    else:
        body = f"    return make({', '.join(values)})\n"
    source = f"def row(r):\n    {unpack} = r\n{body}"
    exec(source, namespace)  # noqa: S102 - generated from the column positions only
    return namespace["row"]  # type: ignore[no-any-return]


def _direct(type_: Any, proc: Callable[[Any], Any]) -> Callable[[Any], Any]:
    """Skip SQLAlchemy's TypeDecorator wrapper when the underlying type converts nothing."""
    if (
        isinstance(type_, TypeDecorator)
        and type_.impl_instance.result_processor(_DIALECT, None) is None
    ):
        return functools.partial(type_.process_result_value, dialect=_DIALECT)
    return proc


_UNLOADABLE = (ValueError, TypeError, ArithmeticError)
"""What a column's converter raises on a stored value it cannot read (JSON that does not
parse, a timestamp or amount that is not a number): only a damaged file holds one."""


class Repository(Generic[R]):
    """Shared CRUD for a table whose primary key is ``id`` and whose IDs sort by creation."""

    table: ClassVar[Table]
    record_type: ClassVar[type[Any]]
    noun: ClassVar[str]
    _codec: ClassVar[Codec]
    _make: ClassVar[Callable[..., Any]]
    """Build a record from its values in field order (see ``_constructor``)."""
    _load: ClassVar[Callable[..., Any]]
    """Build a record from a stored row (see ``_row_loader``)."""
    _sql: ClassVar[dict[str, str]]

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "table" in cls.__dict__:
            cls._codec = Codec(cls.table)
            cls._sql = {}
            fields = getattr(cls.record_type, "__dataclass_fields__", {})
            cls._make = staticmethod(_constructor(cls.record_type))
            cls._load = staticmethod(_row_loader(cls.record_type, cls._codec, cls._make))
            if list(fields) != cls._codec.names:
                raise TypeError(
                    f"{cls.record_type.__name__} fields must match {cls.table.name} columns"
                )

    def __init__(self, session: Runner) -> None:
        self._s = session

    @classmethod
    def sql(cls, name: str, build: Callable[[], ClauseElement], *, positional: bool = False) -> str:
        """Return the cached SQL for ``name``, compiling ``build()`` the first time."""
        try:
            return cls._sql[name]
        except KeyError:
            text = cls._sql[name] = compile_sql(build(), positional=positional)
            return text

    def _insert_sql(self) -> str:
        """Return the INSERT of a whole row with ``?`` placeholders (see ``Codec.bind_record``)."""
        try:
            return self._sql["insert_row"]
        except KeyError:
            return self.sql("insert_row", lambda: insert(self.table), positional=True)

    def _row(self, row: tuple[Any, ...]) -> R:
        try:
            return self._load(row)  # type: ignore[no-any-return]
        except _UNLOADABLE as exc:
            raise self._s.damaged(self.noun, exc) from None

    async def _rows(self, sql: str, params: Mapping[str, Any]) -> list[R]:
        rows = await self._s.fetch(sql, params)
        try:
            return list(map(self._load, rows))
        except _UNLOADABLE as exc:
            raise self._s.damaged(self.noun, exc) from None

    async def get(self, id: str) -> R:
        """Return the record with this ID, or raise ``NotFound``."""
        sql = self._sql.get("get")
        if sql is None:
            t = self.table
            sql = self.sql("get", lambda: select(t).where(t.c.id == bindparam("id")))
            # The same columns for several IDs at once (a reader may merge queued gets): the
            # table's first column is its id, so each row says which get it answers.
            assert t.columns[0] is t.c.id
            self._sql["get_in"] = f"{compile_sql(select(t))} WHERE {t.name}.id IN "
        rows = await self._s.fetch_by_id(sql, id, self._sql["get_in"])
        if not rows:
            raise self._s.not_found(f"no {self.noun} with id {id!r}")
        return self._row(rows[0])

    async def list(self, *, limit: int | None = None, after: str | None = None) -> list[R]:
        """Return records in creation order; ``after`` (an ID) and ``limit`` page through them."""
        t = self.table
        sql = self.sql(
            "list",
            lambda: (
                select(t)
                .where(t.c.id > bindparam("after"))
                .order_by(t.c.id)
                .limit(bindparam("limit"))
            ),
        )
        return await self._rows(sql, {"after": after or "", "limit": _limit(limit)})

    async def count(self) -> int:
        """Return the number of records."""
        t = self.table
        sql = self.sql("count", lambda: select(func.count()).select_from(t))
        return int((await self._s.fetch(sql, {}))[0][0])

    async def delete(self, id: str) -> None:
        """Delete the record with this ID at commit (``NotFound`` if it does not exist)."""
        t = self.table
        sql = self.sql("delete", lambda: t.delete().where(t.c.id == bindparam("id")))
        self._s.defer(Op(sql, {"id": id}, missing=f"no {self.noun} with id {id!r}"))

    def _insert(self, values: dict[str, Any]) -> R:
        """Queue an INSERT of a full row and return its record."""
        record = self.record_type(**values)
        self._s.defer(Op(self._insert_sql(), self._codec.bind_record(record)))
        return record  # type: ignore[no-any-return]

    def _update(self, id: str, values: dict[str, Any]) -> None:
        """Queue an UPDATE of some columns of one record (``NotFound`` at commit if missing)."""
        t = self.table
        key = "update:" + ",".join(sorted(values))
        sql = self.sql(
            key,
            lambda: (
                update(t)
                .where(t.c.id == bindparam("_id"))
                .values({k: bindparam(k) for k in values})
            ),
        )
        params = self._codec.bind(values)
        params["_id"] = id
        self._s.defer(Op(sql, params, missing=f"no {self.noun} with id {id!r}"))


def _limit(limit: int | None) -> int:
    if limit is None:
        return -1
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 0:
        raise InvalidValue("limit must be a non-negative integer", hint=f"got {limit!r}")
    return limit


def _text(value: object, name: str, *, max_len: int | None = None, empty: bool = True) -> str:
    if not isinstance(value, str):
        raise InvalidValue(f"{name} must be a string, not {type(value).__name__}")
    if not empty and not value:
        raise InvalidValue(f"{name} must not be empty")
    if max_len is not None and len(value) > max_len:
        raise InvalidValue(f"{name} is longer than {max_len} characters")
    if not value.isascii():
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise InvalidValue(
                f"{name} is not valid Unicode text", hint="remove lone surrogates"
            ) from None
    return value


class ProjectRepository(Repository[ProjectRecord]):
    """This project's own metadata row."""

    table = schema.projects
    record_type = ProjectRecord
    noun = "project"

    async def create(self, *, id: str, name: str, description: str | None = None) -> ProjectRecord:
        """Write the project's metadata row."""
        now = utcnow()
        values = {
            "id": id,
            "name": _text(name, "name", max_len=200),
            "description": description,
            "config": None,
            "created_at": now,
            "updated_at": now,
        }
        return self._insert(values)

    async def update(
        self,
        id: str,
        *,
        name: str | None = None,
        config: Any = None,
        description: str | None = None,
    ) -> None:
        """Change the project's name, description or config."""
        values: dict[str, Any] = {"updated_at": utcnow()}
        if name is not None:
            values["name"] = _text(name, "name", max_len=200, empty=False)
        if description is not None:
            values["description"] = description
        if config is not None:
            values["config"] = config
        self._update(id, values)


class ConversationRepository(Repository[Conversation]):
    """Conversations; their messages live in ``messages``."""

    table = schema.conversations
    record_type = Conversation
    noun = "conversation"

    async def create(self, *, title: str | None = None, meta: Any = None) -> Conversation:
        """Start a conversation."""
        if title is not None:
            _text(title, "title")
        now = utcnow()
        values = {
            "id": new_record_id(),
            "title": title,
            "meta": meta,
            "created_at": now,
            "updated_at": now,
        }
        return self._insert(values)

    async def update(self, id: str, *, title: str | None = None, meta: Any = None) -> None:
        """Change a conversation's title or metadata."""
        values: dict[str, Any] = {"updated_at": utcnow()}
        if title is not None:
            values["title"] = _text(title, "title")
        if meta is not None:
            values["meta"] = meta
        self._update(id, values)


class MessageRepository(Repository[Message]):
    """Messages of conversations, in the order they were appended."""

    table = schema.messages
    record_type = Message
    noun = "message"
    _meta_binder = staticmethod(dict(Codec(schema.messages).binders)["meta"])
    if [c.name for c in schema.messages.columns] != [
        "id", "conversation_id", "role", "content", "meta", "created_at"
    ]:  # fmt: skip
        raise TypeError("append_many builds its rows in the old column order of messages")

    @classmethod
    def _stored_meta(cls, meta: Any) -> Any:
        """Return the stored JSON text of a message's (non-None) meta, or raise InvalidValue."""
        try:
            return cls._meta_binder(meta)
        except (TypeError, ValueError) as exc:
            raise _unstorable("meta", exc) from exc

    async def append(
        self, conversation_id: str, *, role: str, content: str, meta: Any = None
    ) -> Message:
        """Append a message to a conversation."""
        conv = _text(conversation_id, "conversation_id", empty=False)
        now = utcnow()
        record = _message(conv, role, content, meta, now)
        # The stored row built directly, as append_many does (Codec.bind_record is the slow,
        # general way): every column but meta and created_at is stored as it is.
        stored = None if meta is None else self._stored_meta(meta)
        row = (record.id, conv, record.role, record.content, stored, to_micros(now))
        self._s.defer(Op(self._insert_sql(), row))
        return record

    async def append_many(
        self, conversation_id: str, items: Iterable[Mapping[str, Any]]
    ) -> list[Message]:
        """Append many messages (mappings with ``role``, ``content`` and optional ``meta``).

        They share one ``created_at``; their IDs keep the order of ``items``.
        """
        conv = _text(conversation_id, "conversation_id", empty=False)
        items = items if isinstance(items, list | tuple) else list(items)
        now = utcnow()
        # The hot path of bulk inserts: records and their stored rows are built in one pass
        # (columns in table order; Codec.bind_record does the same for one record).
        stamp = to_micros(now)
        stored_meta, make = self._stored_meta, self._make
        records: list[Message] = []
        rows: list[tuple[Any, ...]] = []
        for record_id, item in zip(new_record_ids(len(items)), items, strict=True):
            if type(item) is not dict and not isinstance(item, Mapping):
                raise InvalidValue("each message needs a 'role' and a 'content'")
            try:
                role, content = item["role"], item["content"]
            except KeyError:
                raise InvalidValue("each message needs a 'role' and a 'content'") from None
            if type(role) is not str or not 0 < len(role) <= 32:
                role = _text(role, "role", max_len=32, empty=False)
            if type(content) is not str:
                content = _text(content, "content")
            meta = item.get("meta")
            records.append(make(record_id, conv, role, content, meta, now))
            if meta is not None:
                meta = stored_meta(meta)
            rows.append((record_id, conv, role, content, meta, stamp))
        if rows:
            self._s.defer(Op(self._insert_sql(), rows, many=True))
        return records

    async def list(
        self,
        conversation_id: str | None = None,
        *,
        limit: int | None = None,
        after: str | None = None,
    ) -> list[Message]:
        """Return a conversation's messages in order (all messages if no conversation)."""
        if conversation_id is None:
            return await super().list(limit=limit, after=after)
        t = self.table
        sql = self.sql(
            "list_conv",
            lambda: (
                select(t)
                .where(t.c.conversation_id == bindparam("conv"), t.c.id > bindparam("after"))
                .order_by(t.c.id)
                .limit(bindparam("limit"))
            ),
        )
        params = {"conv": conversation_id, "after": after or "", "limit": _limit(limit)}
        return await self._rows(sql, params)

    async def last(self, conversation_id: str, n: int) -> builtins.list[Message]:
        """Return the last ``n`` messages of a conversation, oldest first."""
        t = self.table
        sql = self.sql(
            "last",
            lambda: (
                select(t)
                .where(t.c.conversation_id == bindparam("conv"))
                .order_by(t.c.id.desc())
                .limit(bindparam("limit"))
            ),
        )
        rows = await self._rows(sql, {"conv": conversation_id, "limit": _limit(n)})
        rows.reverse()
        return rows

    async def clear(self, conversation_id: str) -> None:
        """Delete, at commit, every message of a conversation (the conversation stays)."""
        t = self.table
        sql = self.sql("clear", lambda: t.delete().where(t.c.conversation_id == bindparam("conv")))
        self._s.defer(Op(sql, {"conv": _text(conversation_id, "conversation_id")}))

    async def count(self, conversation_id: str | None = None) -> int:
        """Return the number of messages of a conversation (of all, if none is given)."""
        if conversation_id is None:
            return await super().count()
        t = self.table
        sql = self.sql(
            "count_conv",
            lambda: (
                select(func.count()).select_from(t).where(t.c.conversation_id == bindparam("conv"))
            ),
        )
        return int((await self._s.fetch(sql, {"conv": conversation_id}))[0][0])

    async def search(
        self, text: str, *, conversation_id: str | None = None, limit: int | None = None
    ) -> builtins.list[Message]:
        """Return messages whose content contains ``text`` (ASCII case-insensitive), in order.

        ``%`` and ``_`` in ``text`` match themselves. This scans the messages it searches; it is
        meant for one conversation or a modest project, not as a full-text index.
        """
        pattern = "%" + _like_escape(_text(text, "text", empty=False)) + "%"
        t = self.table

        def like() -> ColumnElement[bool]:  # built once, with the SQL (see Repository.sql)
            # The database lowers both sides, so both are folded by the same rules.
            return func.lower(t.c.content).like(func.lower(bindparam("pattern")), escape="\\")

        if conversation_id is None:
            sql = self.sql(
                "search",
                lambda: select(t).where(like()).order_by(t.c.id).limit(bindparam("limit")),
            )
            params: dict[str, Any] = {"pattern": pattern, "limit": _limit(limit)}
        else:
            sql = self.sql(
                "search_conv",
                lambda: (
                    select(t)
                    .where(t.c.conversation_id == bindparam("conv"), like())
                    .order_by(t.c.id)
                    .limit(bindparam("limit"))
                ),
            )
            params = {"pattern": pattern, "conv": conversation_id, "limit": _limit(limit)}
        return await self._rows(sql, params)


def _like_escape(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def _message(conv: str, role: object, content: object, meta: Any, now: datetime) -> Message:
    if type(role) is not str or not 0 < len(role) <= 32:
        role = _text(role, "role", max_len=32, empty=False)
    if type(content) is not str:
        content = _text(content, "content")
    return _make_message(new_record_id(), conv, role, content, meta, now)  # type: ignore[no-any-return]


_make_message = _constructor(Message)


# -- the agent schema -------------------------------------------------------------------------


def _optional_text(value: object, name: str, *, max_len: int | None = None) -> str | None:
    return None if value is None else _text(value, name, max_len=max_len)


def _count(value: object, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise InvalidValue(f"{name} must be a non-negative integer, not {type(value).__name__}")
    return value


def _micros(value: datetime | None, default: int) -> int:
    return default if value is None else to_micros(value)


_MIN_MICROS = -(2**63)
_MAX_MICROS = 2**63 - 1


class AgentRepository(Repository[Agent]):
    """Agents: register them, track their status and the state they resume from."""

    table = schema.agents
    record_type = Agent
    noun = "agent"

    async def register(
        self,
        name: str,
        *,
        role: str | None = None,
        status: str = "idle",
        config: Any = None,
        state: Any = None,
    ) -> Agent:
        """Register an agent (status ``"idle"`` unless given)."""
        now = utcnow()
        values = {
            "id": new_record_id(),
            "name": _text(name, "name", max_len=200, empty=False),
            "role": _optional_text(role, "role", max_len=100),
            "status": _text(status, "status", max_len=32, empty=False),
            "config": config,
            "state": state,
            "created_at": now,
            "updated_at": now,
        }
        return self._insert(values)

    async def update_status(self, id: str, status: str) -> None:
        """Set an agent's status (``NotFound`` at commit if there is no such agent)."""
        status = _text(status, "status", max_len=32, empty=False)
        self._update(id, {"status": status, "updated_at": utcnow()})

    async def update_state(self, id: str, state: Any) -> None:
        """Replace an agent's state (any JSON value; ``None`` clears it)."""
        self._update(id, {"state": state, "updated_at": utcnow()})

    async def update_config(self, id: str, config: Any) -> None:
        """Replace an agent's config (any JSON value; ``None`` clears it)."""
        self._update(id, {"config": config, "updated_at": utcnow()})

    async def list_by_status(
        self, status: str, *, limit: int | None = None, after: str | None = None
    ) -> list[Agent]:
        """Return the agents with this status, in registration order."""
        t = self.table
        sql = self.sql(
            "by_status",
            lambda: (
                select(t)
                .where(t.c.status == bindparam("status"), t.c.id > bindparam("after"))
                .order_by(t.c.id)
                .limit(bindparam("limit"))
            ),
        )
        params = {"status": _text(status, "status"), "after": after or "", "limit": _limit(limit)}
        return await self._rows(sql, params)


class SkillRepository(Repository[Skill]):
    """Learned skills: unique names, tags, and a record of how often they worked."""

    table = schema.skills
    record_type = Skill
    noun = "skill"

    async def add(
        self,
        name: str,
        *,
        description: str | None = None,
        definition: Any = None,
        tags: Iterable[str] = (),
        agent_id: str | None = None,
    ) -> Skill:
        """Add a skill; a name already taken raises ``ConstraintViolation`` at commit."""
        now = utcnow()
        values = {
            "id": new_record_id(),
            "name": _text(name, "name", max_len=200, empty=False),
            "description": _optional_text(description, "description"),
            "definition": definition,
            "agent_id": agent_id,
            "uses": 0,
            "successes": 0,
            "failures": 0,
            "last_used_at": None,
            "created_at": now,
            "updated_at": now,
        }
        tag_list = _tags(tags)
        record = self._insert(values)
        self._add_tags(record.id, tag_list)
        return record

    async def update(
        self,
        id: str,
        *,
        name: str | None = None,
        description: str | None = None,
        definition: Any = None,
        tags: Iterable[str] | None = None,
    ) -> None:
        """Change a skill; ``tags`` (if given) replaces its tags. ``NotFound`` at commit."""
        values: dict[str, Any] = {"updated_at": utcnow()}
        if name is not None:
            values["name"] = _text(name, "name", max_len=200, empty=False)
        if description is not None:
            values["description"] = _text(description, "description")
        if definition is not None:
            values["definition"] = definition
        tag_list = None if tags is None else _tags(tags)
        self._update(id, values)
        if tag_list is not None:
            st = schema.skill_tags
            sql = self.sql(
                "clear_tags", lambda: st.delete().where(st.c.skill_id == bindparam("id"))
            )
            self._s.defer(Op(sql, {"id": id}))
            self._add_tags(id, tag_list)

    def _add_tags(self, id: str, tags: list[str]) -> None:
        if tags:
            sql = self.sql("insert_tag", lambda: insert(schema.skill_tags))
            self._s.defer(Op(sql, [{"skill_id": id, "tag": tag} for tag in tags], many=True))

    async def record_use(self, id: str, *, success: bool) -> None:
        """Count one use of a skill, successful or not (``NotFound`` at commit)."""
        if not isinstance(success, bool):
            raise InvalidValue(f"success must be True or False, not {type(success).__name__}")
        t = self.table
        sql = self.sql(
            "record_use",
            lambda: (
                update(t)
                .where(t.c.id == bindparam("id"))
                .values(
                    uses=t.c.uses + 1,
                    successes=t.c.successes + bindparam("ok"),
                    failures=t.c.failures + bindparam("failed"),
                    last_used_at=bindparam("now"),
                    updated_at=bindparam("now"),
                )
            ),
        )
        params = {"id": id, "ok": int(success), "failed": int(not success)}
        params["now"] = to_micros(utcnow())
        self._s.defer(Op(sql, params, missing=f"no skill with id {id!r}"))

    async def find_by_name(self, name: str) -> Skill:
        """Return the skill with this name, or raise ``NotFound``."""
        t = self.table
        sql = self.sql("by_name", lambda: select(t).where(t.c.name == bindparam("name")))
        rows = await self._rows(sql, {"name": _text(name, "name")})
        if not rows:
            raise self._s.not_found("no skill with this name")
        return rows[0]

    async def find_by_tag(self, tag: str) -> list[Skill]:
        """Return the skills carrying this tag, in the order they were added."""
        t, st = self.table, schema.skill_tags
        sql = self.sql(
            "by_tag",
            lambda: (
                select(t)
                .join(st, st.c.skill_id == t.c.id)
                .where(st.c.tag == bindparam("tag"))
                .order_by(t.c.id)
            ),
        )
        return await self._rows(sql, {"tag": _text(tag, "tag")})

    async def tags(self, id: str) -> list[str]:
        """Return a skill's tags, sorted (``NotFound`` if there is no such skill)."""
        t, st = self.table, schema.skill_tags
        sql = self.sql(
            "tags",
            lambda: (
                select(t.c.id, st.c.tag)
                .outerjoin(st, st.c.skill_id == t.c.id)
                .where(t.c.id == bindparam("id"))
                .order_by(st.c.tag)
            ),
        )
        rows = await self._s.fetch(sql, {"id": id})
        if not rows:
            raise self._s.not_found(f"no skill with id {id!r}")
        return [row[1] for row in rows if row[1] is not None]


def _tags(tags: Iterable[str]) -> list[str]:
    if isinstance(tags, str):
        raise InvalidValue("tags must be a list of strings, not one string")
    return sorted({_text(tag, "tag", max_len=100, empty=False) for tag in tags})


def _utf8(text: str, name: str) -> bytes:
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidValue(
            f"{name} is not valid Unicode text (it holds a lone surrogate)",
            hint="decode the file with errors='replace' or store it as bytes elsewhere",
        ) from None


def sha256_hex(data: bytes) -> str:
    """Return the SHA-256 of ``data`` as 64 lowercase hex digits."""
    return hashlib.sha256(data).hexdigest()


class CodeGenerationRepository(Repository[CodeArtifact]):
    """Generated files, versioned per path: each store is version 1, 2, 3, ..."""

    table = schema.code_generation
    record_type = CodeArtifact
    noun = "code artifact"

    async def store(
        self,
        path: str,
        content: str,
        *,
        language: str | None = None,
        agent_id: str | None = None,
        conversation_id: str | None = None,
        meta: Any = None,
    ) -> CodeArtifact:
        """Store ``content`` as the next version of ``path`` and return it.

        The version is read inside the unit of work, which therefore holds the writer (as any
        read in a transaction does), so two units never pick the same version.
        """
        path = _text(path, "path", max_len=1000, empty=False)
        values: dict[str, Any] = {
            "id": new_record_id(),
            "path": path,
            "version": 0,
            "language": _optional_text(language, "language", max_len=64),
            "content": _text(content, "content"),
            "content_hash": sha256_hex(_utf8(content, "content")),
            "agent_id": agent_id,
            "conversation_id": conversation_id,
            "meta": meta,
            "created_at": utcnow(),
        }
        t = self.table
        sql = self.sql(
            "max_version",
            lambda: select(func.coalesce(func.max(t.c.version), 0)).where(
                t.c.path == bindparam("path")
            ),
        )
        values["version"] = int((await self._s.fetch(sql, {"path": path}))[0][0]) + 1
        return self._insert(values)

    async def latest(self, path: str) -> CodeArtifact:
        """Return the newest version of ``path``, or raise ``NotFound``."""
        t = self.table
        sql = self.sql(
            "latest",
            lambda: (
                select(t).where(t.c.path == bindparam("path")).order_by(t.c.version.desc()).limit(1)
            ),
        )
        rows = await self._rows(sql, {"path": _text(path, "path")})
        if not rows:
            raise self._s.not_found("no code artifact stored at this path")
        return rows[0]

    async def history(self, path: str) -> list[CodeArtifact]:
        """Return every version of ``path``, oldest first (empty if none)."""
        t = self.table
        sql = self.sql(
            "history",
            lambda: select(t).where(t.c.path == bindparam("path")).order_by(t.c.version),
        )
        return await self._rows(sql, {"path": _text(path, "path")})

    async def list_latest(self) -> list[CodeArtifact]:
        """Return the newest version of every path, sorted by path."""
        t = self.table

        def build() -> ClauseElement:  # (the alias too: built once, with the SQL)
            newer = t.alias("newer")
            return (
                select(t)
                .where(
                    ~select(newer.c.id)
                    .where(newer.c.path == t.c.path, newer.c.version > t.c.version)
                    .exists()
                )
                .order_by(t.c.path)
            )

        sql = self.sql("list_latest", build)
        return await self._rows(sql, {})


Grouping = Literal["model", "agent", "conversation", "day"]


class LLMCallRepository(Repository[LLMCall]):
    """LLM API calls, for cost tracking: exact sums of cost and tokens."""

    table = schema.llm_calls
    record_type = LLMCall
    noun = "LLM call"

    async def record(
        self,
        *,
        model: str,
        cost_usd: Decimal | int | str,
        input_tokens: int = 0,
        output_tokens: int = 0,
        provider: str | None = None,
        latency_ms: int | None = None,
        status: str = "ok",
        error: str | None = None,
        agent_id: str | None = None,
        conversation_id: str | None = None,
        created_at: datetime | None = None,
    ) -> LLMCall:
        """Record one call. ``cost_usd`` is exact (``Decimal``; a float is refused).

        ``created_at`` defaults to now; pass it to import calls logged elsewhere. An unknown
        ``agent_id`` or ``conversation_id`` raises ``ConstraintViolation`` at commit.
        """
        nanos = to_nanos(cost_usd)
        if nanos < 0:
            raise InvalidValue("cost_usd must not be negative")
        values = {
            "id": new_record_id(),
            "provider": _optional_text(provider, "provider", max_len=64),
            "model": _text(model, "model", max_len=200, empty=False),
            "input_tokens": _count(input_tokens, "input_tokens"),
            "output_tokens": _count(output_tokens, "output_tokens"),
            "cost_usd": from_nanos(nanos),
            "latency_ms": None if latency_ms is None else _count(latency_ms, "latency_ms"),
            "status": _text(status, "status", max_len=32, empty=False),
            "error": _optional_text(error, "error"),
            "agent_id": agent_id,
            "conversation_id": conversation_id,
            "created_at": utcnow() if created_at is None else _aware(created_at),
        }
        return self._insert(values)

    async def totals(
        self,
        by: Grouping = "model",
        *,
        since: datetime | None = None,
        until: datetime | None = None,
    ) -> list[CostTotal]:
        """Return cost and tokens summed per model, agent, conversation or UTC day.

        Counts calls with ``since <= created_at < until`` (either bound may be left out).
        Sorted by key; calls without an agent or conversation form the group ``None``, first.
        """
        t = self.table
        keys: dict[str, Any] = {
            "model": lambda: t.c.model,
            "agent": lambda: t.c.agent_id,
            "conversation": lambda: t.c.conversation_id,
            # Integer division of integer microseconds: the same day number on any database.
            "day": lambda: (
                type_coerce(t.c.created_at, BigInteger)
                // literal_column(str(schema.MICROS_PER_DAY), BigInteger)
            ),
        }
        if by not in keys:
            raise InvalidValue("totals can be grouped by 'model', 'agent', 'conversation' or 'day'")

        def build() -> ClauseElement:
            key = keys[by]().label("key")
            return (
                select(
                    key,
                    func.count(),
                    func.coalesce(func.sum(t.c.input_tokens), 0),
                    func.coalesce(func.sum(t.c.output_tokens), 0),
                    func.coalesce(func.sum(type_coerce(t.c.cost_usd, BigInteger)), 0),
                )
                .where(t.c.created_at >= bindparam("since"), t.c.created_at < bindparam("until"))
                .group_by(key)
            )

        rows = await self._s.fetch(self.sql(f"totals:{by}", build), _range(since, until))
        totals = [
            CostTotal(
                key=_day(row[0]) if by == "day" else row[0],
                calls=int(row[1]),
                input_tokens=int(row[2]),
                output_tokens=int(row[3]),
                cost_usd=from_nanos(int(row[4])),
            )
            for row in rows
        ]
        totals.sort(key=lambda c: (c.key is not None, c.key or ""))
        return totals

    async def total_cost(
        self, *, since: datetime | None = None, until: datetime | None = None
    ) -> Decimal:
        """Return the exact total cost in USD of the calls in ``[since, until)``."""
        t = self.table
        sql = self.sql(
            "total_cost",
            lambda: select(func.coalesce(func.sum(type_coerce(t.c.cost_usd, BigInteger)), 0)).where(
                t.c.created_at >= bindparam("since"), t.c.created_at < bindparam("until")
            ),
        )
        rows = await self._s.fetch(sql, _range(since, until))
        return from_nanos(int(rows[0][0]))

    async def delete_older_than(self, when: datetime) -> None:
        """Delete, at commit, the calls recorded before ``when``."""
        t = self.table
        sql = self.sql("delete_older", lambda: t.delete().where(t.c.created_at < bindparam("when")))
        self._s.defer(Op(sql, {"when": to_micros(when)}))


def _aware(value: datetime) -> datetime:
    to_micros(value)  # refuses naive datetimes and other types
    return value.astimezone(UTC)


def _range(since: datetime | None, until: datetime | None) -> dict[str, int]:
    return {"since": _micros(since, _MIN_MICROS), "until": _micros(until, _MAX_MICROS)}


def _day(number: Any) -> str | None:
    if number is None:
        return None
    return (date(1970, 1, 1) + timedelta(days=int(number))).isoformat()


class CheckpointRepository(Repository[CheckpointRecord]):
    """Recovery checkpoints: state blobs per run, each linked to its parent."""

    table = schema.checkpoints
    record_type = CheckpointRecord
    noun = "checkpoint"

    async def save(
        self,
        run_id: str,
        state: bytes,
        *,
        parent_id: str | None = None,
        meta: Any = None,
    ) -> CheckpointRecord:
        """Save a state for a run; a ``parent_id`` that does not exist fails at commit."""
        if not isinstance(state, bytes | bytearray | memoryview):
            raise InvalidValue(f"state must be bytes, not {type(state).__name__}")
        blob = bytes(state)
        values = {
            "id": new_record_id(),
            "run_id": _text(run_id, "run_id", max_len=200, empty=False),
            "parent_id": None if parent_id is None else _text(parent_id, "parent_id"),
            "state": blob,
            "state_hash": sha256_hex(blob),
            "meta": meta,
            "created_at": utcnow(),
        }
        return self._insert(values)

    async def latest(self, run_id: str) -> CheckpointRecord:
        """Return the newest checkpoint of a run, or raise ``NotFound``."""
        t = self.table
        sql = self.sql(
            "latest",
            lambda: (
                select(t).where(t.c.run_id == bindparam("run")).order_by(t.c.id.desc()).limit(1)
            ),
        )
        rows = await self._rows(sql, {"run": _text(run_id, "run_id")})
        if not rows:
            raise self._s.not_found("no checkpoint for this run")
        return rows[0]

    async def list(
        self,
        run_id: str | None = None,
        *,
        limit: int | None = None,
        after: str | None = None,
    ) -> list[CheckpointRecord]:
        """Return a run's checkpoints, oldest first (every checkpoint if no run is given)."""
        if run_id is None:
            return await super().list(limit=limit, after=after)
        t = self.table
        sql = self.sql(
            "list_run",
            lambda: (
                select(t)
                .where(t.c.run_id == bindparam("run"), t.c.id > bindparam("after"))
                .order_by(t.c.id)
                .limit(bindparam("limit"))
            ),
        )
        params = {"run": _text(run_id, "run_id"), "after": after or "", "limit": _limit(limit)}
        return await self._rows(sql, params)

    async def prune(self, run_id: str, *, keep: int) -> None:
        """Delete, at commit, all but the newest ``keep`` checkpoints of a run.

        The chain of what is kept stays intact: a kept checkpoint whose parent is deleted (the
        oldest kept one) gets ``parent_id = NULL`` and becomes the root of the run. The foreign
        key's ``ON DELETE SET NULL`` does it, so checkpoints of other runs forked from a
        deleted one are unlinked the same way rather than left dangling.
        """
        t = self.table
        newest = (
            select(t.c.id)
            .where(t.c.run_id == bindparam("run"))
            .order_by(t.c.id.desc())
            .limit(bindparam("keep"))
        )
        sql = self.sql(
            "prune",
            lambda: t.delete().where(
                t.c.run_id == bindparam("run"), t.c.id.not_in(newest.scalar_subquery())
            ),
        )
        params = {"run": _text(run_id, "run_id"), "keep": _count(keep, "keep")}
        self._s.defer(Op(sql, params))


class PluginRepository(Repository[Plugin]):
    """Installed plugins: enabled or not, with JSON config and state."""

    table = schema.plugins
    record_type = Plugin
    noun = "plugin"

    async def install(
        self,
        name: str,
        *,
        version: str | None = None,
        config: Any = None,
        state: Any = None,
        enabled: bool = True,
    ) -> Plugin:
        """Install a plugin; a name already installed raises ``ConstraintViolation`` at commit."""
        now = utcnow()
        values = {
            "id": new_record_id(),
            "name": _text(name, "name", max_len=200, empty=False),
            "version": _optional_text(version, "version", max_len=64),
            "enabled": _bool(enabled, "enabled"),
            "config": config,
            "state": state,
            "installed_at": now,
            "updated_at": now,
        }
        return self._insert(values)

    async def enable(self, id: str) -> None:
        """Enable a plugin (``NotFound`` at commit)."""
        self._update(id, {"enabled": True, "updated_at": utcnow()})

    async def disable(self, id: str) -> None:
        """Disable a plugin (``NotFound`` at commit)."""
        self._update(id, {"enabled": False, "updated_at": utcnow()})

    async def set_config(self, id: str, config: Any) -> None:
        """Replace a plugin's config (any JSON value; ``None`` clears it)."""
        self._update(id, {"config": config, "updated_at": utcnow()})

    async def set_state(self, id: str, state: Any) -> None:
        """Replace a plugin's state (any JSON value; ``None`` clears it)."""
        self._update(id, {"state": state, "updated_at": utcnow()})

    async def get_by_name(self, name: str) -> Plugin:
        """Return the plugin with this name, or raise ``NotFound``."""
        t = self.table
        sql = self.sql("by_name", lambda: select(t).where(t.c.name == bindparam("name")))
        rows = await self._rows(sql, {"name": _text(name, "name")})
        if not rows:
            raise self._s.not_found("no plugin with this name")
        return rows[0]

    async def list_enabled(self) -> list[Plugin]:
        """Return the enabled plugins, in installation order."""
        t = self.table
        sql = self.sql(
            "enabled", lambda: select(t).where(t.c.enabled == bindparam("on")).order_by(t.c.id)
        )
        return await self._rows(sql, {"on": True})


def _bool(value: object, name: str) -> bool:
    if not isinstance(value, bool):
        raise InvalidValue(f"{name} must be True or False, not {type(value).__name__}")
    return value


class SessionRepository(Repository[SessionRecord]):
    """User sessions: start, touch while active, end."""

    table = schema.sessions
    record_type = SessionRecord
    noun = "session"

    async def start(
        self, *, user_id: str | None = None, agent_id: str | None = None, meta: Any = None
    ) -> SessionRecord:
        """Start a session."""
        now = utcnow()
        values = {
            "id": new_record_id(),
            "user_id": _optional_text(user_id, "user_id", max_len=200),
            "agent_id": agent_id,
            "meta": meta,
            "started_at": now,
            "last_active_at": now,
            "ended_at": None,
        }
        return self._insert(values)

    def _active_update(self, name: str, column: str, id: str) -> None:
        t = self.table
        sql = self.sql(
            name,
            lambda: (
                update(t)
                .where(t.c.id == bindparam("id"), t.c.ended_at.is_(None))
                .values({column: bindparam("now")})
            ),
        )
        params = {"id": id, "now": to_micros(utcnow())}
        self._s.defer(Op(sql, params, missing=f"no active session with id {id!r}"))

    async def touch(self, id: str) -> None:
        """Mark an active session as active now (``NotFound`` at commit if none or ended)."""
        self._active_update("touch", "last_active_at", id)

    async def end(self, id: str) -> None:
        """End an active session (``NotFound`` at commit if none or already ended)."""
        self._active_update("end", "ended_at", id)

    async def list_active(self, *, active_since: datetime | None = None) -> list[SessionRecord]:
        """Return the sessions not ended (and touched at or after ``active_since``), in order."""
        t = self.table
        sql = self.sql(
            "active",
            lambda: (
                select(t)
                .where(t.c.ended_at.is_(None), t.c.last_active_at >= bindparam("since"))
                .order_by(t.c.id)
            ),
        )
        return await self._rows(sql, {"since": _micros(active_since, _MIN_MICROS)})


# -- LangGraph: checkpoints, channel values, pending writes; long-term memory ------------------

GraphKey = tuple[str, str, str]
"""A checkpoint's key: ``(thread_id, checkpoint_ns, checkpoint_id)``."""
BlobKey = tuple[str, str, str, str]
"""A channel value's key: ``(thread_id, checkpoint_ns, channel, version)``."""


def _rows_in(columns: Sequence[str], keys: Sequence[tuple[Any, ...]]) -> tuple[str, list[Any]]:
    """Return ``(c1, c2, ...) IN (VALUES (?, ?), ...)`` and its parameters for ``keys``.

    The list is padded to a power of two with its last key, so a handful of statement texts
    serve every page size (and stay in the connections' statement caches).
    """
    n = 1 << max(0, len(keys) - 1).bit_length()
    padded = list(keys) + [keys[-1]] * (n - len(keys))
    row = "(" + ", ".join("?" * len(columns)) + ")"
    sql = f"({', '.join(columns)}) IN (VALUES {', '.join([row] * n)})"
    return sql, [v for key in padded for v in key]


_PLAIN_KEY = re.compile(r'[\x20-\x21\x23-\x5b\x5d-\x7e]*')
"""A key SQLite's JSON paths can name: printable ASCII without ``"`` or ``\\`` (a path label
has no escapes, and the document's text holds any other character escaped)."""


def json_equals(
    column: str, filter: Mapping[str, Any], dialect: str = "sqlite"
) -> tuple[list[str], list[Any]]:
    """Return ``?``-style conditions that a JSON column's top-level keys equal scalar values.

    ``None`` matches a missing key or JSON null; ``True``/``False`` match JSON booleans only;
    numbers match JSON numbers equal to them, strings equal JSON strings. A ``dict`` or ``list``
    value is an ``InvalidValue`` here (callers compare those themselves). ``dialect`` is the
    session's (``Runner.dialect``): SQLite's JSON functions or PostgreSQL's ``jsonb``
    operators, with the same results (documents are stored as text on both).
    """
    where: list[str] = []
    params: list[Any] = []
    for key, value in filter.items():
        key = _text(key, "filter key")
        if value is None:
            kind = "null"
        elif isinstance(value, bool):
            kind = "true" if value else "false"
        elif isinstance(value, int):
            if not -(2**63) <= value < 2**63:
                raise InvalidValue(f"filter on {key!r} compares an integer out of 64-bit range")
            kind = "number"
        elif isinstance(value, float):
            kind = "number"
        elif isinstance(value, str):
            kind = "text"
            value = _text(value, "filter value")
        else:
            raise InvalidValue(
                f"filter on {key!r} compares a {type(value).__name__}",
                hint="filter on strings, numbers, booleans or None",
            )
        if dialect == "postgresql":
            # ``->`` with a text key: an array's elements are not keys (as in SQLite's paths).
            item = f"({column}::jsonb -> ?::text)"
            if kind == "null":
                where.append(f"COALESCE({item}, 'null'::jsonb) = 'null'::jsonb")
            elif kind in ("true", "false"):
                where.append(f"{item} = '{kind}'::jsonb")
            elif kind == "text":
                where.append(f"{item} = to_jsonb(?::text)")
            elif isinstance(value, int):
                where.append(f"{item} = to_jsonb(?::numeric)")
            else:  # as SQLite compares: in double precision
                where.append(
                    f"CASE WHEN jsonb_typeof({item}) = 'number' "
                    f"THEN ({item} #>> '{{}}')::float8 END = ?::float8"
                )
                params.append(key)
            params.append(key)
        elif _PLAIN_KEY.fullmatch(key):
            path = f'$."{key}"'
            if kind == "null":
                where.append(f"json_extract({column}, ?) IS NULL")
            elif kind in ("true", "false"):
                where.append(f"json_type({column}, ?) = '{kind}'")
            elif kind == "text":
                where.append(f"json_extract({column}, ?) = ? AND json_type({column}, ?) = 'text'")
                params += [path, value]
            else:
                where.append(
                    f"json_extract({column}, ?) = ? "
                    f"AND json_type({column}, ?) IN ('integer', 'real')"
                )
                params += [path, value]
            params.append(path)
            continue
        else:  # any other key, by its decoded text
            each = f"FROM json_each({column}) AS j WHERE j.key = ?"
            if kind == "null":
                where.append(f"NOT EXISTS (SELECT 1 {each} AND j.type <> 'null')")
            elif kind in ("true", "false"):
                where.append(f"EXISTS (SELECT 1 {each} AND j.type = '{kind}')")
            elif kind == "text":
                where.append(f"EXISTS (SELECT 1 {each} AND j.type = 'text' AND j.atom = ?)")
            else:
                where.append(
                    f"EXISTS (SELECT 1 {each} AND j.type IN ('integer', 'real') AND j.atom = ?)"
                )
            params.append(key)
        if kind in ("text", "number"):
            params.append(value)
    return where, params


def _graph_text(value: object, name: str) -> str:
    return _text(value, name)


_LOAD = """WITH page AS ({page})
SELECT 0, page.* FROM page
UNION ALL
SELECT 1, w.thread_id, w.checkpoint_ns, w.checkpoint_id, w.task_id, w.channel, w.idx,
  w.task_path, w.value, w.value_type, NULL, NULL
FROM lg_writes AS w JOIN page ON w.thread_id = page.thread_id
  AND w.checkpoint_ns = page.checkpoint_ns AND w.checkpoint_id = page.checkpoint_id
UNION ALL
SELECT 2, b.thread_id, b.checkpoint_ns, b.channel, b.version, b.value_type, NULL, NULL,
  b.value, NULL, NULL, NULL
FROM lg_blobs AS b
WHERE (b.thread_id, b.checkpoint_ns, b.channel, b.version) IN (
  SELECT page.thread_id, page.checkpoint_ns, v.key, v.value
  FROM page, {each}(page.channel_versions{cast}) AS v)"""
"""A page of checkpoints (``{page}``, a SELECT of whole rows) with their writes and the channel
values they refer to, in one query: kind 0 rows are checkpoints, 1 writes, 2 channel values.
Each is laid out in the checkpoint's 11 columns so that every column has one type (PostgreSQL's
UNION requires it): a write's or channel value's columns go where a checkpoint has a column of
their type (``_WRITE`` and ``_BLOB`` put them back in order), the rest are NULL. Channel
versions are JSON strings, so ``json_each`` and ``jsonb_each_text`` give the same text."""
_LOADS = {
    "sqlite": functools.partial(_LOAD.format, each="json_each", cast=""),
    "postgresql": functools.partial(_LOAD.format, each="jsonb_each_text", cast="::jsonb"),
}
_WRITE = (1, 2, 3, 4, 6, 5, 7, 9, 8)
_BLOB = (1, 2, 3, 4, 5, 8)
_WRITE_ORDER = attrgetter(
    "thread_id", "checkpoint_ns", "checkpoint_id", "task_path", "task_id", "idx"
)
_BLOB_ORDER = attrgetter("thread_id", "checkpoint_ns", "channel", "version")


class GraphCheckpointRepository(Repository[GraphCheckpoint]):
    """LangGraph checkpoints by thread, namespace and ID (newest first), with their writes and
    channel values: deleting, pruning or copying a thread here covers all three tables."""

    table = schema.lg_checkpoints
    record_type = GraphCheckpoint
    noun = "LangGraph checkpoint"
    _KEY = ("thread_id", "checkpoint_ns", "checkpoint_id")

    async def put(
        self,
        *,
        thread_id: str,
        checkpoint_ns: str,
        checkpoint_id: str,
        checkpoint_type: str,
        checkpoint: bytes,
        parent_checkpoint_id: str | None = None,
        metadata: Any = None,
        channel_versions: Any = None,
        run_id: str | None = None,
        step: int | None = None,
    ) -> GraphCheckpoint:
        """Store a checkpoint at commit, replacing one with the same key."""
        record = self._make(
            _graph_text(thread_id, "thread_id"),
            _graph_text(checkpoint_ns, "checkpoint_ns"),
            _graph_text(checkpoint_id, "checkpoint_id"),
            None if parent_checkpoint_id is None else _text(parent_checkpoint_id, "parent"),
            None if run_id is None else _text(run_id, "run_id"),
            step if isinstance(step, int) and not isinstance(step, bool) else None,
            _text(checkpoint_type, "checkpoint_type", max_len=32),
            _bytes(checkpoint, "checkpoint"),
            metadata,
            channel_versions,
            utcnow(),
        )
        t = self.table

        def build() -> ClauseElement:
            stmt = sqlite.insert(t)
            keys = set(self._KEY)
            return stmt.on_conflict_do_update(
                index_elements=list(self._KEY),
                set_={c.name: stmt.excluded[c.name] for c in t.columns if c.name not in keys},
            )

        sql = self.sql("upsert", build, positional=True)
        self._s.defer(Op(sql, self._codec.bind_record(record)))
        return record  # type: ignore[no-any-return]

    async def get(
        self, thread_id: str, checkpoint_ns: str = "", checkpoint_id: str | None = None
    ) -> GraphCheckpoint:
        """Return a checkpoint (the newest of the namespace if no ID is given) or ``NotFound``."""
        found = await self.find(thread_id, checkpoint_ns, checkpoint_id)
        if found is None:
            raise self._s.not_found("no LangGraph checkpoint with this thread, namespace and ID")
        return found

    async def find(
        self, thread_id: str, checkpoint_ns: str = "", checkpoint_id: str | None = None
    ) -> GraphCheckpoint | None:
        """Return a checkpoint (the newest of the namespace if no ID is given), or ``None``."""
        t = self.table
        params = {"thread": _graph_text(thread_id, "thread_id"), "ns": checkpoint_ns}
        if checkpoint_id is None:
            sql = self.sql(
                "newest",
                lambda: (
                    select(t)
                    .where(
                        t.c.thread_id == bindparam("thread"), t.c.checkpoint_ns == bindparam("ns")
                    )
                    .order_by(t.c.checkpoint_id.desc())
                    .limit(1)
                ),
            )
        else:
            sql = self.sql(
                "find",
                lambda: select(t).where(
                    t.c.thread_id == bindparam("thread"),
                    t.c.checkpoint_ns == bindparam("ns"),
                    t.c.checkpoint_id == bindparam("id"),
                ),
            )
            params["id"] = _graph_text(checkpoint_id, "checkpoint_id")
        rows = await self._rows(sql, params)
        return rows[0] if rows else None

    async def list(  # type: ignore[override]
        self,
        thread_id: str | None = None,
        checkpoint_ns: str | None = None,
        *,
        checkpoint_id: str | None = None,
        before: str | None = None,
        after_key: GraphKey | None = None,
        filter: Mapping[str, Any] | None = None,
        limit: int | None = None,
    ) -> builtins.list[GraphCheckpoint]:
        """Return checkpoints newest first: ``(checkpoint_id, thread_id, checkpoint_ns)``
        descending, in one query.

        ``before`` keeps IDs below it; ``after_key`` (the last key of the previous page, in
        that order) pages on; ``filter`` compares top-level metadata keys (see
        ``json_equals``).
        """
        page, params = self._page(
            thread_id, checkpoint_ns, checkpoint_id, before, after_key, filter, limit
        )
        return await self._rows(page, params)  # type: ignore[arg-type]

    async def load(
        self,
        thread_id: str | None = None,
        checkpoint_ns: str | None = None,
        *,
        checkpoint_id: str | None = None,
        before: str | None = None,
        after_key: GraphKey | None = None,
        filter: Mapping[str, Any] | None = None,
        limit: int | None = None,
    ) -> tuple[builtins.list[GraphCheckpoint], builtins.list[GraphWrite], builtins.list[GraphBlob]]:
        """Return what ``list`` returns with the checkpoints' writes (by checkpoint, task path,
        task ID and index) and the channel values they refer to, in one query."""
        page, params = self._page(
            thread_id, checkpoint_ns, checkpoint_id, before, after_key, filter, limit
        )
        sql = _LOADS[self._s.dialect](page=page)
        rows = await self._s.fetch(sql, params)  # type: ignore[arg-type]
        checkpoints: builtins.list[GraphCheckpoint] = []
        writes: builtins.list[GraphWrite] = []
        blobs: builtins.list[GraphBlob] = []
        load_c, load_w, load_b = self._load, GraphWriteRepository._load, GraphBlobRepository._load
        try:
            for row in rows:
                kind = row[0]
                if kind == 0:
                    checkpoints.append(load_c(row[1:12]))
                elif kind == 1:
                    writes.append(load_w(tuple(row[i] for i in _WRITE)))
                else:
                    blobs.append(load_b(tuple(row[i] for i in _BLOB)))
        except _UNLOADABLE as exc:
            raise self._s.damaged(self.noun, exc) from None
        # The rows of a UNION come in no promised order: sort them as documented.
        checkpoints.sort(
            key=lambda c: (c.checkpoint_id, c.thread_id, c.checkpoint_ns), reverse=True
        )
        writes.sort(key=_WRITE_ORDER)
        blobs.sort(key=_BLOB_ORDER)
        return checkpoints, writes, blobs

    def _page(
        self,
        thread_id: str | None,
        checkpoint_ns: str | None,
        checkpoint_id: str | None,
        before: str | None,
        after_key: GraphKey | None,
        filter: Mapping[str, Any] | None,
        limit: int | None,
    ) -> tuple[str, builtins.list[Any]]:
        where: builtins.list[str] = []
        params: builtins.list[Any] = []
        for column, value in (
            ("thread_id", thread_id),
            ("checkpoint_ns", checkpoint_ns),
            ("checkpoint_id", checkpoint_id),
        ):
            if value is not None:
                where.append(f"{column} = ?")
                params.append(_text(value, column))
        if before is not None:
            where.append("checkpoint_id < ?")
            params.append(_text(before, "before"))
        if after_key is not None:
            where.append("(checkpoint_id, thread_id, checkpoint_ns) < (?, ?, ?)")
            params += [_text(v, "after_key") for v in after_key]
        if filter:
            more, values = json_equals("lg_checkpoints.metadata", filter, self._s.dialect)
            where += more
            params += values
        base = self.sql("select", lambda: select(self.table), positional=True)
        sql = base + (" WHERE " + " AND ".join(where) if where else "")
        sql += " ORDER BY checkpoint_id DESC, thread_id DESC, checkpoint_ns DESC"
        if limit is not None:
            sql += f" LIMIT {_limit(limit)}"
        return sql, params

    async def delete_thread(self, thread_id: str) -> None:
        """Delete, at commit, a thread's checkpoints, writes and channel values."""
        params = {"thread": _graph_text(thread_id, "thread_id")}
        for t in (schema.lg_writes, schema.lg_blobs, self.table):
            sql = self.sql(
                f"delete_thread:{t.name}",
                lambda t=t: t.delete().where(t.c.thread_id == bindparam("thread")),  # type: ignore[misc]
            )
            self._s.defer(Op(sql, params))

    async def delete_runs(self, run_ids: Iterable[str]) -> None:
        """Delete, at commit, the checkpoints made by these runs, with their writes."""
        runs = [(_text(r, "run_id"),) for r in run_ids]
        if not runs:
            return
        t, w = self.table, schema.lg_writes
        writes = self.sql(
            "delete_run_writes",
            lambda: w.delete().where(
                tuple_(w.c.thread_id, w.c.checkpoint_ns, w.c.checkpoint_id).in_(
                    select(t.c.thread_id, t.c.checkpoint_ns, t.c.checkpoint_id).where(
                        t.c.run_id == bindparam("run")
                    )
                )
            ),
            positional=True,
        )
        checkpoints = self.sql(
            "delete_runs",
            lambda: t.delete().where(t.c.run_id == bindparam("run")),
            positional=True,
        )
        self._s.defer(Op(writes, runs, many=True))
        self._s.defer(Op(checkpoints, runs, many=True))

    async def copy_thread(self, source_thread_id: str, target_thread_id: str) -> None:
        """Copy, at commit, a thread's checkpoints, writes and channel values to another thread
        (rows the target already holds with the same keys are kept)."""
        params = {
            "source": _graph_text(source_thread_id, "source_thread_id"),
            "target": _graph_text(target_thread_id, "target_thread_id"),
        }
        for t in (self.table, schema.lg_blobs, schema.lg_writes):

            def build(t: Table = t) -> ClauseElement:
                columns = [bindparam("target") if c.name == "thread_id" else c for c in t.columns]
                source = select(*columns).where(t.c.thread_id == bindparam("source"))
                return (
                    sqlite.insert(t)
                    .from_select([c.name for c in t.columns], source)
                    .on_conflict_do_nothing()
                )

            self._s.defer(Op(self.sql(f"copy:{t.name}", build), params))

    async def prune(self, thread_ids: Iterable[str], *, keep_latest: bool = True) -> None:
        """Delete, at commit, all but the newest checkpoint of each namespace of these threads
        (every checkpoint if ``keep_latest`` is false), with their writes, and the channel
        values no kept checkpoint refers to."""
        threads = [_graph_text(tid, "thread_id") for tid in thread_ids]
        if not threads:
            return
        if not keep_latest:
            for tid in threads:
                await self.delete_thread(tid)
            return
        t = self.table
        for target in (schema.lg_writes, t):

            def build(x: Table = target) -> ClauseElement:
                n = t.alias("newest")
                newest = (
                    select(func.max(n.c.checkpoint_id))
                    .where(n.c.thread_id == x.c.thread_id, n.c.checkpoint_ns == x.c.checkpoint_ns)
                    .scalar_subquery()
                )
                return x.delete().where(
                    x.c.thread_id == bindparam("thread"), x.c.checkpoint_id < newest
                )

            sql = self.sql(f"prune:{target.name}", build, positional=True)
            self._s.defer(Op(sql, [(tid,) for tid in threads], many=True))
        # The channel values still referred to: those of the checkpoints kept (a read, so
        # this unit holds the writer from here to its commit).
        b = schema.lg_blobs
        kept = self.sql(
            "kept_versions",
            lambda: select(t.c.thread_id, t.c.checkpoint_ns, t.c.channel_versions).where(
                t.c.thread_id == bindparam("thread")
            ),
        )
        stored = self.sql(
            "blob_keys",
            lambda: select(b.c.checkpoint_ns, b.c.channel, b.c.version).where(
                b.c.thread_id == bindparam("thread")
            ),
        )
        drop = self.sql(
            "drop_blob",
            lambda: b.delete().where(
                b.c.thread_id == bindparam("thread"),
                b.c.checkpoint_ns == bindparam("ns"),
                b.c.channel == bindparam("channel"),
                b.c.version == bindparam("version"),
            ),
        )
        unused = []
        for tid in threads:
            wanted = set()
            for _, ns, versions in await self._s.fetch(kept, {"thread": tid}):
                for channel, version in (json.loads(versions) if versions else {}).items():
                    wanted.add((ns, channel, str(version)))
            for ns, channel, version in await self._s.fetch(stored, {"thread": tid}):
                if (ns, channel, version) not in wanted:
                    unused.append({"thread": tid, "ns": ns, "channel": channel, "version": version})
        if unused:
            self._s.defer(Op(drop, unused, many=True))

    async def threads(self) -> builtins.list[GraphThread]:
        """Return every thread with its checkpoint count, stored bytes (checkpoints, metadata,
        channel values and writes) and the step of its newest root checkpoint."""
        t, b, w = self.table, schema.lg_blobs, schema.lg_writes
        newest = t.alias("newest")

        def build() -> ClauseElement:
            latest_step = (
                select(newest.c.step)
                .where(
                    newest.c.thread_id == t.c.thread_id,
                    newest.c.checkpoint_ns == bindparam("root"),
                )
                .order_by(newest.c.checkpoint_id.desc())
                .limit(1)
                .scalar_subquery()
            )
            return (
                select(
                    t.c.thread_id,
                    func.count(),
                    func.coalesce(func.sum(func.length(t.c.checkpoint)), 0)
                    + func.coalesce(func.sum(func.length(t.c.metadata)), 0),
                    func.max(t.c.checkpoint_id),
                    latest_step,
                )
                .group_by(t.c.thread_id)
                .order_by(t.c.thread_id)
            )

        extra: dict[str, int] = {}
        for x in (b, w):
            sizes = self.sql(
                f"sizes:{x.name}",
                lambda x=x: select(  # type: ignore[misc]
                    x.c.thread_id, func.coalesce(func.sum(func.length(x.c.value)), 0)
                ).group_by(x.c.thread_id),
            )
            for tid, n in await self._s.fetch(sizes, {}):
                extra[tid] = extra.get(tid, 0) + int(n)
        rows = await self._s.fetch(self.sql("threads", build), {"root": ""})
        return [
            GraphThread(
                thread_id=tid,
                checkpoints=int(count),
                size_bytes=int(size) + extra.get(tid, 0),
                latest_step=step,
                latest_checkpoint_id=last,
            )
            for tid, count, size, last, step in rows
        ]


def _bytes(value: object, name: str) -> bytes:
    if type(value) is bytes:
        return value
    if not isinstance(value, bytes | bytearray | memoryview):
        raise InvalidValue(f"{name} must be bytes, not {type(value).__name__}")
    return bytes(value)


class GraphWriteRepository(Repository[GraphWrite]):
    """LangGraph pending writes: per checkpoint, task and index."""

    table = schema.lg_writes
    record_type = GraphWrite
    noun = "LangGraph write"

    async def put_many(
        self,
        thread_id: str,
        checkpoint_ns: str,
        checkpoint_id: str,
        task_id: str,
        writes: Iterable[tuple[int, str, str, bytes | None]],
        *,
        task_path: str = "",
    ) -> None:
        """Store, at commit, a task's writes ``(idx, channel, value_type, value)``.

        A write with a negative index (LangGraph's special channels: error, interrupt, resume,
        scheduled) replaces an earlier one at that index; any other is kept once: writing
        the same task and index again changes nothing.
        """
        head = (
            _graph_text(thread_id, "thread_id"),
            _graph_text(checkpoint_ns, "checkpoint_ns"),
            _graph_text(checkpoint_id, "checkpoint_id"),
            _graph_text(task_id, "task_id"),
        )
        path = _graph_text(task_path, "task_path")
        replace: builtins.list[tuple[Any, ...]] = []
        keep: builtins.list[tuple[Any, ...]] = []
        for idx, channel, value_type, value in writes:
            if type(idx) is not int:
                raise InvalidValue(f"idx must be an integer, not {type(idx).__name__}")
            row = (*head, idx, _graph_text(channel, "channel"), path, value_type, value)
            (replace if idx < 0 else keep).append(row)
        t = self.table
        if keep:
            sql = self.sql(
                "insert_keep", lambda: sqlite.insert(t).on_conflict_do_nothing(), positional=True
            )
            self._s.defer(Op(sql, keep, many=True) if len(keep) > 1 else Op(sql, keep[0]))
        if replace:

            def build() -> ClauseElement:
                stmt = sqlite.insert(t)
                return stmt.on_conflict_do_update(
                    index_elements=[c.name for c in t.primary_key.columns],
                    set_={
                        n: stmt.excluded[n] for n in ("channel", "task_path", "value_type", "value")
                    },
                )

            sql = self.sql("insert_replace", build, positional=True)
            self._s.defer(Op(sql, replace, many=True))

    async def list(  # type: ignore[override]
        self, thread_id: str, checkpoint_ns: str, checkpoint_id: str
    ) -> builtins.list[GraphWrite]:
        """Return the writes of one checkpoint, by task path, task ID and index."""
        t = self.table
        sql = self.sql(
            "of_checkpoint",
            lambda: (
                select(t)
                .where(
                    t.c.thread_id == bindparam("thread"),
                    t.c.checkpoint_ns == bindparam("ns"),
                    t.c.checkpoint_id == bindparam("id"),
                )
                .order_by(t.c.task_path, t.c.task_id, t.c.idx)
            ),
        )
        params = {"thread": thread_id, "ns": checkpoint_ns, "id": checkpoint_id}
        return await self._rows(sql, params)

    async def of_checkpoints(self, keys: Sequence[GraphKey]) -> builtins.list[GraphWrite]:
        """Return the writes of several checkpoints in one query, by checkpoint, task path,
        task ID and index."""
        if not keys:
            return []
        base = self.sql("select", lambda: select(self.table), positional=True)
        where, params = _rows_in(("thread_id", "checkpoint_ns", "checkpoint_id"), keys)
        sql = f"{base} WHERE {where} ORDER BY thread_id, checkpoint_ns, checkpoint_id, "
        sql += "task_path, task_id, idx"
        return await self._rows(sql, params)  # type: ignore[arg-type]


class GraphBlobRepository(Repository[GraphBlob]):
    """LangGraph channel values, one row per channel version (stored once)."""

    table = schema.lg_blobs
    record_type = GraphBlob
    noun = "LangGraph channel value"

    async def put_many(
        self,
        thread_id: str,
        checkpoint_ns: str,
        blobs: Iterable[tuple[str, str, str, bytes | None]],
    ) -> None:
        """Store, at commit, channel values ``(channel, version, value_type, value)``; a version
        already stored is kept as it is."""
        head = (_graph_text(thread_id, "thread_id"), _graph_text(checkpoint_ns, "checkpoint_ns"))
        rows = [
            (*head, _graph_text(channel, "channel"), _graph_text(version, "version"), vt, value)
            for channel, version, vt, value in blobs
        ]
        if not rows:
            return
        t = self.table
        sql = self.sql(
            "insert_keep", lambda: sqlite.insert(t).on_conflict_do_nothing(), positional=True
        )
        self._s.defer(Op(sql, rows, many=True) if len(rows) > 1 else Op(sql, rows[0]))

    async def get_many(self, keys: Sequence[BlobKey]) -> builtins.list[GraphBlob]:
        """Return the stored values among ``keys`` in one query (in no particular order)."""
        if not keys:
            return []
        base = self.sql("select", lambda: select(self.table), positional=True)
        where, params = _rows_in(("thread_id", "checkpoint_ns", "channel", "version"), keys)
        return await self._rows(f"{base} WHERE {where}", params)  # type: ignore[arg-type]

    async def list(  # type: ignore[override]
        self, thread_id: str, checkpoint_ns: str | None = None
    ) -> builtins.list[GraphBlob]:
        """Return a thread's stored channel values (of one namespace if given)."""
        t = self.table
        sql = self.sql(
            "of_thread",
            lambda: (
                select(t)
                .where(t.c.thread_id == bindparam("thread"))
                .order_by(t.c.checkpoint_ns, t.c.channel, t.c.version)
            ),
        )
        rows = await self._rows(sql, {"thread": thread_id})
        return [r for r in rows if checkpoint_ns is None or r.checkpoint_ns == checkpoint_ns]


def _prefix_where(prefix: str | None) -> tuple[str, builtins.list[Any]]:
    """Return the condition that ``namespace`` is ``prefix`` or below it (labels joined by
    ``.``), and its parameters."""
    if not prefix:
        return "1 = 1", []
    # Not LIKE: SQLite's ignores ASCII case, PostgreSQL's does not; substr compares exactly on
    # both (and counts characters on both).
    where = "(namespace = ? OR substr(namespace, 1, CAST(? AS INTEGER)) = ?)"
    return where, [prefix, len(prefix) + 1, prefix + "."]


class MemoryItemRepository(Repository[MemoryItem]):
    """Long-term memory: JSON documents by namespace and key, with an optional time to live.

    Reads never return an item whose ``expires_at`` has passed; ``sweep`` deletes them.
    """

    table = schema.memory_items
    record_type = MemoryItem
    noun = "memory item"

    async def put(
        self, namespace: str, key: str, value: Any, *, ttl_minutes: float | None = None
    ) -> MemoryItem:
        """Store a document at commit, replacing the one at this namespace and key (whose
        ``created_at`` is kept); with ``ttl_minutes`` it expires that long after its last
        write or refreshing read."""
        now = utcnow()
        if ttl_minutes is not None:
            if isinstance(ttl_minutes, bool) or not isinstance(ttl_minutes, int | float):
                raise InvalidValue("ttl_minutes must be a number of minutes")
            if not 0 < ttl_minutes < 1e12:
                raise InvalidValue("ttl_minutes must be positive", hint=f"got {ttl_minutes!r}")
        expires = None if ttl_minutes is None else now + timedelta(minutes=ttl_minutes)
        record = self._make(
            _text(namespace, "namespace"),
            _text(key, "key"),
            value,
            now,
            now,
            expires,
            None if ttl_minutes is None else float(ttl_minutes),
        )
        t = self.table

        def build() -> ClauseElement:
            stmt = sqlite.insert(t)
            return stmt.on_conflict_do_update(
                index_elements=["namespace", "key"],
                set_={
                    n: stmt.excluded[n]
                    for n in ("value", "updated_at", "expires_at", "ttl_minutes")
                },
            )

        self._s.defer(
            Op(self.sql("upsert", build, positional=True), self._codec.bind_record(record))
        )
        return record  # type: ignore[no-any-return]

    async def delete(self, namespace: str, key: str) -> None:  # type: ignore[override]
        """Delete a document at commit (nothing happens if there is none)."""
        t = self.table
        sql = self.sql(
            "delete_key",
            lambda: t.delete().where(t.c.namespace == bindparam("ns"), t.c.key == bindparam("key")),
        )
        self._s.defer(Op(sql, {"ns": _text(namespace, "namespace"), "key": _text(key, "key")}))

    async def get(self, namespace: str, key: str) -> MemoryItem:  # type: ignore[override]
        """Return the document at this namespace and key, or raise ``NotFound``."""
        found = await self.get_many([(namespace, key)])
        if not found:
            raise self._s.not_found("no memory item at this namespace and key")
        return found[0]

    async def get_many(
        self, keys: Sequence[tuple[str, str]], *, now: datetime | None = None
    ) -> builtins.list[MemoryItem]:
        """Return the live documents among ``(namespace, key)`` pairs, in one query."""
        if not keys:
            return []
        base = self.sql("select", lambda: select(self.table), positional=True)
        where, params = _rows_in(("namespace", "key"), keys)
        sql = f"{base} WHERE {where} AND (expires_at IS NULL OR expires_at > ?)"
        params.append(to_micros(now or utcnow()))
        return await self._rows(sql, params)  # type: ignore[arg-type]

    async def search(
        self,
        prefix: str | None = None,
        *,
        filter: Mapping[str, Any] | None = None,
        limit: int | None = None,
        offset: int = 0,
        now: datetime | None = None,
    ) -> builtins.list[MemoryItem]:
        """Return the live documents at or below ``prefix``, most recently updated first.

        ``filter`` compares top-level keys of the value to strings, numbers, booleans or None.
        """
        where, params = _prefix_where(prefix)
        clauses = [where, "(expires_at IS NULL OR expires_at > ?)"]
        params.append(to_micros(now or utcnow()))
        if filter:
            more, values = json_equals("memory_items.value", filter, self._s.dialect)
            clauses += more
            params += values
        base = self.sql("select", lambda: select(self.table), positional=True)
        sql = f"{base} WHERE {' AND '.join(clauses)} ORDER BY updated_at DESC, namespace, key"
        sql += " LIMIT ? OFFSET ?"
        params += [_limit(limit), _count(offset, "offset")]
        return await self._rows(sql, params)  # type: ignore[arg-type]

    async def namespaces(
        self, prefix: str | None = None, *, now: datetime | None = None
    ) -> builtins.list[str]:
        """Return the distinct namespaces holding live documents at or below ``prefix``."""
        where, params = _prefix_where(prefix)
        params.append(to_micros(now or utcnow()))
        sql = (
            "SELECT DISTINCT namespace FROM memory_items WHERE "
            f"{where} AND (expires_at IS NULL OR expires_at > ?) ORDER BY namespace"
        )
        return [row[0] for row in await self._s.fetch(sql, params)]  # type: ignore[arg-type]

    async def refresh(
        self, keys: Iterable[tuple[str, str]], *, now: datetime | None = None
    ) -> None:
        """Restart, at commit, the time to live of these documents (those that have one)."""
        t = self.table
        sql = self.sql(
            "refresh",
            lambda: (
                update(t)
                .where(
                    t.c.namespace == bindparam("ns"),
                    t.c.key == bindparam("key"),
                    t.c.ttl_minutes.is_not(None),
                )
                .values(
                    expires_at=bindparam("now", type_=BigInteger)
                    + type_coerce(t.c.ttl_minutes * 60_000_000, BigInteger)
                )
            ),
        )
        stamp = to_micros(now or utcnow())
        rows = [{"ns": ns, "key": key, "now": stamp} for ns, key in keys]
        if rows:
            self._s.defer(Op(sql, rows, many=True))

    async def count_expired(self, *, now: datetime | None = None) -> int:
        """Return how many documents have expired and wait for ``sweep``."""
        t = self.table
        sql = self.sql(
            "count_expired",
            lambda: select(func.count()).where(t.c.expires_at <= bindparam("now")),
        )
        return int((await self._s.fetch(sql, {"now": to_micros(now or utcnow())}))[0][0])

    async def sweep(self, *, now: datetime | None = None) -> None:
        """Delete, at commit, the documents that have expired (with their embeddings)."""
        t = self.table
        sql = self.sql("sweep", lambda: t.delete().where(t.c.expires_at <= bindparam("now")))
        self._s.defer(Op(sql, {"now": to_micros(now or utcnow())}))


class MemoryVectorRepository(Repository[MemoryVector]):
    """Embeddings of memory items, one per indexed field; deleted with their item."""

    table = schema.memory_vectors
    record_type = MemoryVector
    noun = "memory embedding"

    async def replace(self, namespace: str, key: str, vectors: Iterable[tuple[str, bytes]]) -> None:
        """Replace, at commit, an item's embeddings with ``(field, embedding)`` pairs."""
        t = self.table
        params = {"ns": _text(namespace, "namespace"), "key": _text(key, "key")}
        clear = self.sql(
            "clear",
            lambda: t.delete().where(t.c.namespace == bindparam("ns"), t.c.key == bindparam("key")),
        )
        self._s.defer(Op(clear, params))
        rows = [(namespace, key, _text(f, "field"), _bytes(v, "embedding")) for f, v in vectors]
        if rows:
            sql = self.sql("insert", lambda: insert(t), positional=True)
            self._s.defer(Op(sql, rows, many=True))

    async def under(
        self, prefix: str | None = None, *, now: datetime | None = None
    ) -> builtins.list[MemoryVector]:
        """Return the embeddings of the live items at or below ``prefix``."""
        where, params = _prefix_where(prefix)
        params.append(to_micros(now or utcnow()))
        sql = (
            "SELECT namespace, key, field, embedding FROM memory_vectors WHERE "
            f"{where} AND EXISTS (SELECT 1 FROM memory_items i WHERE i.namespace = "
            "memory_vectors.namespace AND i.key = memory_vectors.key AND "
            "(i.expires_at IS NULL OR i.expires_at > ?))"
        )
        return await self._rows(sql, params)  # type: ignore[arg-type]


class AgentSessionRepository(Repository[AgentSession]):
    """Agent frameworks' sessions, each one conversation (see ``integrations``)."""

    table = schema.agent_sessions
    record_type = AgentSession
    noun = "agent session"

    async def create(
        self,
        framework: str,
        session_id: str,
        *,
        conversation_id: str,
        app_name: str = "",
        user_id: str = "",
        state: Any = None,
        created_at: datetime | None = None,
    ) -> AgentSession:
        """Record a session of ``conversation_id``; a key already taken fails at commit."""
        now = utcnow() if created_at is None else _aware(created_at)
        values = {
            "id": new_record_id(),
            "framework": _text(framework, "framework", max_len=32, empty=False),
            "app_name": _text(app_name, "app_name", max_len=200),
            "user_id": _text(user_id, "user_id", max_len=200),
            "session_id": _text(session_id, "session_id", max_len=512, empty=False),
            "conversation_id": _text(conversation_id, "conversation_id", empty=False),
            "state": state,
            "created_at": now,
            "updated_at": now,
        }
        return self._insert(values)

    async def find(
        self, framework: str, session_id: str, *, app_name: str = "", user_id: str = ""
    ) -> AgentSession | None:
        """Return the session with this key, or ``None``."""
        t = self.table
        sql = self.sql(
            "find",
            lambda: select(t).where(
                t.c.framework == bindparam("framework"),
                t.c.app_name == bindparam("app"),
                t.c.user_id == bindparam("user"),
                t.c.session_id == bindparam("session"),
            ),
        )
        params = {"framework": framework, "app": app_name, "user": user_id, "session": session_id}
        rows = await self._rows(sql, params)
        return rows[0] if rows else None

    async def list(
        self,
        framework: str | None = None,
        *,
        app_name: str | None = None,
        user_id: str | None = None,
        limit: int | None = None,
        after: str | None = None,
    ) -> builtins.list[AgentSession]:
        """Return sessions in creation order: all, a framework's, an app's, or one user's."""
        if framework is None:
            return await super().list(limit=limit, after=after)
        t = self.table
        where = [t.c.framework == bindparam("framework"), t.c.id > bindparam("after")]
        key = "list_fw"
        if app_name is not None:
            where.append(t.c.app_name == bindparam("app"))
            key += "_app"
        if user_id is not None:
            where.append(t.c.user_id == bindparam("user"))
            key += "_user"
        sql = self.sql(
            key, lambda: select(t).where(*where).order_by(t.c.id).limit(bindparam("limit"))
        )
        params: dict[str, Any] = {
            "framework": framework,
            "after": after or "",
            "limit": _limit(limit),
        }
        if app_name is not None:
            params["app"] = app_name
        if user_id is not None:
            params["user"] = user_id
        return await self._rows(sql, params)

    async def update_state(
        self, id: str, state: Any, *, updated_at: datetime | None = None
    ) -> None:
        """Replace a session's state and mark it updated (``NotFound`` at commit)."""
        when = utcnow() if updated_at is None else _aware(updated_at)
        self._update(id, {"state": state, "updated_at": when})

    async def touch(self, id: str, *, updated_at: datetime | None = None) -> None:
        """Mark a session updated (``NotFound`` at commit)."""
        self._update(id, {"updated_at": utcnow() if updated_at is None else _aware(updated_at)})


class AgentStateRepository(Repository[AgentState]):
    """State shared between an agent framework's sessions: an app's, or a user's in an app."""

    table = schema.agent_states
    record_type = AgentState
    noun = "agent state"

    async def find(
        self, framework: str, scope: str, *, app_name: str, user_id: str = ""
    ) -> AgentState | None:
        """Return the state with this key, or ``None``."""
        t = self.table
        sql = self.sql(
            "find",
            lambda: select(t).where(
                t.c.framework == bindparam("framework"),
                t.c.scope == bindparam("scope"),
                t.c.app_name == bindparam("app"),
                t.c.user_id == bindparam("user"),
            ),
        )
        params = {"framework": framework, "scope": scope, "app": app_name, "user": user_id}
        rows = await self._rows(sql, params)
        return rows[0] if rows else None

    async def list(
        self,
        framework: str | None = None,
        *,
        scope: str | None = None,
        app_name: str | None = None,
        limit: int | None = None,
        after: str | None = None,
    ) -> builtins.list[AgentState]:
        """Return states in creation order: all, or a framework's of one scope in one app."""
        if framework is None:
            return await super().list(limit=limit, after=after)
        if scope is None or app_name is None:
            raise InvalidValue("listing a framework's states needs its scope and app_name")
        t = self.table
        sql = self.sql(
            "list_app",
            lambda: (
                select(t)
                .where(
                    t.c.framework == bindparam("framework"),
                    t.c.scope == bindparam("scope"),
                    t.c.app_name == bindparam("app"),
                    t.c.id > bindparam("after"),
                )
                .order_by(t.c.id)
                .limit(bindparam("limit"))
            ),
        )
        params = {
            "framework": framework,
            "scope": scope,
            "app": app_name,
            "after": after or "",
            "limit": _limit(limit),
        }
        return await self._rows(sql, params)

    async def put(
        self,
        framework: str,
        scope: str,
        state: Any,
        *,
        app_name: str,
        user_id: str = "",
        updated_at: datetime | None = None,
    ) -> AgentState:
        """Set the state with this key, creating it if needed (read first: use in a unit)."""
        when = utcnow() if updated_at is None else _aware(updated_at)
        found = await self.find(framework, scope, app_name=app_name, user_id=user_id)
        if found is not None:
            self._update(found.id, {"state": state, "updated_at": when})
            return AgentState(found.id, framework, scope, app_name, user_id, state, when)
        values = {
            "id": new_record_id(),
            "framework": _text(framework, "framework", max_len=32, empty=False),
            "scope": _text(scope, "scope", max_len=16, empty=False),
            "app_name": _text(app_name, "app_name", max_len=200),
            "user_id": _text(user_id, "user_id", max_len=200),
            "state": state,
            "updated_at": when,
        }
        return self._insert(values)


class Repositories:
    """The repositories of a unit of work or snapshot: ``tx.messages``, ``r.conversations``."""

    @cached_property
    def projects(self) -> ProjectRepository:
        return ProjectRepository(self)  # type: ignore[arg-type]

    @cached_property
    def conversations(self) -> ConversationRepository:
        return ConversationRepository(self)  # type: ignore[arg-type]

    @cached_property
    def messages(self) -> MessageRepository:
        return MessageRepository(self)  # type: ignore[arg-type]

    @cached_property
    def agents(self) -> AgentRepository:
        return AgentRepository(self)  # type: ignore[arg-type]

    @cached_property
    def skills(self) -> SkillRepository:
        return SkillRepository(self)  # type: ignore[arg-type]

    @cached_property
    def code_generation(self) -> CodeGenerationRepository:
        return CodeGenerationRepository(self)  # type: ignore[arg-type]

    @cached_property
    def llm_calls(self) -> LLMCallRepository:
        return LLMCallRepository(self)  # type: ignore[arg-type]

    @cached_property
    def checkpoints(self) -> CheckpointRepository:
        return CheckpointRepository(self)  # type: ignore[arg-type]

    @cached_property
    def plugins(self) -> PluginRepository:
        return PluginRepository(self)  # type: ignore[arg-type]

    @cached_property
    def sessions(self) -> SessionRepository:
        return SessionRepository(self)  # type: ignore[arg-type]

    @cached_property
    def lg_checkpoints(self) -> GraphCheckpointRepository:
        return GraphCheckpointRepository(self)  # type: ignore[arg-type]

    @cached_property
    def lg_writes(self) -> GraphWriteRepository:
        return GraphWriteRepository(self)  # type: ignore[arg-type]

    @cached_property
    def lg_blobs(self) -> GraphBlobRepository:
        return GraphBlobRepository(self)  # type: ignore[arg-type]

    @cached_property
    def memory_items(self) -> MemoryItemRepository:
        return MemoryItemRepository(self)  # type: ignore[arg-type]

    @cached_property
    def memory_vectors(self) -> MemoryVectorRepository:
        return MemoryVectorRepository(self)  # type: ignore[arg-type]

    @cached_property
    def agent_sessions(self) -> AgentSessionRepository:
        return AgentSessionRepository(self)  # type: ignore[arg-type]

    @cached_property
    def agent_states(self) -> AgentStateRepository:
        return AgentStateRepository(self)  # type: ignore[arg-type]


class _Cached:
    """``functools.cached_property`` without the lock Python 3.11 takes on each first access.

    A unit of work or snapshot is made per block, so ``tx.messages`` is a first access almost
    every time; the instance's ``__dict__`` answers later ones directly.
    """

    def __init__(self, func: Callable[[Any], Any]) -> None:
        self.func = func
        self.name = func.__name__

    def __get__(self, obj: Any, owner: type | None = None) -> Any:
        if obj is None:
            return self
        value = obj.__dict__[self.name] = self.func(obj)
        return value


for _name, _attr in list(vars(Repositories).items()):
    if isinstance(_attr, cached_property):
        setattr(Repositories, _name, _Cached(_attr.func))
