"""The systems compared, each with the same five operations on the same schema and data.

Every system opens its own copy of one seeded database (WAL, the ``synchronous`` asked for) and
implements one operation per workload:

- ``w1``: one-row write transaction (a ~300-byte message);
- ``w2``: point read of a message by primary key;
- ``w4``: one transaction inserting 1,000 messages;
- ``w5``: a unit of work that reads the conversation by ID, then appends a message to it;
- ``w6``: a unit of work that reads the conversation's last message with a query (``ORDER BY id
  DESC LIMIT 1``, ``messages.last(conv, 1)``), then appends a message to it.

W3 (90% reads, 10% writes) is made of ``w2`` and ``w1`` by the runner. The raw ``sqlite3``
baseline is the leanest code a user would write for the same rows: an ID and a timestamp made
in Python per row, one transaction per write, ``executemany`` of tuples for the batch.
"""

from __future__ import annotations

import asyncio
import itertools
import sqlite3
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

MESSAGE = ("The agent reviewed the diff, ran the tests and found two failures. " * 5)[:300]
BATCH = 1000

_INSERT = (
    "INSERT INTO messages (id, conversation_id, role, content, meta, created_at) "
    "VALUES (?, ?, ?, ?, ?, ?)"
)
_GET = "SELECT id, conversation_id, role, content, meta, created_at FROM messages WHERE id = ?"
_GET_CONV = "SELECT id, title, meta, created_at, updated_at FROM conversations WHERE id = ?"
_LAST = (
    "SELECT id, conversation_id, role, content, meta, created_at FROM messages "
    "WHERE conversation_id = ? ORDER BY id DESC LIMIT 1"
)

_counter = itertools.count()


def baseline_id() -> str:
    """Return a unique, increasing ID for the baselines (cheaper than the store's own)."""
    return f"z{next(_counter):025d}"


def _micros() -> int:
    return time.time_ns() // 1000


def _pragmas(conn: sqlite3.Connection, synchronous: str) -> None:
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute(f"PRAGMA synchronous = {synchronous}")
    conn.execute("PRAGMA foreign_keys = ON")
    conn.execute("PRAGMA busy_timeout = 5000")


AsyncOp = Callable[[str], Awaitable[Any]]


class RawSqlite:
    """Synchronous ``sqlite3`` in one thread: the limit for Python."""

    name = "sqlite3"
    label = "raw sqlite3 (sync, 1 thread)"

    def __init__(self, path: Path, conv: str, synchronous: str) -> None:
        self.conv = conv
        self.conn = sqlite3.connect(path, isolation_level=None, cached_statements=64)
        _pragmas(self.conn, synchronous)

    def close(self) -> None:
        self.conn.close()

    def w1(self, key: str) -> None:
        c = self.conn
        c.execute("BEGIN")
        c.execute(_INSERT, (baseline_id(), self.conv, "user", MESSAGE, None, _micros()))
        c.execute("COMMIT")

    def w2(self, key: str) -> Any:
        return self.conn.execute(_GET, (key,)).fetchone()

    def w4(self, key: str) -> None:
        conv = self.conv
        rows = [(baseline_id(), conv, "tool", MESSAGE, None, _micros()) for _ in range(BATCH)]
        c = self.conn
        c.execute("BEGIN")
        c.executemany(_INSERT, rows)
        c.execute("COMMIT")

    def w5(self, key: str) -> None:
        c = self.conn
        c.execute("BEGIN IMMEDIATE")
        row = c.execute(_GET_CONV, (self.conv,)).fetchone()
        c.execute(_INSERT, (baseline_id(), row[0], "user", MESSAGE, None, _micros()))
        c.execute("COMMIT")

    def w6(self, key: str) -> None:
        c = self.conn
        c.execute("BEGIN IMMEDIATE")
        row = c.execute(_LAST, (self.conv,)).fetchone()
        c.execute(_INSERT, (baseline_id(), row[1], "user", MESSAGE, None, _micros()))
        c.execute("COMMIT")


class Demiarch:
    """demiarch-store: ``project.transaction()`` and ``project.read()``."""

    name = "demiarch"
    label = "demiarch-store"

    def __init__(self, path: Path, conv: str, synchronous: str) -> None:
        self.path, self.conv, self.synchronous = path, conv, synchronous

    async def open(self) -> None:
        from demiarch_store import AsyncProjectStore, StoreConfig

        config = StoreConfig(projects_dir=self.path.parent, synchronous=self.synchronous)  # type: ignore[arg-type]
        self.project = await AsyncProjectStore(self.path, config=config, create=False).open()
        self.rows = [{"role": "tool", "content": MESSAGE}] * BATCH

    async def close(self) -> None:
        await self.project.close()

    async def w1(self, key: str) -> None:
        async with self.project.transaction() as tx:
            await tx.messages.append(self.conv, role="user", content=MESSAGE)

    async def w2(self, key: str) -> Any:
        async with self.project.read() as r:
            return await r.messages.get(key)

    async def w4(self, key: str) -> None:
        async with self.project.transaction() as tx:
            await tx.messages.append_many(self.conv, self.rows)

    async def w5(self, key: str) -> None:
        async with self.project.transaction() as tx:
            conv = await tx.conversations.get(self.conv)
            await tx.messages.append(conv.id, role="user", content=MESSAGE)

    async def w6(self, key: str) -> None:
        async with self.project.transaction() as tx:
            (last,) = await tx.messages.last(self.conv, 1)
            await tx.messages.append(last.conversation_id, role="user", content=MESSAGE)


