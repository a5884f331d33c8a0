"""The connection thread: one SQLite connection owned by one thread, running jobs in order."""

from __future__ import annotations

import asyncio
import functools
import logging
import queue
import sqlite3
import threading
from collections.abc import Callable, Mapping
from typing import Any, Final, TypeVar

from ..engine import Op
from ..errors import StoreClosed

log = logging.getLogger("demiarch_store")

T = TypeVar("T")


Job = Callable[..., Any]


_STOP: Final = object()


_Item = tuple[Any, Any, tuple[Any, ...]]
"""(future, callback or None; the job; its arguments)"""


_POINT_RUN_MAX: Final = 256
"""Point reads merged into one query at most (SQLite allows 32,766 parameters a statement)."""


_HERE_ROWS: Final = 16


_HERE_TEXT: Final = 64 * 1024
"""The largest unit ``Pool.commit_here`` takes: rows inserted, and characters of their text."""


class Worker:
    """One SQLite connection owned by one thread; jobs run in submission order."""

    def __init__(self, loop: asyncio.AbstractEventLoop, name: str) -> None:
        self._loop = loop
        self._queue: queue.SimpleQueue[list[_Item]] = queue.SimpleQueue()
        self._pending: list[_Item] = []
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name=name)
        self._conn: sqlite3.Connection | None = None
        self.completed = 0
        """Jobs finished so far; written by the thread before it reports them."""
        self.submitted = 0
        """Jobs queued so far; written by the event loop."""
        # Read epoch of a reader (see Pool.acquire_reader); unused on the writer.
        self.holders = 0
        self.epoch_gen = -1
        self.epoch_wal: bytes | None = None
        self.begun = False
        self.epoch_serial = 0
        self.established = -1
        """``epoch_serial`` once a read of that epoch succeeded: its snapshot is taken."""
        self.restore: Job | None = None
        """Set on the loop after it changed the connection's settings (``Pool.commit_here``):
        the thread runs ``restore(conn)`` before its next batch of jobs."""
        self._thread.start()

    def submit(self, fn: Job, *args: Any) -> asyncio.Future[Any]:
        """Queue ``fn(conn, *args)`` and return a future for its result."""
        if self._stopping:
            raise StoreClosed("the connection is closed")
        fut = self._loop.create_future()
        self._enqueue((fut, fn, args))
        return fut

    def call(self, fn: Job, done: Callable[[Any, BaseException | None], None], *args: Any) -> None:
        """Queue ``fn(conn, *args)``; call ``done(result, error)`` on the loop when it ends.

        Saves a future and a turn of the event loop against ``submit`` + ``add_done_callback``.
        """
        if self._stopping:
            raise StoreClosed("the connection is closed")
        self._enqueue((done, fn, args))

    def post(self, fn: Job, *args: Any) -> None:
        """Queue ``fn(conn, *args)`` without waiting for it (its errors are logged)."""
        if not self._stopping:
            self._enqueue((None, fn, args))

    def _enqueue(self, item: _Item) -> None:
        # Jobs queued during one turn of the event loop reach the thread as one batch: one
        # wake-up of the thread (and one hand-over of the GIL) for all of them.
        self.submitted += 1
        pending = self._pending
        pending.append(item)
        if len(pending) == 1:
            self._loop.call_soon(self._flush)

    def _flush(self) -> None:
        batch, self._pending = self._pending, []
        if batch:
            self._queue.put(batch)

    async def stop(self) -> None:
        """Close the connection after every queued job, and join the thread."""
        if self._stopping:
            return
        if not self._thread.is_alive():  # it died (a bug): nothing would answer the stop
            self._stopping = True
            return
        fut = self._loop.create_future()
        self._enqueue((fut, _STOP, ()))
        self._stopping = True
        try:
            await asyncio.shield(fut)
        finally:
            # The thread returns right after resolving the future, so this join is short.
            self._thread.join(timeout=5.0)

    def idle_connection(self) -> sqlite3.Connection | None:
        """The connection, for the event loop to use now, if the thread has no job left.

        Every job queued has finished (the thread counts one only once it is done with the
        connection), and nothing new can reach the thread while the caller runs on the loop.
        """
        if self._pending or self.submitted != self.completed or self._stopping:
            return None
        return self._conn

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def _run(self) -> None:
        get, get_nowait = self._queue.get, self._queue.get_nowait
        running = True
        while running:
            batch = get()
            while True:
                try:
                    batch += get_nowait()
                except queue.Empty:
                    break
            if self.restore is not None:
                fix, self.restore = self.restore, None
                if self._conn is not None:
                    try:
                        fix(self._conn)
                    except sqlite3.Error as exc:  # pragmas; nothing to undo if one fails
                        log.warning("restoring the settings of a connection failed: %r", exc)
            done: list[tuple[asyncio.Future[Any], Any, BaseException | None]] = []
            i, n = 0, len(batch)
            while i < n:
                fut, fn, args = batch[i]
                if fn is point_read_job and running and self._conn is not None:
                    end = _point_run(batch, i)
                    if end - i > 1:
                        self._point_reads(batch[i:end], done)
                        i = end
                        continue
                i += 1
                if fn is _STOP or not running:
                    running = False
                    err: BaseException | None = None
                    if self._conn is not None and fn is _STOP:
                        try:
                            self._conn.close()
                        except sqlite3.Error as exc:  # report, never swallow
                            err = exc
                        self._conn = None
                    if fut is not None:
                        closed = StoreClosed("the connection is closed")
                        done.append((fut, None, err if fn is _STOP else closed))
                    continue
                try:
                    if self._conn is None:
                        # The first job opens the connection: it returns (conn, extra).
                        result = fn(*args)
                        self._conn = result[0]
                    else:
                        result = fn(self._conn, *args)
                except BaseException as exc:  # noqa: B036 - delivered to the awaiting task
                    self.completed += 1
                    if fut is None:
                        log.warning("background job %s failed: %r", fn.__name__, exc)
                    else:
                        done.append((fut, None, exc))
                else:
                    self.completed += 1
                    if fut is not None:
                        done.append((fut, result, None))
            if done:
                try:
                    self._loop.call_soon_threadsafe(_deliver, done)
                except RuntimeError:
                    # The event loop is closed: nobody is waiting any more.
                    pass

    def _point_reads(self, items: list[_Item], done: list[Any]) -> None:
        """Run consecutive point reads of one table as one ``WHERE id IN (...)`` query.

        They are in one read transaction (the epoch's; none of them begins it), so one query
        returns exactly what each would. If it fails, each read runs on its own and meets the
        error (or not) alone.
        """
        conn = self._conn
        assert conn is not None
        ids = list(dict.fromkeys(args[2]["id"] for _, _, args in items))
        try:
            rows = conn.execute(items[0][2][3] + _in_list(len(ids)), ids).fetchall()
        except Exception:
            for fut, fn, args in items:
                try:
                    result = fn(conn, *args)
                except BaseException as exc:  # noqa: B036 - delivered to the awaiting task
                    done.append((fut, None, exc))
                else:
                    done.append((fut, result, None))
                self.completed += 1
            return
        by_id = {row[0]: row for row in rows}
        for fut, _, args in items:
            row = by_id.get(args[2]["id"])
            done.append((fut, [] if row is None else [row], None))
        self.completed += len(items)


