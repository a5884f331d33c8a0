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
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from functools import cached_property
from itertools import repeat
from operator import attrgetter, is_
from typing import TYPE_CHECKING, Any, ClassVar, Generic, Literal, TypeVar

from sqlalchemy import (
    BigInteger,
    Table,
    bindparam,
    func,
    insert,
    literal_column,
    select,
    type_coerce,
    update,
)
from sqlalchemy.dialects import sqlite
from sqlalchemy.sql import ClauseElement, ColumnElement
from sqlalchemy.types import TypeDecorator

from . import schema
from .errors import InvalidValue
from .ids import new_record_id, new_record_ids
from .pool import Op
from .records import (
    Agent,
    CheckpointRecord,
    CodeArtifact,
    Conversation,
    CostTotal,
    LLMCall,
    Message,
    Plugin,
    ProjectRecord,
    SessionRecord,
    Skill,
)
from .schema import from_nanos, to_micros, to_nanos, utcnow

if TYPE_CHECKING:
    from .transaction import Session

__all__ = [
    "AgentRepository",
    "CheckpointRepository",
    "CodeGenerationRepository",
    "ConversationRepository",
    "LLMCallRepository",
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

    def __init__(self, session: Session) -> None:
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
