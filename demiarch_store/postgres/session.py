"""Units of work and read snapshots on PostgreSQL: the same repositories, the same API.

A unit that only writes sends its statements at the end, in one transaction, retried whole on a
serialization failure or deadlock (``PgEngine.run_unit``). A unit that reads first takes a
connection, begins (``READ COMMITTED``) and locks its project's row of ``projects``
(``FOR UPDATE``), so units that read then write serialise per project as ``BEGIN IMMEDIATE``
makes them on SQLite; its writes so far are sent before each query, so it reads its own writes.
A snapshot is one ``REPEATABLE READ READ ONLY`` transaction. Every one of them is bound to its
project (``ddl.SCOPE``): row-level security shows it that project's rows only. A cancelled unit
raises only if it was not applied (``engine.settle``).
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from time import perf_counter
from types import TracebackType
from typing import TYPE_CHECKING, Any, Final

import psycopg

from ..config import StoreConfig
from ..engine import Op, settle
from ..errors import NotFound, OutcomeUnknown, StoreError
from ..transaction import Snapshot, Transaction

if TYPE_CHECKING:
    from .engine import PgEngine

__all__ = ["PgHandle", "PgSnapshot", "PgTransaction", "pg_sql", "run_ops"]

_NAMED = re.compile(r"(?<![:\w]):([A-Za-z_]\w*)|(\?)|(%)")
_SQLITE_JSON = re.compile(r"\bjson_(?:each|extract|type)\(")
_LIMIT = re.compile(r"\bLIMIT (:[A-Za-z_]\w*|\?)")
_CONFLICT = re.compile(r"\bON CONFLICT \(")
_SQL: dict[str, str] = {}
_PLAIN_INSERT = re.compile(r'INSERT INTO [\w"]+ \([^()]*\) VALUES (\((?:%s, )*%s\))')
_MULTI_ROW_PARAMS: Final = 6000
"""Parameters one multi-row INSERT takes at most (the protocol's limit is 65,535)."""
_MULTI: dict[tuple[str, int, int], bytes] = {}


def pg_sql(sql: str) -> str:
    """Return the repositories' SQL (SQLite's ``:name`` and ``?`` placeholders) for psycopg."""
    try:
        return _SQL[sql]
    except KeyError:
        pass

    def place(m: re.Match[str]) -> str:
        if m[1] is not None:
            return f"%({m[1]})s"
        return "%s" if m[2] is not None else "%%"

    # SQLite's LIMIT -1 is "no limit" (the repositories' default); PostgreSQL's is LIMIT NULL.
    text = _LIMIT.sub(r"LIMIT NULLIF(\1, -1)", sql)
    # The tables are shared: every unique key leads with project_id (``ddl``).
    text = _CONFLICT.sub("ON CONFLICT (project_id, ", text)
    if _SQLITE_JSON.search(text):
        # The repositories spell their JSON queries per engine (``Runner.dialect``).
        raise StoreError(
            "a query in SQLite's JSON dialect reached PostgreSQL",
            hint="this is a bug in demiarch-store: please report it",
        )
    text = _SQL[sql] = _NAMED.sub(place, text)
    return text


def _multi_row(text: str, rows: int, width: int) -> bytes:
    """Return ``text``, a one-row ``INSERT ... VALUES (%s, ...)``, for ``rows`` rows.

    With PostgreSQL's own ``$n`` placeholders, for a ``RawCursor``: psycopg parses (and caches)
    ``%s`` placeholders only in statements of up to 50 parameters.
    """
    try:
        return _MULTI[text, rows, width]
    except KeyError:
        pass
    m = _PLAIN_INSERT.fullmatch(text)
    assert m is not None
    if len(_MULTI) >= 256:  # (batches of many sizes: the texts are cheap to make again)
        _MULTI.clear()
    values = ", ".join(
        "(" + ", ".join(f"${n}" for n in range(r * width + 1, (r + 1) * width + 1)) + ")"
        for r in range(rows)
    )
    out = _MULTI[text, rows, width] = (text[: m.start(1)] + values).encode()
    return out


async def run_ops(cur: psycopg.AsyncCursor[Any], ops: list[Op], handle: PgHandle) -> None:
    """Run a unit's statements in order on an open transaction.

    A batch of a plain ``INSERT`` (no ``ON CONFLICT``, positional parameters) goes as a few
    multi-row statements of up to ``_MULTI_ROW_PARAMS`` parameters each: the same rows, for a
    fraction of the client's and the server's work per row of ``executemany``.
    """
    for sql, params, many, missing in ops:
        text = pg_sql(sql)
        if many:
            if (
                missing is None
                and isinstance(params, list | tuple)
                and len(params) > 1
                and isinstance(params[0], tuple | list)
                and _PLAIN_INSERT.fullmatch(text)
            ):
                width = len(params[0])
                step = max(1, _MULTI_ROW_PARAMS // max(1, width))
                raw = psycopg.AsyncRawCursor(cur.connection)
                for start in range(0, len(params), step):
                    chunk = params[start : start + step]
                    flat = [value for row in chunk for value in row]
                    await raw.execute(_multi_row(text, len(chunk), width), flat)
            else:
                await cur.executemany(text, params)
        else:
            await cur.execute(text, params)
        if missing is not None and cur.rowcount == 0:
            raise NotFound(missing, project=handle.project, path=None)


@dataclass
class PgHandle:
    """What a unit of work or snapshot of one project needs: the engine, the project's ID."""

    engine: PgEngine
    project: str
    config: StoreConfig
    path: Path | None = None
    closed: bool = False

    def check_open(self) -> None:
        if self.closed or self.engine.closed:
            raise StoreError(
                "the project is closed",
                project=self.project,
                hint="open it again with Store.open_project()",
            )

    def enter(self) -> None:
        self.check_open()

    def leave(self) -> None:
        pass


class PgTransaction(Transaction):
    """One unit of work on PostgreSQL (see the module's docstring)."""

    _pool: PgHandle  # type: ignore[assignment]
    dialect = "postgresql"

    def __init__(self, handle: PgHandle) -> None:
        self._pool = handle
        self._ops: list[Op] = []
        self._flushed = 0
        self._held = False
        self._ended = True
        self._failed: BaseException | None = None
        self._depth = 0
        self._t0 = 0.0
        self._conn: psycopg.AsyncConnection[Any] | None = None

    async def __aenter__(self) -> PgTransaction:
        self._pool.check_open()
        self._t0 = perf_counter()
        self._ended = False
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._ended = True
        handle = self._pool
        engine = handle.engine
        conn, self._conn = self._conn, None
        if conn is None:
            if exc is None and self._ops:
                await engine.run_unit(handle, self._ops)
            elif exc is not None:
                engine.counters.rollbacks += 1
            return
        if exc is not None or self._failed is not None:
            engine.counters.rollbacks += 1
            await engine.give_back(conn, rollback=True)
            return
        # Its own task: a cancellation now waits for the outcome (engine.settle), so the
        # caller's CancelledError always means "not applied".
        await settle(asyncio.ensure_future(self._finish(conn)), cancels=0)

    async def _finish(self, conn: psycopg.AsyncConnection[Any]) -> None:
        """Send the unit's last writes, commit, and give the connection back."""
        handle = self._pool
        engine = handle.engine
        ok = False
        try:
            try:
                async with conn.cursor() as cur:
                    await run_ops(cur, self._ops[self._flushed :], handle)
            except BaseException as err:
                engine.fail(err, handle.project, "running a transaction")
            try:
                await conn.commit()
            except psycopg.OperationalError as err:
                raise OutcomeUnknown(
                    "the connection to the server was lost during COMMIT: the unit of work "
                    "may or may not have been applied",
                    project=handle.project,
                    hint="read the records to find out before running the unit again",
                ) from err
            except BaseException as err:
                engine.fail(err, handle.project, "committing")
            engine.counters.commits += 1
            ok = True
        finally:
            await engine.give_back(conn, rollback=not ok)

    async def _interact(
        self,
        sql: str | None,
        params: Mapping[str, Any] | None,
        *,
        here: bool = False,
        bounded: bool = True,
    ) -> Any:
        self._check()
        handle = self._pool
        engine = handle.engine
        try:
            if self._conn is None:
                self._conn = await engine.begin_locked(handle)
                self._held = True
            ops = self._ops[self._flushed :]
            self._flushed = len(self._ops)
            async with self._conn.cursor() as cur:
                await run_ops(cur, ops, handle)
                if sql is None:
                    return None
                await cur.execute(pg_sql(sql), params)
                return await cur.fetchall()
        except asyncio.CancelledError:
            self._failed = asyncio.CancelledError()
            raise
        except BaseException as exc:
            err = engine.translate(exc, handle.project, "running a transaction")
            self._failed = err
            if err is exc:
                raise
            raise err from exc


class PgSnapshot(Snapshot):
    """A read-only, consistent view of one project: one ``REPEATABLE READ`` transaction."""

    _pool: PgHandle  # type: ignore[assignment]
    dialect = "postgresql"

    def __init__(self, handle: PgHandle) -> None:
        self._pool = handle
        self._worker = None
        self._entered = False
        self._conn: psycopg.AsyncConnection[Any] | None = None

    async def __aenter__(self) -> PgSnapshot:
        handle = self._pool
        handle.check_open()
        self._conn = await handle.engine.begin_snapshot(handle)
        self._entered = True
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            try:
                # Read only: COMMIT ends it as ROLLBACK would, and connection.commit() sends it
                # without a cursor (rollback() would drop the prepared statements).
                await conn.commit()
            except psycopg.Error:
                pass  # rolled back by give_back, or a broken connection the pool drops
            finally:
                await self._pool.engine.give_back(conn, rollback=True)

    async def fetch_by_id(self, sql: str, id: str, select_in: str) -> list[Any]:
        return await self.fetch(sql, {"id": id})

    async def fetch(self, sql: str, params: Mapping[str, Any]) -> list[Any]:
        conn = self._conn
        handle = self._pool
        if conn is None:
            if not self._entered:
                self.defer(Op("", ()))  # raises: used without `async with`
            raise StoreError(
                "the read snapshot has ended",
                project=handle.project,
                hint="use the repositories only inside the `async with` block",
            )
        try:
            async with conn.cursor() as cur:
                await cur.execute(pg_sql(sql), params)
                return await cur.fetchall()
        except asyncio.CancelledError:
            raise
        except BaseException as exc:
            handle.engine.fail(exc, handle.project, "reading")
