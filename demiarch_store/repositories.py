"""Repositories: one generic base with the shared CRUD, and short declarations per table.

A repository hangs off a unit of work (``tx.messages``) or a read snapshot (``r.messages``).
Writes are *deferred*: they return their record at once (IDs and timestamps are made here) and
reach the database at commit, or before the unit's first read. Reads run at once.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from functools import cached_property
from typing import TYPE_CHECKING, Any, ClassVar, Generic, TypeVar

from sqlalchemy import JSON, Table, bindparam, func, insert, select, update
from sqlalchemy.dialects import sqlite
from sqlalchemy.sql import ClauseElement

from . import schema
from .errors import InvalidValue
from .ids import new_record_id
from .pool import Op
from .records import Conversation, Message, ProjectRecord
from .schema import utcnow

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


def compile_sql(stmt: ClauseElement) -> str:
    """Compile a Core statement once into SQL with named parameters.

    Parameters the statement fixes itself (such as SQLite's ``OFFSET 0`` after a ``LIMIT``) are
    rendered inline, so a caller supplies exactly the ``bindparam`` names it declared.
    """
    compiled = stmt.compile(dialect=_DIALECT)
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
            load: Callable[[Any], Any] | None = c.type.result_processor(_DIALECT, None)
            if isinstance(c.type, JSON) and bind is not None and load is not None:
                bind, load = _json_bind(bind), _json_load(load)
            if bind is not None:
                self.binders.append((c.name, bind))
            self.loaders.append(load)
        self.any_loader = any(self.loaders)

    def bind(self, values: Mapping[str, Any]) -> dict[str, Any]:
        out = dict(values)
        for name, proc in self.binders:
            if name in out:
                out[name] = proc(out[name])
        return out

    def load(self, row: tuple[Any, ...]) -> tuple[Any, ...]:
        if not self.any_loader:
            return row
        return tuple(
            v if p is None or v is None else p(v) for p, v in zip(self.loaders, row, strict=True)
        )


def _json_bind(bind: Callable[[Any], Any]) -> Callable[[Any], Any]:
    def process(value: Any) -> Any:
        if isinstance(value, int) and not isinstance(value, bool) and not _INT64 <= value < -_INT64:
            raise InvalidValue(
                "a JSON number at the top level must fit in 64 bits",
                hint="wrap it in a list or an object, or store it as a string",
            )
        return bind(value)

    return process


def _json_load(load: Callable[[Any], Any]) -> Callable[[Any], Any]:
    def process(value: Any) -> Any:
        # SQLite gives a column declared JSON NUMERIC affinity: the JSON text of a top-level
        # number is stored as that number, and comes back already decoded.
        if isinstance(value, int | float):
            return value
        return load(value)

    return process


_INT64 = -(2**63)


class Repository(Generic[R]):
    """Shared CRUD for a table whose primary key is ``id`` and whose IDs sort by creation."""

    table: ClassVar[Table]
    record: ClassVar[type[Any]]
    noun: ClassVar[str]
    _codec: ClassVar[Codec]
    _sql: ClassVar[dict[str, str]]

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "table" in cls.__dict__:
            cls._codec = Codec(cls.table)
            cls._sql = {}
            fields = getattr(cls.record, "__dataclass_fields__", {})
            if list(fields) != cls._codec.names:
                raise TypeError(f"{cls.record.__name__} fields must match {cls.table.name} columns")

    def __init__(self, session: Session) -> None:
        self._s = session

    @classmethod
    def sql(cls, name: str, build: Callable[[], ClauseElement]) -> str:
        """Return the cached SQL for ``name``, compiling ``build()`` the first time."""
        try:
            return cls._sql[name]
        except KeyError:
            text = cls._sql[name] = compile_sql(build())
            return text

    def _row(self, row: tuple[Any, ...]) -> R:
        return self.record(*self._codec.load(row))  # type: ignore[no-any-return]

    async def _rows(self, sql: str, params: Mapping[str, Any]) -> list[R]:
        load, record = self._codec.load, self.record
        return [record(*load(row)) for row in await self._s.fetch(sql, params)]

    async def get(self, id: str) -> R:
        """Return the record with this ID, or raise ``NotFound``."""
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
        sql = self.sql("insert", lambda: insert(self.table))
        self._s.defer(Op(sql, self._codec.bind(values)))
        return self.record(**values)  # type: ignore[no-any-return]

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

    async def append(
        self, conversation_id: str, *, role: str, content: str, meta: Any = None
    ) -> Message:
        """Append a message to a conversation."""
        return self._insert(_message(conversation_id, role, content, meta))

    async def append_many(
        self, conversation_id: str, items: Iterable[Mapping[str, Any]]
    ) -> list[Message]:
        """Append many messages (mappings with ``role``, ``content`` and optional ``meta``)."""
        rows = []
        for item in items:
            if not isinstance(item, Mapping) or not {"role", "content"} <= item.keys():
                raise InvalidValue("each message needs a 'role' and a 'content'")
            rows.append(_message(conversation_id, item["role"], item["content"], item.get("meta")))
        if rows:
            sql = self.sql("insert", lambda: insert(self.table))
            bind = self._codec.bind
            self._s.defer(Op(sql, [bind(r) for r in rows], many=True))
        return [Message(**r) for r in rows]

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


def _message(conversation_id: str, role: object, content: object, meta: Any) -> dict[str, Any]:
    return {
        "id": new_record_id(),
        "conversation_id": _text(conversation_id, "conversation_id", empty=False),
        "role": _text(role, "role", max_len=32, empty=False),
        "content": _text(content, "content"),
        "meta": meta,
        "created_at": utcnow(),
    }


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
