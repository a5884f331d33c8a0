"""Connections, pragmas, the bounded pool, group commit and the busy retry.

Each connection lives on its own thread and runs *jobs*: plain functions of the connection that
do a whole piece of work (a unit of work, a read) in one hop. A thread drains every job queued
for it before it reports back, so a burst of work costs one wake-up of the event loop.

Writes go through one writer connection. Units of work that only write are *grouped*: every unit
queued while the writer is busy goes into the next SQLite transaction, each inside its own
savepoint, so one failing unit does not sink the others, and each caller is acknowledged only
after the shared COMMIT (group commit: one fsync for many units). A unit that reads inside its
transaction holds the writer for itself until it ends.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import queue
import random
import sqlite3
import threading
import time
import urllib.parse
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, NamedTuple, TypeVar

from .config import StoreConfig
from .errors import DatabaseBusy, PoolTimeout, StoreClosed, StoreError, translate
from .health import (
    UPKEEP_COMMITS,
    UPKEEP_SECONDS,
    Checkpoint,
    Reservoir,
    idle_checkpoint,
    optimize_on_close,
)

__all__ = ["Op", "Pool", "RowMissing", "Worker"]

log = logging.getLogger("demiarch_store")

T = TypeVar("T")
Job = Callable[..., Any]

_STOP: Final = object()
_BUSY_CODES: Final = {sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED}
_BACKOFF_BASE: Final = 0.002
_BACKOFF_CAP: Final = 0.25
_WRITER_BUSY_MS: Final = 50


class RowMissing(Exception):
    """Raised on a connection thread when an UPDATE or DELETE matched no row."""


class Op(NamedTuple):
    """One statement of a unit of work, run later on the writer thread."""

    sql: str
    params: Any
    many: bool = False
    missing: str | None = None
    """If set, the statement must change a row; the text says what was missing."""


def run_ops(conn: sqlite3.Connection, ops: Sequence[Op]) -> None:
    """Run the statements of a unit of work, in order."""
    for sql, params, many, missing in ops:
        cur = conn.executemany(sql, params) if many else conn.execute(sql, params)
        if missing is not None and cur.rowcount == 0:
            raise RowMissing(missing)


def _is_busy(exc: sqlite3.Error) -> bool:
    code = getattr(exc, "sqlite_errorcode", 0)
    return isinstance(code, int) and (code & 0xFF) in _BUSY_CODES


def _rollback_if_active(conn: sqlite3.Connection) -> None:
    if conn.in_transaction:
        conn.execute("ROLLBACK")


@dataclass
class _Counters:
    commits: int = 0
    rollbacks: int = 0
    busy_retries: int = 0
    busy_errors: int = 0
    pool_timeouts: int = 0
    groups: int = 0
    idle_checkpoints: int = 0
    last_checkpoint: Checkpoint | None = None
    pool_wait: Reservoir = field(default_factory=Reservoir)
    transaction_seconds: Reservoir = field(default_factory=Reservoir)


class Worker:
    """One SQLite connection owned by one thread; jobs run in submission order."""

    def __init__(self, loop: asyncio.AbstractEventLoop, name: str) -> None:
        self._loop = loop
        self._queue: queue.SimpleQueue[tuple[asyncio.Future[Any] | None, Any, tuple[Any, ...]]]
        self._queue = queue.SimpleQueue()
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name=name)
        self._conn: sqlite3.Connection | None = None
        self._thread.start()

    def submit(self, fn: Job, *args: Any) -> asyncio.Future[Any]:
        """Queue ``fn(conn, *args)`` and return a future for its result."""
        if self._stopping:
            raise StoreClosed("the connection is closed")
        fut = self._loop.create_future()
        self._queue.put((fut, fn, args))
        return fut

    def post(self, fn: Job, *args: Any) -> None:
        """Queue ``fn(conn, *args)`` without waiting for it (its errors are logged)."""
        if not self._stopping:
            self._queue.put((None, fn, args))

    async def stop(self) -> None:
        """Close the connection after every queued job, and join the thread."""
        if self._stopping:
            return
        fut = self._loop.create_future()
        self._queue.put((fut, _STOP, ()))
        self._stopping = True
        try:
            await asyncio.shield(fut)
        finally:
            # The thread returns right after resolving the future, so this join is short.
            self._thread.join(timeout=5.0)

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def _run(self) -> None:
        get, get_nowait = self._queue.get, self._queue.get_nowait
        running = True
        while running:
            batch = [get()]
            while True:
                try:
                    batch.append(get_nowait())
                except queue.Empty:
                    break
            done: list[tuple[asyncio.Future[Any], Any, BaseException | None]] = []
            for fut, fn, args in batch:
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
                    if fut is None:
                        log.warning("background job %s failed: %r", fn.__name__, exc)
                    else:
                        done.append((fut, None, exc))
                else:
                    if fut is not None:
                        done.append((fut, result, None))
            if done:
                try:
                    self._loop.call_soon_threadsafe(_deliver, done)
                except RuntimeError:
                    # The event loop is closed: nobody is waiting any more.
                    pass


def _deliver(done: list[tuple[asyncio.Future[Any], Any, BaseException | None]]) -> None:
    for fut, result, exc in done:
        if fut.done():
            continue
        if exc is None:
            fut.set_result(result)
        else:
            fut.set_exception(exc)


def connect(
    path: Path, config: StoreConfig, reader: bool, check: Job | None = None
) -> tuple[sqlite3.Connection, Any]:
    """Open a connection, run ``check(conn)`` before anything writes, then set the pragmas.

    Returns the connection and what ``check`` returned. Runs as a worker's first job.
    """
    uri = f"file:{urllib.parse.quote(str(path))}?mode=rw"  # a path may hold ? # or %
    conn = sqlite3.connect(
        uri, uri=True, isolation_level=None, check_same_thread=True, cached_statements=256
    )
    try:
        # Opening waits for other processes (one may be switching the file to WAL or
        # migrating it) up to busy_deadline. Afterwards the writer keeps only a short wait:
        # its BEGIN IMMEDIATE retries with backoff and jitter in begin_immediate().
        open_ms = max(100, int(config.busy_deadline * 1000))
        conn.execute(f"PRAGMA busy_timeout = {open_ms}")
        conn.execute("PRAGMA trusted_schema = OFF")
        conn.execute("PRAGMA foreign_keys = ON")
        checked = check(conn) if check is not None else None
        mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        if str(mode).lower() != "wal":
            raise StoreError(
                f"could not switch the database to WAL mode (it stayed {mode!r})",
                path=path,
                hint="the file system may not support shared memory; use a local disk",
            )
        conn.execute(f"PRAGMA synchronous = {config.synchronous}")
        conn.execute(f"PRAGMA journal_size_limit = {int(config.journal_size_limit)}")
        if reader:
            conn.execute("PRAGMA query_only = ON")
        else:
            conn.execute(f"PRAGMA busy_timeout = {_WRITER_BUSY_MS}")
        _verify(conn, config, reader=reader, path=path)
    except BaseException:
        conn.close()
        raise
    return conn, checked


def _verify(conn: sqlite3.Connection, config: StoreConfig, *, reader: bool, path: Path) -> None:
    expected = {
        "foreign_keys": 1,
        "trusted_schema": 0,
        "synchronous": {"NORMAL": 1, "FULL": 2}[config.synchronous],
        "query_only": 1 if reader else 0,
        "journal_size_limit": int(config.journal_size_limit),
    }
    for name, want in expected.items():
        got = conn.execute(f"PRAGMA {name}").fetchone()[0]
        if got != want:
            raise StoreError(
                f"PRAGMA {name} is {got!r}, expected {want!r}",
                path=path,
                hint="this SQLite build ignores a setting demiarch-store relies on",
            )


class _Unit:
    """A write-only unit of work waiting for (or in) a group commit."""

    __slots__ = ("fut", "late", "ops", "outcome", "queued_at", "sent")

    def __init__(self, ops: list[Op], fut: asyncio.Future[None], queued_at: float) -> None:
        self.ops = ops
        self.fut = fut
        self.queued_at = queued_at
        self.late: asyncio.Future[None] | None = None
        self.sent = False
        self.outcome: BaseException | None | object = _PENDING


def _resolve(fut: asyncio.Future[None], outcome: object) -> None:
    if fut.done():
        return
    if isinstance(outcome, BaseException):
        fut.set_exception(outcome)
    else:
        fut.set_result(None)


_PENDING: Final = object()
_EXCLUSIVE: Final = object()


class Pool:
    """One writer and up to ``max_readers`` readers for one database file."""

    def __init__(self, path: Path, config: StoreConfig, *, project: str | None) -> None:
        self.path = path
        self.config = config
        self.project = project
        self.counters = _Counters()
        self._loop = asyncio.get_running_loop()
        self._writer: Worker | None = None
        self._readers_idle: list[Worker] = []
        self._readers_all: list[Worker] = []
        self._reader_waiters: deque[asyncio.Future[Worker]] = deque()
        self._opening_readers = 0
        self._queue: deque[_Unit | asyncio.Future[None]] = deque()
        self._writer_busy = False
        self._watchdog: asyncio.TimerHandle | None = None
        self._in_flight = 0
        self._idle: asyncio.Event = asyncio.Event()
        self._idle.set()
        self._closed = False
        self._deadline = config.busy_deadline
        self._upkeep_commits = 0
        self._upkeep_due = time.monotonic() + UPKEEP_SECONDS

    # -- life cycle ---------------------------------------------------------------------------

    async def open(self, check: Job | None = None) -> Any:
        """Open the writer connection; run ``check(conn)`` before any pragma writes the file."""
        writer = Worker(self._loop, f"demiarch-writer-{self.project or self.path.name}")
        self._writer = writer
        try:
            result = await writer.submit(connect, self.path, self.config, False, check)
        except BaseException as exc:
            await writer.stop()
            self._closed = True
            raise self.translate(exc, "opening the database") from None
        return result[1]

    async def close(self) -> None:
        """Wait for work in flight, then close every connection and join its thread."""
        if self._closed:
            return
        self._closed = True
        await self._idle.wait()
        if self._watchdog is not None:
            self._watchdog.cancel()
            self._watchdog = None
        if self._writer is not None:
            self._writer.post(optimize_on_close)  # runs before the writer's stop
        workers = [w for w in (self._writer, *self._readers_all) if w is not None]
        self._readers_idle.clear()
        errors = []
        for worker in workers:
            try:
                await worker.stop()
            except sqlite3.Error as exc:
                errors.append(exc)
        if errors:
            raise self.translate(errors[0], "closing the database")

    @property
    def closed(self) -> bool:
        return self._closed

    def translate(self, exc: BaseException, action: str) -> BaseException:
        """Turn a driver error into the library's error for this project."""
        if isinstance(exc, RowMissing):
            from .errors import NotFound

            return NotFound(str(exc), project=self.project, path=self.path)
        err = translate(exc, project=self.project, path=self.path, action=action)
        if isinstance(err, DatabaseBusy):
            self.counters.busy_errors += 1
        return err

    def check_open(self) -> None:
        if self._closed:
            raise StoreClosed(
                "the project is closed",
                project=self.project,
                path=self.path,
                hint="open it again with Store.open_project() or a new AsyncProjectStore",
            )

    def enter(self) -> None:
        """Count a unit of work or read as in flight (``close`` waits for it)."""
        self.check_open()
        self._in_flight += 1
        self._idle.clear()

    def leave(self) -> None:
        self._in_flight -= 1
        if self._in_flight == 0:
            self._idle.set()

    # -- the writer ---------------------------------------------------------------------------

    @property
    def writer(self) -> Worker:
        assert self._writer is not None
        return self._writer

    async def run_writer(self, fn: Job, *args: Any, action: str) -> Any:
        """Run one job on the writer thread (the caller must hold the writer)."""
        try:
            return await self.writer.submit(fn, *args)
        except BaseException as exc:
            if isinstance(exc, asyncio.CancelledError):
                raise
            raise self.translate(exc, action) from None

    async def commit_group(self, ops: list[Op]) -> None:
        """Commit a write-only unit, grouped with whatever else is queued."""
        loop = self._loop
        unit = _Unit(ops, loop.create_future(), loop.time())
        self._queue.append(unit)
        self._pump()
        if not unit.sent and self._watchdog is None:
            self._arm_watchdog(self.config.acquire_timeout)
        try:
            await unit.fut
        except asyncio.CancelledError:
            if not unit.sent:
                raise  # still queued: the unit is dropped, nothing was written
            late: asyncio.Future[None] = self._loop.create_future()
            if unit.outcome is _PENDING:
                unit.late = late
            else:
                _resolve(late, unit.outcome)
            await self._settle(late, cancels=1)

    async def commit_held(self, ops: list[Op]) -> None:
        """Commit the unit that holds the writer, then give the writer back."""
        try:
            await self._settle(self.writer.submit(commit_job, ops), cancels=0)
            self.counters.commits += 1
        except BaseException:
            self.counters.rollbacks += 1
            raise
        finally:
            self.release_writer()

    async def _settle(self, fut: asyncio.Future[Any], *, cancels: int) -> None:
        """Wait for a commit that can no longer be stopped.

        A cancellation meanwhile waits for the outcome: if the unit committed, the caller gets
        no error now and the cancellation at its next await; if not, ``CancelledError``.
        """
        outcome: BaseException | None = None
        while True:
            try:
                await asyncio.shield(fut)
                break
            except asyncio.CancelledError:
                # Count it even when the commit is already done: a cancel that arrives after the
                # commit finished but before this task resumed must not be swallowed.
                cancels += 1
                if fut.done():
                    outcome = None if fut.cancelled() else fut.exception()
                    break
            except BaseException as exc:
                outcome = exc
                break
        if cancels:
            task = asyncio.current_task()
            assert task is not None
            for _ in range(cancels - 1):
                task.uncancel()
            if outcome is None:
                task.uncancel()
                task.cancel()  # delivered at the caller's next await, after the commit
                return
            raise asyncio.CancelledError
        if outcome is not None:
            raise self.translate(outcome, "committing a transaction") from None

    async def acquire_writer(self) -> None:
        """Hold the writer for an interactive unit of work (FIFO with grouped units)."""
        fut: asyncio.Future[None] = self._loop.create_future()
        self._queue.append(fut)
        self._pump()
        if fut.done():
            return
        try:
            async with asyncio.timeout(self.config.acquire_timeout):
                await fut
        except TimeoutError:
            self.counters.pool_timeouts += 1
            if fut.done() and not fut.cancelled():
                self.release_writer()
            raise PoolTimeout(
                f"no writer connection within {self.config.acquire_timeout:g}s",
                project=self.project,
                path=self.path,
                hint="a long transaction holds the writer; shorten it or raise acquire_timeout",
            ) from None
        except asyncio.CancelledError:
            if fut.done() and not fut.cancelled():
                self.release_writer()
            raise

    def release_writer(self, *, rollback: bool = False) -> None:
        """Give the writer back; ``rollback`` ends its transaction first (without waiting)."""
        if rollback and self._writer is not None:
            # The thread runs jobs in order, so the rollback runs before the next unit's BEGIN.
            self._writer.post(_rollback_if_active)
        self._writer_busy = False
        self._pump()
        self._upkeep()

    def _upkeep(self) -> None:
        """Now and then, when the writer has gone idle, let it check the WAL's size."""
        if self._writer_busy or self._writer is None:
            return
        commits = self.counters.commits
        if commits == self._upkeep_commits:
            return
        now = time.monotonic()
        if commits - self._upkeep_commits >= UPKEEP_COMMITS or now >= self._upkeep_due:
            self._upkeep_commits = commits
            self._upkeep_due = now + UPKEEP_SECONDS
            self._writer.post(idle_checkpoint, self)

    def _arm_watchdog(self, delay: float) -> None:
        self._watchdog = self._loop.call_later(delay, self._expire_queued)

    def _expire_queued(self) -> None:
        """Fail queued write-only units that waited ``acquire_timeout`` for the writer."""
        self._watchdog = None
        timeout = self.config.acquire_timeout
        now = self._loop.time()
        oldest: float | None = None
        for item in list(self._queue):
            if not isinstance(item, _Unit) or item.fut.done():
                continue
            if item.queued_at + timeout <= now:
                self._queue.remove(item)
                self.counters.pool_timeouts += 1
                item.fut.set_exception(
                    PoolTimeout(
                        f"no writer connection within {timeout:g}s",
                        project=self.project,
                        path=self.path,
                        hint="a long transaction holds the writer; shorten it or raise "
                        "acquire_timeout",
                    )
                )
            elif oldest is None:
                oldest = item.queued_at
        if oldest is not None:
            self._arm_watchdog(max(0.0, oldest + timeout - now))

    def _pump(self) -> None:
        queue_ = self._queue
        while not self._writer_busy and queue_:
            head = queue_[0]
            if isinstance(head, asyncio.Future):
                queue_.popleft()
                if head.done():
                    continue
                self._writer_busy = True
                head.set_result(None)
                return
            group: list[_Unit] = []
            while queue_ and isinstance(queue_[0], _Unit):
                unit = queue_.popleft()
                assert isinstance(unit, _Unit)
                if unit.fut.cancelled():
                    continue
                unit.sent = True
                group.append(unit)
            if not group:
                continue
            self._writer_busy = True
            self.counters.groups += 1
            job = self.writer.submit(_commit_group, [u.ops for u in group], self._deadline, self)
            job.add_done_callback(functools.partial(self._group_done, group))
            return

    def _group_done(
        self, group: list[_Unit], job: asyncio.Future[list[BaseException | None]]
    ) -> None:
        self._writer_busy = False
        exc = job.exception()
        outcomes: list[BaseException | None]
        if exc is not None:
            err = self.translate(exc, "committing a transaction")
            outcomes = [err] * len(group)
        else:
            outcomes = [
                None if e is None else self.translate(e, "committing a transaction")
                for e in job.result()
            ]
        for unit, outcome in zip(group, outcomes, strict=True):
            unit.outcome = outcome
            if outcome is None:
                self.counters.commits += 1
            else:
                self.counters.rollbacks += 1
            _resolve(unit.fut, outcome)
            if unit.late is not None:
                _resolve(unit.late, outcome)
        self._pump()
        self._upkeep()

    # -- readers ------------------------------------------------------------------------------

    async def acquire_reader(self) -> Worker:
        """Take an idle reader, opening one if fewer than ``max_readers`` exist."""
        if self._readers_idle:
            return self._readers_idle.pop()
        if len(self._readers_all) + self._opening_readers < self.config.max_readers:
            self._opening_readers += 1
            worker = Worker(self._loop, f"demiarch-reader-{self.project or self.path.name}")
            try:
                await asyncio.shield(worker.submit(connect, self.path, self.config, True))
            except BaseException as exc:
                await worker.stop()
                if isinstance(exc, asyncio.CancelledError):
                    raise
                raise self.translate(exc, "opening a reader connection") from None
            finally:
                self._opening_readers -= 1
            self._readers_all.append(worker)
            return worker
        fut: asyncio.Future[Worker] = self._loop.create_future()
        self._reader_waiters.append(fut)
        try:
            async with asyncio.timeout(self.config.acquire_timeout):
                return await fut
        except TimeoutError:
            self.counters.pool_timeouts += 1
            if fut.done() and not fut.cancelled():
                self.release_reader(fut.result(), started=False)
            raise PoolTimeout(
                f"no reader connection within {self.config.acquire_timeout:g}s "
                f"(max_readers={self.config.max_readers})",
                project=self.project,
                path=self.path,
                hint="long reads hold every reader; shorten them or raise max_readers",
            ) from None
        except asyncio.CancelledError:
            if fut.done() and not fut.cancelled():
                self.release_reader(fut.result(), started=False)
            raise

    def release_reader(self, worker: Worker, *, started: bool) -> None:
        """Return a reader; end its snapshot in the background if it began one."""
        if started:
            worker.post(_rollback_if_active)
        while self._reader_waiters:
            fut = self._reader_waiters.popleft()
            if not fut.done():
                fut.set_result(worker)
                return
        self._readers_idle.append(worker)

    # -- figures ------------------------------------------------------------------------------

    @property
    def connections(self) -> int:
        """Open connections (each with its thread)."""
        alive = [w for w in (self._writer, *self._readers_all) if w is not None and w.alive]
        return len(alive)