class SharedAiosqlite:
    """One aiosqlite connection behind an ``asyncio.Lock`` (LangGraph's AsyncSqliteSaver).

    Uses aiosqlite's documented idioms: ``async with db.execute(...) as cursor`` to read,
    ``await db.execute(...)`` then ``await db.commit()`` to write (each await is a thread hop).
    """

    name = "aiosqlite"
    label = "aiosqlite, 1 shared conn + lock"

    def __init__(self, path: Path, conv: str, synchronous: str) -> None:
        self.path, self.conv, self.synchronous = path, conv, synchronous

    async def open(self) -> None:
        import aiosqlite

        self.db = await aiosqlite.connect(self.path)
        for pragma in (
            "journal_mode = WAL",
            f"synchronous = {self.synchronous}",
            "foreign_keys = ON",
        ):
            await self.db.execute(f"PRAGMA {pragma}")
        self.lock = asyncio.Lock()

    async def close(self) -> None:
        await self.db.close()

    async def w1(self, key: str) -> None:
        async with self.lock:
            await self.db.execute(
                _INSERT, (baseline_id(), self.conv, "user", MESSAGE, None, _micros())
            )
            await self.db.commit()

    async def w2(self, key: str) -> Any:
        async with self.lock, self.db.execute(_GET, (key,)) as cursor:
            return await cursor.fetchone()

    async def w4(self, key: str) -> None:
        now, conv = _micros(), self.conv
        rows = [(baseline_id(), conv, "tool", MESSAGE, None, now) for _ in range(BATCH)]
        async with self.lock:
            await self.db.executemany(_INSERT, rows)
            await self.db.commit()

    async def w5(self, key: str) -> None:
        async with self.lock:
            async with self.db.execute(_GET_CONV, (self.conv,)) as cursor:
                row = await cursor.fetchone()
            assert row is not None
            await self.db.execute(
                _INSERT, (baseline_id(), row[0], "user", MESSAGE, None, _micros())
            )
            await self.db.commit()

    async def w6(self, key: str) -> None:
        async with self.lock:
            async with self.db.execute(_LAST, (self.conv,)) as cursor:
                row = await cursor.fetchone()
            assert row is not None
            await self.db.execute(
                _INSERT, (baseline_id(), row[1], "user", MESSAGE, None, _micros())
            )
            await self.db.commit()


class NaiveSqlAlchemy:
    """A SQLAlchemy async engine on aiosqlite, default pool, Core statements."""

    name = "sqlalchemy"
    label = "SQLAlchemy async engine (aiosqlite)"

    def __init__(self, path: Path, conv: str, synchronous: str) -> None:
        self.path, self.conv, self.synchronous = path, conv, synchronous

    async def open(self) -> None:
        from sqlalchemy import event, select
        from sqlalchemy.ext.asyncio import create_async_engine

        from demiarch_store.schema import conversations, messages

        self.engine = create_async_engine(f"sqlite+aiosqlite:///{self.path}")
        synchronous = self.synchronous

        @event.listens_for(self.engine.sync_engine, "connect")
        def _connect(dbapi_conn: Any, _record: Any) -> None:
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode = WAL")
            cur.execute(f"PRAGMA synchronous = {synchronous}")
            cur.execute("PRAGMA foreign_keys = ON")
            cur.close()

        self.insert = messages.insert()
        self.messages, self.conversations, self.select = messages, conversations, select

    async def close(self) -> None:
        await self.engine.dispose()

    def _row(self, role: str) -> dict[str, Any]:
        return {
            "id": baseline_id(),
            "conversation_id": self.conv,
            "role": role,
            "content": MESSAGE,
            "meta": None,
            "created_at": datetime.now(UTC),
        }

    async def w1(self, key: str) -> None:
        async with self.engine.begin() as conn:
            await conn.execute(self.insert, self._row("user"))

    async def w2(self, key: str) -> Any:
        m = self.messages
        async with self.engine.connect() as conn:
            return (await conn.execute(self.select(m).where(m.c.id == key))).first()

    async def w4(self, key: str) -> None:
        rows = [self._row("tool") for _ in range(BATCH)]
        async with self.engine.begin() as conn:
            await conn.execute(self.insert, rows)

    async def w5(self, key: str) -> None:
        c = self.conversations
        async with self.engine.begin() as conn:
            row = (await conn.execute(self.select(c).where(c.c.id == self.conv))).first()
            assert row is not None
            await conn.execute(self.insert, self._row("user"))

    async def w6(self, key: str) -> None:
        m = self.messages
        last = (
            self.select(m)
            .where(m.c.conversation_id == self.conv)
            .order_by(m.c.id.desc())
            .limit(1)
        )
        async with self.engine.begin() as conn:
            row = (await conn.execute(last)).first()
            assert row is not None
            await conn.execute(self.insert, self._row("user"))


ASYNC_SYSTEMS: list[type[Demiarch] | type[SharedAiosqlite] | type[NaiveSqlAlchemy]] = [
    Demiarch,
    SharedAiosqlite,
    NaiveSqlAlchemy,
]