def point_read_job(
    conn: sqlite3.Connection, begin: bool, sql: str, params: Mapping[str, Any], select_in: str
) -> list[Any]:
    """Read one row by primary key (``params["id"]``, a ``str``): ``read_job``.

    When several of these for one table reach a reader together, the worker runs them as one
    query, ``select_in`` followed by ``(?, ?, ...)`` (see ``Worker._point_reads``); the rows
    it returns start with their ``id``.
    """
    return read_job(conn, begin, sql, params)


def _point_run(batch: list[_Item], start: int) -> int:
    """Return the end of the run of point reads at ``start`` that may share one query."""
    select_in = batch[start][2][3]
    end = start
    for fut, fn, args in batch[start : start + _POINT_RUN_MAX]:
        if (
            fn is not point_read_job
            or fut is None
            or args[0]  # begins the epoch's transaction: runs alone, first
            or args[3] != select_in
            or type(args[2]["id"]) is not str
        ):
            break
        end += 1
    return end


def small_unit(ops: list[Op]) -> bool:
    """Whether a unit only inserts, and few rows with little text (see ``Pool.commit_here``)."""
    if not ops:
        return True
    if len(ops) == 1 and not ops[0].many:  # one row (an append, a record): the common case
        sql, params = ops[0].sql, ops[0].params
        if not sql.startswith("INSERT INTO ") or isinstance(params, dict):
            return small_unit_slow(ops)
        text = 0
        for value in params:
            if type(value) is str or type(value) is bytes:
                text += len(value)
        return text <= _HERE_TEXT
    return small_unit_slow(ops)


def small_unit_slow(ops: list[Op]) -> bool:
    """``small_unit`` for any statements."""
    if len(ops) > _HERE_ROWS:
        return False
    rows = text = 0
    for op in ops:
        if not op.sql.startswith("INSERT INTO "):
            return False
        batch = op.params if op.many else (op.params,)
        rows += len(batch)
        if rows > _HERE_ROWS:
            return False
        for params in batch:
            for value in params.values() if isinstance(params, dict) else params:
                if type(value) is str or type(value) is bytes:
                    text += len(value)
    return text <= _HERE_TEXT


@functools.cache
def _in_list(n: int) -> str:
    return "(" + ", ".join("?" * n) + ")"


def _deliver(done: list[tuple[Any, Any, BaseException | None]]) -> None:
    for fut, result, exc in done:
        if not isinstance(fut, asyncio.Future):
            try:
                fut(result, exc)  # a callback (Worker.call)
            except Exception as err:  # the other deliveries must go on
                asyncio.get_running_loop().call_exception_handler(
                    {"message": "a job's callback failed", "exception": err}
                )
            continue
        if fut.done():
            continue
        if exc is None:
            fut.set_result(result)
        else:
            fut.set_exception(exc)


def read_job(conn: sqlite3.Connection, begin: bool, sql: str, params: Any) -> list[Any]:
    """Run one query on a reader, starting its snapshot on the first one."""
    if begin:
        conn.execute("BEGIN")
    return conn.execute(sql, params).fetchall()