def begin_immediate(conn: sqlite3.Connection, deadline_s: float, pool: Pool) -> None:
    """Start a write transaction, retrying ``SQLITE_BUSY`` with backoff and full jitter."""
    deadline = time.monotonic() + deadline_s
    attempt = 0
    while True:
        try:
            conn.execute("BEGIN IMMEDIATE")
            return
        except sqlite3.OperationalError as exc:
            if not _is_busy(exc):
                raise
            now = time.monotonic()
            if now >= deadline:
                log.warning(
                    "write lock of %s still held by another process after %.1fs",
                    pool.path,
                    deadline_s,
                )
                raise
            pool.counters.busy_retries += 1  # only the writer thread writes this counter
            delay = random.uniform(0, min(_BACKOFF_CAP, _BACKOFF_BASE * 2**attempt))
            log.debug("write lock busy, retry %d in %.4fs", attempt + 1, delay)
            time.sleep(min(delay, max(0.0, deadline - now)))
            attempt += 1


def _commit_group(
    conn: sqlite3.Connection, units: list[list[Op]], deadline_s: float, pool: Pool
) -> list[BaseException | None]:
    """Run several units in one transaction, a savepoint each; commit once."""
    begin_immediate(conn, deadline_s, pool)
    try:
        if len(units) == 1:
            run_ops(conn, units[0])
            outcomes: list[BaseException | None] = [None]
        else:
            outcomes = []
            for ops in units:
                conn.execute("SAVEPOINT unit")
                try:
                    run_ops(conn, ops)
                except Exception as exc:  # a value SQLite cannot bind fails this unit only
                    conn.execute("ROLLBACK TO unit")
                    outcomes.append(exc)
                else:
                    outcomes.append(None)
                conn.execute("RELEASE unit")
            if all(o is not None for o in outcomes):
                conn.execute("ROLLBACK")
                return outcomes
        conn.execute("COMMIT")
        return outcomes
    except BaseException:
        _rollback_if_active(conn)
        raise


def interactive_job(
    conn: sqlite3.Connection,
    begin: bool,
    ops: list[Op],
    sql: str | None,
    params: Any,
    deadline_s: float,
    pool: Pool,
) -> Any:
    """Begin if needed, flush pending statements, then run one query and return its rows."""
    if begin:
        begin_immediate(conn, deadline_s, pool)
    run_ops(conn, ops)
    if sql is None:
        return None
    return conn.execute(sql, params).fetchall()


def commit_job(conn: sqlite3.Connection, ops: list[Op]) -> None:
    """Flush the last statements of an interactive unit and commit it."""
    try:
        run_ops(conn, ops)
        conn.execute("COMMIT")
    except BaseException:
        _rollback_if_active(conn)
        raise


def read_job(conn: sqlite3.Connection, begin: bool, sql: str, params: Any) -> list[Any]:
    """Run one query on a reader, starting its snapshot on the first one."""
    if begin:
        conn.execute("BEGIN")
    return conn.execute(sql, params).fetchall()
