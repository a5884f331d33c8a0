"""Repositories: one generic base with the shared CRUD, and short declarations per table.

A repository hangs off a unit of work (``tx.messages``) or a read snapshot (``r.messages``).
Writes are *deferred*: they return their record at once (IDs and timestamps are made here) and
reach the database at commit, or before the unit's first read. Reads run at once.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import datetime
from functools import cached_property
from itertools import repeat
from operator import attrgetter, is_
from typing import TYPE_CHECKING, Any, ClassVar, Generic, TypeVar

from sqlalchemy import Table, bindparam, func, insert, select, update
from sqlalchemy.dialects import sqlite
from sqlalchemy.sql import ClauseElement
from sqlalchemy.types import TypeDecorator

from . import schema
from .errors import InvalidValue
from .ids import new_record_id, new_record_ids
from .pool import Op
from .records import Conversation, Message, ProjectRecord
from .schema import to_micros, utcnow

if TYPE_CHECKING:
    from .transaction import Session

__all__ = [
    "ConversationRepository",
    "MessageRepository",
    "ProjectRepository",
    "Repositories",
    "Repository",
]

R = TypeVar("R")

_DIALECT = sqlite.dialect(paramstyle="named")
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
            bind = c.type.bind_processor(_DIALECT)
            if bind is not None:
                self.binders.append((c.name, bind))
            self.loaders.append(c.type.result_processor(_DIALECT, None))
        self.any_loader = any(self.loaders)
        self.row_loaders = [
            (i, _direct(c.type, p))
            for i, (c, p) in enumerate(zip(columns, self.loaders, strict=True))
            if p is not None
        ]
        self.getter = attrgetter(*self.names)
        names = self.names
        self.row_binders = [(names.index(name), proc) for name, proc in self.binders]

    def bind(self, values: Mapping[str, Any]) -> dict[str, Any]:
        out = dict(values)
        for name, proc in self.binders:
            if name in out:
                out[name] = proc(out[name])
        return out

    def bind_record(self, record: Any) -> tuple[Any, ...]:
        """Return a whole record's stored values, in column order (for positional SQL)."""
        row = self.getter(record)
        if not self.row_binders:
            return tuple(row)
        out = list(row)
        for i, proc in self.row_binders:
            out[i] = proc(out[i])
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
            if all(map(is_, column, repeat(first))):
                columns[i] = repeat(proc(first), n)
            else:
                columns[i] = list(map(proc, column))
        return list(zip(*columns, strict=True))

    def load(self, row: tuple[Any, ...]) -> tuple[Any, ...] | list[Any]:
        """Return a stored row's Python values (a record's positional arguments)."""
        if not self.row_loaders:
            return row
        out = list(row)
        for i, proc in self.row_loaders:
            value = out[i]
            if value is not None:
                out[i] = proc(value)
        return out


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


def _direct(type_: Any, proc: Callable[[Any], Any]) -> Callable[[Any], Any]:
    """Skip SQLAlchemy's TypeDecorator wrapper when the underlying type converts nothing."""
    if (
        isinstance(type_, TypeDecorator)
        and type_.impl_instance.result_processor(_DIALECT, None) is None
    ):
        return functools.partial(type_.process_result_value, dialect=_DIALECT)
    return proc


class Repository(Generic[R]):
    """Shared CRUD for a table whose primary key is ``id`` and whose IDs sort by creation."""

    table: ClassVar[Table]
    record: ClassVar[type[Any]]
    noun: ClassVar[str]
    _codec: ClassVar[Codec]
    _make: ClassVar[Callable[..., Any]]
    """Build a record from its values in field order (see ``_constructor``)."""
    _sql: ClassVar[dict[str, str]]

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "table" in cls.__dict__:
            cls._codec = Codec(cls.table)
            cls._sql = {}
            fields = getattr(cls.record, "__dataclass_fields__", {})
            cls._make = staticmethod(_constructor(cls.record))
            if list(fields) != cls._codec.names:
                raise TypeError(f"{cls.record.__name__} fields must match {cls.table.name} columns")

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
        return self._make(*self._codec.load(row))  # type: ignore[no-any-return]

    async def _rows(self, sql: str, params: Mapping[str, Any]) -> list[R]:
        load, make = self._codec.load, self._make
        return [make(*load(row)) for row in await self._s.fetch(sql, params)]

    async def get(self, id: str) -> R:
        """Return the record with this ID, or raise ``NotFound``."""
        sql = self._sql.get("get")
        if sql is None:
            t = self.table
            sql = self.sql("get", lambda: select(t).where(t.c.id == bindparam("id")))
        rows = await self._s.fetch(sql, {"id": id})
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
        record = self.record(**values)
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
    return value


class ProjectRepository(Repository[ProjectRecord]):
    """This project's own metadata row."""

    table = schema.projects
    record = ProjectRecord
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
    record = Conversation
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
    record = Message
    noun = "message"
    _meta_binder = staticmethod(dict(Codec(schema.messages).binders)["meta"])

    async def append(
        self, conversation_id: str, *, role: str, content: str, meta: Any = None
    ) -> Message:
        """Append a message to a conversation."""
        conv = _text(conversation_id, "conversation_id", empty=False)
        record = _message(conv, role, content, meta, utcnow())
        self._s.defer(Op(self._insert_sql(), self._codec.bind_record(record)))
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
        bind_meta, make = self._meta_binder, self._make
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
            rows.append(
                (record_id, conv, role, content, None if meta is None else bind_meta(meta), stamp)
            )
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


def _message(conv: str, role: object, content: object, meta: Any, now: datetime) -> Message:
    if type(role) is not str or not 0 < len(role) <= 32:
        role = _text(role, "role", max_len=32, empty=False)
    if type(content) is not str:
        content = _text(content, "content")
    return _make_message(new_record_id(), conv, role, content, meta, now)  # type: ignore[no-any-return]


_make_message = _constructor(Message)


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
