"""Connections, pragmas, the bounded pool, group commit and the busy retry.

Each connection lives on its own thread and runs *jobs*: plain functions of the connection that
do a whole piece of work (a unit of work, a read) in one hop. Jobs queued during one turn of the
event loop reach the thread as one batch, and a thread drains every job queued for it before it
reports back, so a burst of work costs one wake-up each way.

Writes go through one writer connection. Units of work that only write are *grouped*: every unit
queued while the writer is busy goes into the next SQLite transaction (undone and re-run with a
savepoint per unit if one fails, so one failing unit does not sink the others), and each caller
is acknowledged only after the shared COMMIT (group commit: one fsync for many units). A unit
that reads holds the writer until it ends; units that read one after the other on the writer's
thread are *chained* into one transaction, a savepoint each, acknowledged at its one COMMIT.
``project.read()`` snapshots that overlap share a read transaction (an *epoch*) on one reader
when that cannot hide a unit acknowledged before they began. A read by primary key in a
snapshot runs on the event loop's own thread when its reader's thread is idle
(``Pool.read_here``); so do small lone units of work, and units that read by ID while they
hold the writer (``Pool.commit_here``). A checkpointer connection copies the WAL into the
database, so no commit runs a checkpoint.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import mmap
import os
import queue
import random
import sqlite3
import struct
import threading
import time
import urllib.parse
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from time import perf_counter
from typing import Any, Final, NamedTuple, TypeVar

from .config import StoreConfig
from .errors import DatabaseBusy, PoolTimeout, StorageError, StoreClosed, StoreError, translate
from .health import (
    UPKEEP_COMMITS,
    UPKEEP_SECONDS,
    Checkpoint,
    Reservoir,
    idle_checkpoint,
    optimize_on_close,
)

__all__ = ["ELSEWHERE", "UNFINISHED", "Op", "Pool", "RowMissing", "Worker"]

log = logging.getLogger("demiarch_store")

T = TypeVar("T")
Job = Callable[..., Any]

_STOP: Final = object()
_Item = tuple[Any, Any, tuple[Any, ...]]
"""(future, callback or None; the job; its arguments)"""
_BUSY_CODES: Final = {sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED}
_BACKOFF_BASE: Final = 0.002
_BACKOFF_CAP: Final = 0.25
_EPOCH_MAX_HOLDERS: Final = 256
"""Snapshots one read epoch takes at most. High on purpose: one reader thread serving every
overlapping snapshot beats two threads taking turns at the GIL (W2 at 64 tasks: +35%)."""
_CHAIN_MAX: Final = 64
_POINT_RUN_MAX: Final = 256
"""Point reads merged into one query at most (SQLite allows 32,766 parameters a statement)."""
_CHAIN_MAX_AGE: Final = 0.005
_CHECKPOINT_FRAMES: Final = 1000
"""WAL frames not yet copied into the database that start a checkpoint on the checkpointer
(SQLite's own threshold for its automatic checkpoint)."""
_BACKSTOP_FRAMES: Final = 4 * _CHECKPOINT_FRAMES
"""The writer's own ``wal_autocheckpoint``. Only a write transaction that begins once every
frame is copied starts the WAL over, and under steady writes one always begins while the
checkpointer is still copying: the writer's automatic checkpoint then copies what is left (a
few hundred frames, not a thousand) and the WAL starts over."""
_WRITER_BUSY_MS: Final = 50
_HERE_STREAK: Final = 4
"""Operations run in place by one task in a row before it yields to the event loop once."""
_GROUP_ROWS: Final = 2000
"""A group commit takes queued units until it holds this many rows (a unit is never split):
a transaction of tens of thousands of rows outgrows SQLite's page cache and runs slower."""
_HERE_QUERY_SECONDS: Final = 0.002
"""The longest a unit of work's query runs in place (``Pool.interact_here``) before it is
interrupted and run on the writer's thread instead."""
_HERE_QUERY_STEPS: Final = 1000
"""SQLite virtual-machine steps between two looks at the clock while a query runs in place."""
_HERE_ROWS: Final = 16
_HERE_TEXT: Final = 64 * 1024
"""The largest unit ``Pool.commit_here`` takes: rows inserted, and characters of their text."""


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
        try:
            cur = conn.executemany(sql, params) if many else conn.execute(sql, params)
        except sqlite3.IntegrityError as exc:
            exc.add_note(sql)  # errors.translate names the kind of record from its table
            # ...and from which parameters were given (their names or places, never values).
            if isinstance(params, dict):
                exc.add_note(" ".join(k for k, v in params.items() if v is not None))
            elif isinstance(params, tuple):
                exc.add_note("#" + " ".join(str(i) for i, v in enumerate(params) if v is not None))
            raise
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
    checkpoints: int = 0
    last_checkpoint: Checkpoint | None = None
    pool_wait: Reservoir = field(default_factory=Reservoir)
    transaction_seconds: Reservoir = field(default_factory=Reservoir)


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


def connect(
    path: Path, config: StoreConfig, reader: bool, check: Job | None = None
) -> tuple[sqlite3.Connection, Any]:
    """Open a connection, run ``check(conn)`` before anything writes, then set the pragmas.

    Returns the connection and what ``check`` returned. Runs as a worker's first job.
    """
    uri = f"file:{urllib.parse.quote(str(path))}?mode=rw"  # a path may hold ? # or %
    conn = sqlite3.connect(
        # A connection is also used from the event loop's thread (``Pool.read_here`` and
        # ``Pool.commit_here``), only ever while its own thread is idle.
        uri,
        uri=True,
        isolation_level=None,
        check_same_thread=False,
        cached_statements=256,
    )
    try:
        # Opening waits for other processes (one may be switching the file to WAL or
        # migrating it) up to busy_deadline. Afterwards the writer keeps only a short wait:
        # its BEGIN IMMEDIATE retries with backoff and jitter in begin_immediate().
        conn.execute(f"PRAGMA busy_timeout = {_open_busy_ms(config)}")
        conn.execute("PRAGMA trusted_schema = OFF")
        conn.execute("PRAGMA foreign_keys = ON")
        checked = check(conn) if check is not None else None
        mode = _switch_to_wal(conn, config.busy_deadline)
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
            conn.execute(f"PRAGMA wal_autocheckpoint = {_BACKSTOP_FRAMES}")
        _verify(conn, config, reader=reader, path=path)
    except BaseException:
        conn.close()
        raise
    return conn, checked


def _open_busy_ms(config: StoreConfig) -> int:
    """A connection's ``busy_timeout`` while it opens; a reader keeps it (see Pool.read_here)."""
    return max(100, int(config.busy_deadline * 1000))


def _switch_to_wal(conn: sqlite3.Connection, deadline_s: float) -> Any:
    """Set WAL mode, retrying SQLITE_BUSY with backoff and full jitter until the deadline.

    Two processes switching a new file to WAL at once both hold a shared lock while asking for
    the exclusive one; SQLite then answers one of them SQLITE_BUSY at once, without its busy
    handler (waiting would deadlock). Retrying after the statement released its lock works.
    """
    deadline = time.monotonic() + deadline_s
    attempt = 0
    while True:
        try:
            return conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        except sqlite3.OperationalError as exc:
            now = time.monotonic()
            if not _is_busy(exc) or now >= deadline:
                raise
            delay = random.uniform(0, min(_BACKOFF_CAP, _BACKOFF_BASE * 2**attempt))
            time.sleep(min(delay, max(0.0, deadline - now)))
            attempt += 1


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
ELSEWHERE: Final = object()
"""What ``Pool.read_here`` returns when the read must go to the reader's thread."""
UNFINISHED: Final = object()
"""What ``Pool.interact_here`` returns when the unit began in place but its query must run on
the writer's thread (it ran too long on the loop)."""


class _Mapped:
    """The ``-shm`` file of one database, as this process's pools share it."""

    __slots__ = ("fd", "map", "users")

    def __init__(self) -> None:
        self.fd: int | None = None
        self.map: mmap.mmap | None = None
        self.users = 0


_u32: Final[Callable[[Any, int], tuple[int]]] = struct.Struct("=I").unpack_from
"""A 32-bit unsigned integer in this machine's byte order (the WAL index's), at an offset."""

_MAPPED: dict[tuple[int, int], _Mapped] = {}
"""By the database file's device and inode: every open pool of this process on it."""
_MAPPED_LOCK = threading.Lock()


def open_in_this_process(database: Path) -> bool:
    """Whether a pool of this process has ``database`` open (or is opening it).

    Then nothing else in this process may open and close a descriptor of the file: closing it
    would drop the locks SQLite holds on it for those pools (see ``WalIndex``).
    """
    try:
        st = os.stat(database)
    except OSError:
        return False
    with _MAPPED_LOCK:
        return (st.st_dev, st.st_ino) in _MAPPED


class WalIndex:
    """The WAL-index header at the start of the ``-shm`` file, read without SQLite.

    SQLite rewrites this 48-byte header on every commit of any connection in any process (its
    change counter, last frame, frame checksum and salts). While it is unchanged, a read
    transaction begun after it was read still shows the database as it is now: that is what
    lets a read epoch take new snapshots without ever being stale.
    The checkpoint's progress (``nBackfill``) follows the header's two copies: with the last
    frame, it tells how much of the WAL waits to be copied (``uncopied``).

    Closing *any* descriptor of a file drops every POSIX lock this process holds on it,
    SQLite's included: its lock on the ``-shm`` file tells other processes that the WAL index
    is in use, and without it the next process to open the database truncates and rebuilds
    the file under this process's connections (a bus error, or lost writes). So every pool of
    this process on one database shares one descriptor of the file (``attach``, before the
    pool's first connection opens), mapped read-only, which is closed only when the last of
    those pools has closed its connections (``close``).
    """

    __slots__ = ("_database", "_key", "_map", "_path")

    HEADER: Final = 48
    MAPPED_BYTES: Final = 100
    """Bytes mapped: the header, its copy, and the checkpoint's progress (``nBackfill``)."""

    def __init__(self, database: Path) -> None:
        self._database = database
        self._path = Path(f"{database}-shm")
        self._key: tuple[int, int] | None = None
        self._map: mmap.mmap | None = None

    def attach(self) -> None:
        """Count this pool as a user of the database's files (before its connections open)."""
        st = os.stat(self._database)
        key = (st.st_dev, st.st_ino)
        with _MAPPED_LOCK:
            _MAPPED.setdefault(key, _Mapped()).users += 1
        self._key = key

    def mapped(self) -> bool:
        """Whether the file is mapped (mapping it first if it is not yet, see ``refresh``)."""
        return self._map is not None or self.refresh() is not None

    def header(self) -> bytes | None:
        """Return the header, or None if the file is not mapped (yet)."""
        m = self._map
        return None if m is None else m[: self.HEADER]

    def frames(self) -> int:
        """Return the frames in the WAL (the header's ``mxFrame``), 0 if not mapped."""
        m = self._map
        return 0 if m is None else _u32(m, 16)[0]

    def uncopied(self) -> int:
        """Return the frames of the WAL a checkpoint has not copied into the database yet.

        ``mxFrame`` less the checkpoint's ``nBackfill`` (after the two copies of the header);
        0 if the file is not mapped, or if the two were read across a restart of the WAL.
        """
        m = self._map
        if m is None:
            if self.refresh() is None:
                return 0
            m = self._map
            assert m is not None
        return max(0, _u32(m, 16)[0] - _u32(m, 96)[0])

    def refresh(self) -> bytes | None:
        """Map the file if it is not mapped yet (it appears with WAL mode); return the header."""
        if self._map is None and self._key is not None:
            with _MAPPED_LOCK:
                self._map = self._map_file(_MAPPED[self._key])
        return self.header()

    def _map_file(self, entry: _Mapped) -> mmap.mmap | None:
        if entry.map is None:
            if entry.fd is None:
                try:
                    # From here the descriptor is closed only by the last close().
                    entry.fd = os.open(self._path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
                except OSError:
                    return None
            try:
                size = self.MAPPED_BYTES
                if os.fstat(entry.fd).st_size >= size:
                    entry.map = mmap.mmap(entry.fd, size, mmap.MAP_SHARED, mmap.PROT_READ)
            except (OSError, ValueError):
                return None
        return entry.map

    def close(self) -> None:
        """Stop using the file: the last pool of the process unmaps it and closes it.

        Call only once the pool's own connections to the database are closed.
        """
        self._map = None
        key, self._key = self._key, None
        if key is None:
            return
        with _MAPPED_LOCK:
            entry = _MAPPED[key]
            entry.users -= 1
            if entry.users:
                return
            del _MAPPED[key]
        if entry.map is not None:
            entry.map.close()
        if entry.fd is not None:
            os.close(entry.fd)


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
        self._reader_waiters: deque[tuple[asyncio.Future[Worker], bool]] = deque()
        self._shared: list[Worker] = []
        self._opening_readers = 0
        self._queue: deque[_Unit | asyncio.Future[None]] = deque()
        self._writer_busy = False
        self._watchdog: asyncio.TimerHandle | None = None
        # A chain: units that read (they hold the writer in turn) sharing one transaction.
        self._handing_on = False
        self._tx_open = False
        self._bare = False
        """The open transaction was begun in place by the unit holding the writer, without a
        savepoint (``interact_here``): that unit ends it alone, no unit chains after it."""
        self._chain: list[tuple[asyncio.Future[Any], asyncio.Future[Any]]] = []
        self._chain_start = 0.0
        self._chainable: set[asyncio.Future[None]] = set()
        self._waiting: dict[asyncio.Future[None], float] = {}
        """Since when each unit of work waiting for the writer has waited (see the watchdog)."""
        # The checkpointer: a connection of its own that keeps the WAL short, opened once the
        # project has written a WAL's worth, so no commit waits for a checkpoint.
        self._checkpointer: Worker | None = None
        self._checkpointing = False
        self._backstop = False
        self._upkeeping = False
        self._in_flight = 0
        self._idle: asyncio.Future[None] | None = None
        """Set by ``close`` while it waits for the work in flight to end."""
        self._closed = False
        self._deadline = config.busy_deadline
        self._here = config.inline_reads
        self._here_writes = config.inline_writes and config.synchronous == "NORMAL"
        self._here_task = 0
        self._here_streak = 0
        self._here_until = 0.0
        self._here_interrupted = False
        self._reader_busy_ms = _open_busy_ms(config)
        self._wal_index = WalIndex(path)
        self._wal_path = f"{path}-wal"
        self._upkeep_commits = 0
        self._upkeep_due = time.monotonic() + UPKEEP_SECONDS

    # -- life cycle ---------------------------------------------------------------------------

    async def open(self, check: Job | None = None) -> Any:
        """Open the writer connection; run ``check(conn)`` before any pragma writes the file."""
        writer = Worker(self._loop, f"demiarch-writer-{self.project or self.path.name}")
        self._writer = writer
        try:
            self._wal_index.attach()  # before SQLite locks the file (see open_in_this_process)
            result = await writer.submit(connect, self.path, self.config, False, check)
        except BaseException as exc:
            await writer.stop()
            self._wal_index.close()
            self._closed = True
            raise self.translate(exc, "opening the database") from None
        return result[1]

    async def close(self) -> None:
        """Wait for work in flight, then close every connection and join its thread."""
        if self._closed:
            return
        self._closed = True
        if self._in_flight:
            self._idle = self._loop.create_future()
            await self._idle
        if self._watchdog is not None:
            self._watchdog.cancel()
            self._watchdog = None
        if self._writer is not None:
            self._writer.post(optimize_on_close)  # runs before the writer's stop
        workers = [
            w for w in (self._writer, *self._readers_all, self._checkpointer) if w is not None
        ]
        self._readers_idle.clear()
        errors = []
        try:
            for worker in workers:
                try:
                    await worker.stop()
                except sqlite3.Error as exc:
                    errors.append(exc)
        finally:
            self._wal_index.close()  # after the connections: it may drop this process's locks
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
        if self._closed:
            self.check_open()
        self._in_flight += 1

    def leave(self) -> None:
        self._in_flight -= 1
        if self._in_flight == 0 and self._idle is not None and not self._idle.done():
            self._idle.set_result(None)

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
        """Commit a write-only unit, grouped with whatever else is queued (or in place)."""
        conn = self._here_conn(holding=False)
        if conn is not None and small_unit(ops):
            if self.yield_due():
                await asyncio.sleep(0)  # a cancel here: nothing was written
                conn = self._here_conn(holding=False)  # other tasks ran meanwhile
            if conn is not None and self.commit_here(conn, ops) is not ELSEWHERE:
                return
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

    def _here_conn(self, *, holding: bool) -> sqlite3.Connection | None:
        """The writer's connection, if the unit of work asking may use it on this thread.

        Always: ``synchronous`` is NORMAL, the writer's thread is idle (``Worker.idle_connection``)
        and the WAL-index header is mapped (``_committed_here`` reads it).

        ``holding``: the unit holds the writer (it reads), so nothing else can use it until the
        unit ends, however many units wait: it must only not be part of a chain (the chain's
        transaction is the thread's to end). Units that read one after another then each run
        and commit in place, with no hop at all, instead of chaining on the thread.

        Otherwise (a write-only unit) nothing may hold the writer, and the unit must be the
        project's only work (nothing else in flight, nothing queued; a hand-on due, see
        ``_group_done``, can only find this unit): units in flight together commit faster as
        one group on the thread.
        """
        if (
            not self._here_writes
            or (
                self._chain
                if holding
                else (self._in_flight != 1 or self._queue or self._writer_busy)
            )
            or not self._wal_index.mapped()
        ):
            return None
        writer = self._writer
        assert writer is not None
        return writer.idle_connection()

    def commit_here(self, conn: sqlite3.Connection, ops: list[Op]) -> object:
        """Commit a small write-only unit on this thread, or return ``ELSEWHERE``.

        ``conn``: what ``_here_conn`` returned, with nothing awaited since. For a unit that is
        the project's only work: its hop to the writer's thread and back would cost several
        times what SQLite spends on it. It runs ``BEGIN IMMEDIATE``, the statements and
        ``COMMIT`` exactly as ``_commit_group`` does for a group of one, on the writer's
        connection while its thread is idle (see ``Worker.idle_connection``), and never waits:
        ``busy_timeout`` is 0, so a write lock held by another connection sends the unit to the
        thread, and the automatic checkpoint is off (the checkpointer copies the WAL; should it
        fall behind, the backstop checkpoint is posted to the thread, see ``_committed_here``).
        The thread restores both settings before its next job. Errors are translated; the unit
        is then rolled back.
        """
        error: BaseException | None = None
        try:
            if not self._begin_here(conn):
                return ELSEWHERE  # nothing began; the thread waits for the lock
            commit_job(conn, ops)
        except Exception as exc:
            error = self.translate(exc, "committing a transaction")
        if error is not None:
            self.counters.rollbacks += 1
            raise error  # as the thread's would be: the driver's error is its cause
        self.counters.commits += 1
        self.counters.groups += 1
        self._committed_here()
        return None

    def _loop_settings(self, conn: sqlite3.Connection) -> None:
        """Give the writer's connection its settings for the loop (see ``commit_here``)."""
        writer = self._writer
        assert writer is not None
        if writer.restore is None:
            writer.restore = _restore_writer  # even if a pragma below fails
            conn.execute("PRAGMA busy_timeout = 0")
            conn.execute("PRAGMA wal_autocheckpoint = 0")

    def _begin_here(self, conn: sqlite3.Connection) -> bool:
        """``BEGIN IMMEDIATE`` on the loop; False (nothing begun) if another holds the lock."""
        if self._writer is None or self._writer.restore is None:
            self._loop_settings(conn)
        try:
            conn.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError as exc:
            if _is_busy(exc):
                return False
            raise
        return True

    def _committed_here(self) -> None:
        m = self._wal_index._map
        frames = 0 if m is None else _u32(m, 16)[0]
        if frames >= _CHECKPOINT_FRAMES:  # (frames not yet copied are never more)
            self._checkpoint_due()
        if not self._backstop and frames >= _BACKSTOP_FRAMES:
            # What the automatic checkpoint would have run; one at a time (each is a job the
            # units behind it wait for, on the writer's thread).
            self._backstop = True
            writer = self._writer
            assert writer is not None
            writer.call(_checkpoint_passive, self._backstop_done)
        self._upkeep()

    def _backstop_done(self, _result: Any, exc: BaseException | None) -> None:
        self._backstop = False
        if exc is not None and not isinstance(exc, StoreClosed):
            log.debug("backstop checkpoint of %s failed: %r", self.path, exc)

    def interact_here(
        self, start: int, ops: list[Op], sql: str | None, params: Any, bounded: bool = True
    ) -> Any:
        """Run ``interactive_job`` for the unit holding the writer on this thread, or return
        ``ELSEWHERE`` (nothing done) or ``UNFINISHED`` (the unit is begun and its writes sent,
        but its query ran past ``_HERE_QUERY_SECONDS``: run the query alone on the thread).

        Its ``BEGIN IMMEDIATE`` never waits (see ``commit_here``), and its query never runs long
        on the loop: a progress handler interrupts it there (a read, so SQLite keeps the
        transaction; the unit holds the write lock, so the thread's run of it reads the same
        rows). ``bounded=False``: a read of one row by primary key, which cannot run long, runs
        without the handler. Errors propagate untranslated, as from the thread.
        """
        conn = self._here_conn(holding=True)
        if conn is None:
            return ELSEWHERE
        if start == 2:
            if not self._begin_here(conn):
                return ELSEWHERE
            # Begun here, alone: no savepoint (it would cost SQLite a statement journal), since
            # no unit will chain after this one (see _end_held); a failure undoes it all.
            self._bare = True
            start = 0
        if start or ops:
            interactive_job(conn, start, ops, None, None, self._deadline, self)
        if sql is None:
            return None
        if not bounded:
            return conn.execute(sql, params).fetchall()
        self._here_until = perf_counter() + _HERE_QUERY_SECONDS
        self._here_interrupted = False
        conn.set_progress_handler(self._here_overdue, _HERE_QUERY_STEPS)
        try:
            return conn.execute(sql, params).fetchall()
        except sqlite3.OperationalError:
            if not self._here_interrupted:
                raise
            if not conn.in_transaction:  # never for a read; all the same, never go on without
                raise _chain_lost(self) from None
            return UNFINISHED
        finally:
            conn.set_progress_handler(None, 0)

    def _here_overdue(self) -> int:
        """SQLite's progress handler for a query run in place: nonzero interrupts it."""
        if perf_counter() < self._here_until:
            return 0
        self._here_interrupted = True
        return 1

    def end_here(self, ops: list[Op]) -> object:
        """Commit the unit holding the writer on this thread (it is alone in its transaction),
        and pass the writer on; or return ``ELSEWHERE``. Raises the unit's translated error."""
        conn = self._here_conn(holding=True)
        if conn is None or not small_unit(ops):
            return ELSEWHERE
        try:
            self._loop_settings(conn)
            if self._bare:  # alone, no savepoint: what end_held_job does for it
                if not conn.in_transaction:
                    raise _chain_lost(self)  # (never write outside the unit's transaction)
                if ops:
                    run_ops(conn, ops)
                conn.execute("COMMIT")
                own = None
            else:
                own = end_held_job(conn, ops, False, True, True, self)
        except Exception as exc:  # the transaction failed: nothing of it stays
            own = exc
            with contextlib.suppress(sqlite3.Error):
                _rollback_if_active(conn)
        self._tx_open = self._bare = False
        self._writer_busy = False
        if self._queue:
            self._pump()
        self._committed_here()
        if own is not None:
            raise self.translate(own, "committing a transaction")
        return None

    # A unit that reads holds the writer; when it ends and the next unit waiting for the writer
    # also reads, the transaction stays open and the writer passes straight on (the next unit's
    # first job reaches the thread with this unit's last one). Each unit runs inside its own
    # SAVEPOINT, so a failing unit is undone alone; every unit of the chain is acknowledged only
    # after the one COMMIT. A chain ends when no such unit waits, or at _CHAIN_MAX units or
    # _CHAIN_MAX_AGE seconds.

    def start_held(self) -> int:
        """Return how the holding unit's first job starts: 2 = begin the transaction, 1 = join."""
        if self._tx_open:
            return 1
        self._tx_open = True
        self._chain_start = time.monotonic()  # (what loop.time() returns, without its frame)
        return 2

    async def commit_held(self, ops: list[Op]) -> None:
        """Commit the unit that holds the writer (with its chain), and pass the writer on."""
        try:
            if self.end_here(ops) is not ELSEWHERE:
                self.counters.commits += 1
                return
            ack = self._end_held(ops, failed=False, started=True)
            await self._settle(ack, cancels=0)
            self.counters.commits += 1
        except BaseException:
            self.counters.rollbacks += 1
            raise

    def abort_held(self, *, started: bool = True) -> None:
        """Undo the unit that holds the writer (without waiting), and pass the writer on."""
        ack = self._end_held(None, failed=True, started=started)
        ack.add_done_callback(_retrieve)

    def _next_chained(self) -> asyncio.Future[None] | None:
        queue_ = self._queue
        while queue_ and isinstance(queue_[0], asyncio.Future) and queue_[0].done():
            self._chainable.discard(queue_.popleft())
        if (
            queue_
            and queue_[0] in self._chainable
            and len(self._chain) < _CHAIN_MAX
            and time.monotonic() - self._chain_start < _CHAIN_MAX_AGE
        ):
            head = queue_.popleft()
            assert isinstance(head, asyncio.Future)
            self._chainable.discard(head)
            return head
        return None

    def _end_held(
        self, ops: list[Op] | None, *, failed: bool, started: bool
    ) -> asyncio.Future[Any]:
        ack: asyncio.Future[Any] = self._loop.create_future()
        writer = self.writer
        if not self._chain and (failed or not started):
            # Alone in its transaction: roll it all back (the thread runs jobs in order, so
            # this happens before the next holder's BEGIN).
            if started:
                writer.post(_rollback_if_active)
            self._tx_open = self._bare = False
            ack.set_result(None)
            self.release_writer()
            return ack
        nxt = None if self._bare else self._next_chained()
        if nxt is not None:
            nxt.set_result(None)  # first, so its first job joins this batch
            end = writer.submit(end_held_job, ops, failed, started, False, self)
            self._chain.append((end, ack))
            return ack
        members, self._chain = self._chain, []
        savepoint = not self._bare
        self._tx_open = self._bare = False
        end = writer.submit(end_held_job, ops, failed, started, True, self, savepoint)
        members.append((end, ack))
        end.add_done_callback(functools.partial(self._chain_done, members))
        return ack

    def _chain_done(
        self, members: list[tuple[asyncio.Future[Any], asyncio.Future[Any]]], _last: Any
    ) -> None:
        # An end job *returns* its unit's own error (that unit undone alone); one that *raises*
        # means the shared transaction failed, and with it every unit of the chain.
        errors = [end.exception() for end, _ in members]
        broken = next((e for e in errors if e is not None), None)
        for (end, ack), error in zip(members, errors, strict=True):
            own = error if error is not None else broken
            if own is None:
                own = end.result()
            if not ack.done():
                if own is None:
                    ack.set_result(None)
                else:
                    ack.set_exception(own)
        self._writer_busy = False
        self._pump()
        self._checkpoint_due()
        self._upkeep()

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

    def take_writer(self) -> bool:
        """Hold the writer now if it is free and nobody waits (what ``acquire_writer`` does
        then, without its future); False if the caller must ``await acquire_writer()``."""
        if self._writer_busy or self._handing_on or self._queue:
            return False
        self._writer_busy = True
        return True

    async def acquire_writer(self, *, chain: bool = False) -> None:
        """Hold the writer for an interactive unit of work (FIFO with grouped units).

        ``chain``: the caller is a unit of work (``start_held``/``commit_held``/``abort_held``)
        that may join the transaction of the unit before it.
        """
        fut: asyncio.Future[None] = self._loop.create_future()
        self._queue.append(fut)
        if chain:
            self._chainable.add(fut)
        self._pump()
        if fut.done():
            return
        # The pool's watchdog fails a waiter after acquire_timeout (PoolTimeout): one timer
        # for all waiters instead of one per wait.
        self._waiting[fut] = self._loop.time()
        if self._watchdog is None:
            self._arm_watchdog(self.config.acquire_timeout)
        try:
            await fut
        except asyncio.CancelledError:
            if fut.done() and not fut.cancelled() and fut.exception() is None:
                self._release_unstarted()
            raise
        finally:
            self._chainable.discard(fut)
            self._waiting.pop(fut, None)

    def _release_unstarted(self) -> None:
        if self._chain:
            self.abort_held(started=False)  # handed the writer inside a chain, never used it
        else:
            self.release_writer()

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
        if self._writer_busy or self._writer is None or self._checkpointing:
            return  # (a background checkpoint in flight would make this one report "busy")
        commits = self.counters.commits
        if commits == self._upkeep_commits:
            return
        now = time.monotonic()
        if commits - self._upkeep_commits >= UPKEEP_COMMITS or now >= self._upkeep_due:
            self._upkeep_commits = commits
            self._upkeep_due = now + UPKEEP_SECONDS
            if _file_size(self._wal_path) <= self.config.wal_checkpoint_bytes:
                return  # what idle_checkpoint looks at first: no job (no hop) for a small WAL
            self._upkeeping = True  # no background checkpoint meanwhile (see _checkpoint_due)
            self._writer.call(idle_checkpoint, self._upkeep_done, self)

    def _upkeep_done(self, _result: Any, exc: BaseException | None) -> None:
        self._upkeeping = False
        if exc is not None and not isinstance(exc, StoreClosed):
            log.warning("idle checkpoint of %s failed: %r", self.path, exc)

    def _arm_watchdog(self, delay: float) -> None:
        self._watchdog = self._loop.call_later(delay, self._expire_queued)

    def _expire_queued(self) -> None:
        """Fail queued units (write-only, or waiting to hold the writer) after acquire_timeout."""
        self._watchdog = None
        timeout = self.config.acquire_timeout
        now = self._loop.time()
        oldest: float | None = None
        for item in list(self._queue):
            if isinstance(item, _Unit):
                fut, queued_at = item.fut, item.queued_at
            else:
                fut, queued_at = item, self._waiting.get(item, now)
            if fut.done():
                continue
            if queued_at + timeout <= now:
                self._queue.remove(item)
                self.counters.pool_timeouts += 1
                fut.set_exception(
                    PoolTimeout(
                        f"no writer connection within {timeout:g}s",
                        project=self.project,
                        path=self.path,
                        hint="a long transaction holds the writer; shorten it or raise "
                        "acquire_timeout",
                    )
                )
            elif oldest is None or queued_at < oldest:
                oldest = queued_at
        if oldest is not None:
            self._arm_watchdog(max(0.0, oldest + timeout - now))

    def _pump(self) -> None:
        queue_ = self._queue
        while not self._writer_busy and not self._handing_on and queue_:
            head = queue_[0]
            if isinstance(head, asyncio.Future):
                queue_.popleft()
                self._chainable.discard(head)
                if head.done():
                    continue
                self._writer_busy = True
                head.set_result(None)
                return
            group: list[_Unit] = []
            rows = 0
            while queue_ and isinstance(queue_[0], _Unit) and rows < _GROUP_ROWS:
                unit = queue_.popleft()
                assert isinstance(unit, _Unit)
                if unit.fut.cancelled():
                    continue
                unit.sent = True
                group.append(unit)
                rows += sum(len(op.params) if op.many else 1 for op in unit.ops)
            if not group:
                continue
            self._writer_busy = True
            self.counters.groups += 1
            self.writer.call(
                _commit_group,
                functools.partial(self._group_done, group),
                [u.ops for u in group],
                self._deadline,
                self,
            )
            return

    def _group_done(
        self,
        group: list[_Unit],
        result: list[BaseException | None] | None,
        exc: BaseException | None,
    ) -> None:
        outcomes: list[BaseException | None]
        if exc is not None or result is None:
            err = self.translate(exc or StoreClosed("closed"), "committing a transaction")
            outcomes = [err] * len(group)
        else:
            outcomes = [
                None if e is None else self.translate(e, "committing a transaction") for e in result
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
        # The writer is free, but is handed on one step later, after the tasks just
        # acknowledged have run: the units they queue straight away join the next group
        # instead of starting groups of their own (fewer, larger groups under load).
        self._writer_busy = False
        self._handing_on = True
        self._checkpoint_due()
        alone = len(group) == 1 and not self._queue
        if alone:
            self._upkeep()  # one task writing on its own: the writer is idle between units
        self._loop.call_soon(self._hand_on)

    def _hand_on(self) -> None:
        self._handing_on = False
        if self._queue:  # the tasks just acknowledged wrote again at once
            self._pump()
        else:
            self._upkeep()  # the writer has gone idle: its own upkeep may checkpoint

    def _checkpoint_due(self) -> None:
        """After a commit: once the WAL holds ``_CHECKPOINT_FRAMES`` frames not yet copied into
        the database, copy them from the checkpointer's connection (opened on first need).

        A ``PASSIVE`` checkpoint blocks neither the writer nor readers, and runs on a thread of
        its own while the writer goes on: its copying and its fsyncs are never part of a
        commit, as SQLite's automatic checkpoint is (see ``_BACKSTOP_FRAMES``).
        """
        if (
            self._checkpointing
            or self._upkeeping
            or self._closed
            or self._wal_index.uncopied() < _CHECKPOINT_FRAMES
        ):
            return
        worker = self._checkpointer
        if worker is None:
            name = f"demiarch-checkpoint-{self.project or self.path.name}"
            worker = self._checkpointer = Worker(self._loop, name)
            worker.post(connect, self.path, self.config, True)
        self._checkpointing = True
        worker.call(_checkpoint_passive, self._checkpoint_done)

    def _checkpoint_done(self, _result: Any, exc: BaseException | None) -> None:
        self._checkpointing = False
        if exc is not None:
            # The writer's own automatic checkpoint still keeps the WAL bounded.
            log.debug("background checkpoint of %s failed: %r", self.path, exc)
        else:
            self.counters.checkpoints += 1

    # -- readers ------------------------------------------------------------------------------
    #
    # A reader is idle, held by one caller (``acquire_reader``: whole-connection jobs such as a
    # backup), or *shared*: ``project.read()`` snapshots that overlap in time join one read
    # transaction (an *epoch*) on one reader, so their queries reach the thread in one batch.
    # Every snapshot still sees one consistent state for its whole block. A snapshot joins an
    # epoch only if nothing has finished on the writer since the epoch began and the WAL-index
    # header is what it was then (no process has committed since); so it sees every write
    # acknowledged before it started, by this process or any other.

    def _new_reader(self) -> Worker | None:
        """Return a new reader worker if the pool may open one (not yet connected)."""
        if len(self._readers_all) + self._opening_readers >= self.config.max_readers:
            return None
        self._opening_readers += 1
        return Worker(self._loop, f"demiarch-reader-{self.project or self.path.name}")

    async def _connect_reader(self, worker: Worker) -> None:
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

    async def _wait_reader(self, shared: bool) -> Worker:
        fut: asyncio.Future[Worker] = self._loop.create_future()
        self._reader_waiters.append((fut, shared))
        try:
            async with asyncio.timeout(self.config.acquire_timeout):
                return await fut
        except TimeoutError:
            self.counters.pool_timeouts += 1
            if fut.done() and not fut.cancelled():
                self._give_back(fut.result(), shared)
            raise PoolTimeout(
                f"no reader connection within {self.config.acquire_timeout:g}s "
                f"(max_readers={self.config.max_readers})",
                project=self.project,
                path=self.path,
                hint="long reads hold every reader; shorten them or raise max_readers",
            ) from None
        except asyncio.CancelledError:
            if fut.done() and not fut.cancelled():
                self._give_back(fut.result(), shared)
            raise

    def _give_back(self, worker: Worker, shared: bool) -> None:
        if shared:
            self.release_shared(worker)
        else:
            self.release_reader(worker, started=False)

    async def acquire_reader(self) -> Worker:
        """Take an idle reader for the caller alone, opening one if fewer than ``max_readers``."""
        if self._readers_idle:
            return self._readers_idle.pop()
        worker = self._new_reader()
        if worker is None:
            return await self._wait_reader(shared=False)
        await self._connect_reader(worker)
        return worker

    def release_reader(self, worker: Worker, *, started: bool) -> None:
        """Return a reader; end its snapshot in the background if it began one."""
        if started:
            worker.post(_rollback_if_active)
        self._reader_free(worker)

    def join_shared(self) -> Worker | None:
        """Join a current read epoch if one may take this snapshot (no waiting, no coroutine)."""
        if not self._shared:
            return None
        gen = self.writer.completed
        header = self._wal_index.header()
        if header is None:
            return None
        for worker in self._shared:
            # Only if no process has committed since the epoch began (its snapshot may be
            # older than a commit acknowledged since, in this process or another).
            if (
                worker.epoch_gen != gen
                or worker.epoch_wal != header
                or worker.holders >= _EPOCH_MAX_HOLDERS
            ):
                continue
            worker.holders += 1
            return worker
        return None

    async def acquire_shared(self) -> Worker:
        """Join a current read epoch, or start one on a free reader (for ``project.read()``)."""
        joined = self.join_shared()
        if joined is not None:
            return joined
        if self._readers_idle:
            worker = self._readers_idle.pop()
        else:
            new = self._new_reader()
            if new is None:
                return await self._wait_reader(shared=True)
            await self._connect_reader(new)
            worker = new
        self._start_epoch(worker)
        return worker

    def _start_epoch(self, worker: Worker) -> None:
        worker.holders = 1
        worker.epoch_gen = self.writer.completed
        # Read before the epoch's transaction begins on the reader thread, so the snapshot it
        # takes there includes at least every commit this header shows.
        worker.epoch_wal = self._wal_index.refresh()
        worker.begun = False
        worker.epoch_serial += 1
        self._shared.append(worker)

    def release_shared(self, worker: Worker) -> None:
        """Leave a read epoch; the last one out ends its transaction (in the background)."""
        worker.holders -= 1
        if worker.holders:
            return
        self._shared.remove(worker)
        if worker.begun:
            worker.begun = False
            conn = worker.idle_connection() if self._here else None
            if conn is not None:
                try:
                    _rollback_if_active(conn)  # ending a read transaction never waits
                except sqlite3.Error:
                    conn = None
            if conn is None:
                worker.post(_rollback_if_active)  # after the jobs still queued
        self._reader_free(worker)

    def read_here(self, worker: Worker, job: Job, *args: Any) -> Any:
        """Run a read of a shared snapshot on this thread, or return ``ELSEWHERE``.

        For reads by primary key, which cost SQLite less than a hop to the reader's thread and
        back. It runs ``job(conn, begin, *args)`` exactly as the thread would, on the same
        connection and in the same read transaction, and only while that thread is idle (see
        ``Worker.idle_connection``). It never waits on the loop: the first read of an epoch,
        which takes the snapshot and is the only one that could meet a lock (another process
        recovering the WAL), runs with ``busy_timeout`` 0 and goes to the thread if busy.
        Errors propagate untranslated, as from the thread.
        """
        conn = worker.idle_connection() if self._here else None
        if conn is None:
            return ELSEWHERE
        if worker.begun:
            if worker.established != worker.epoch_serial or not conn.in_transaction:
                return ELSEWHERE  # the snapshot was never taken, or SQLite ended it
            return job(conn, False, *args)
        if conn.in_transaction:
            return ELSEWHERE  # an earlier snapshot of this reader is still being ended
        conn.execute("PRAGMA busy_timeout = 0")
        try:
            rows = job(conn, True, *args)
        except sqlite3.OperationalError as exc:
            if not _is_busy(exc):
                worker.begun = True  # as on the thread: the snapshot ends with the epoch
                raise
            _rollback_if_active(conn)
            return ELSEWHERE
        finally:
            conn.execute(f"PRAGMA busy_timeout = {self._reader_busy_ms}")
        worker.begun = True
        worker.established = worker.epoch_serial
        return rows

    def yield_due(self) -> bool:
        """For an operation run in place: whether the task should now yield to the event loop."""
        task = id(asyncio.current_task(self._loop))
        if task != self._here_task:
            self._here_task, self._here_streak = task, 1
            return False
        self._here_streak += 1
        if self._here_streak < _HERE_STREAK:
            return False
        self._here_streak = 0
        return True

    def _reader_free(self, worker: Worker) -> None:
        waiters = self._reader_waiters
        while waiters:
            fut, shared = waiters.popleft()
            if fut.done():
                continue
            fut.set_result(worker)
            if shared:
                # Every snapshot waiting at the head of the queue joins the new epoch.
                self._start_epoch(worker)
                while waiters and waiters[0][1] and worker.holders < _EPOCH_MAX_HOLDERS:
                    fut, _ = waiters.popleft()
                    if not fut.done():
                        fut.set_result(worker)
                        worker.holders += 1
            return
        self._readers_idle.append(worker)

    # -- figures ------------------------------------------------------------------------------

    @property
    def connections(self) -> int:
        """Open connections (each with its thread): writer, readers and the checkpointer."""
        workers = (self._writer, *self._readers_all, self._checkpointer)
        return len([w for w in workers if w is not None and w.alive])


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
    """Run several units in one transaction, a savepoint each; commit once.

    The group first runs without savepoints (they cost two statements a unit); only if a unit
    fails is the transaction rolled back and run again with one savepoint per unit, so each
    failing unit is undone alone. Nothing is committed twice: the first attempt is discarded.
    """
    begin_immediate(conn, deadline_s, pool)
    try:
        if len(units) == 1:
            run_ops(conn, units[0])
            outcomes: list[BaseException | None] = [None]
        else:
            try:
                for ops in units:
                    run_ops(conn, ops)
                outcomes = [None] * len(units)
            except Exception as exc:  # a value SQLite cannot bind fails this unit only
                if not conn.in_transaction:
                    raise  # SQLite ended the transaction itself (I/O error, full disk)
                del exc
                conn.execute("ROLLBACK")
                begin_immediate(conn, deadline_s, pool)
                outcomes = _run_units(conn, units)
                if all(o is not None for o in outcomes):
                    conn.execute("ROLLBACK")
                    return outcomes
        conn.execute("COMMIT")
        return outcomes
    except BaseException:
        _rollback_if_active(conn)
        raise


def _run_units(conn: sqlite3.Connection, units: list[list[Op]]) -> list[BaseException | None]:
    outcomes: list[BaseException | None] = []
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
    return outcomes


def interactive_job(
    conn: sqlite3.Connection,
    start: int,
    ops: list[Op],
    sql: str | None,
    params: Any,
    deadline_s: float,
    pool: Pool,
) -> Any:
    """Start the unit if needed, flush pending statements, then run one query (its rows).

    ``start``: 0 the unit is running; 1 it joins the open transaction; 2 it begins one.
    """
    if start:
        if start == 2:
            begin_immediate(conn, deadline_s, pool)
        elif not conn.in_transaction:
            # The chain's transaction was rolled back by SQLite (I/O error, full disk): never
            # let SAVEPOINT quietly start a new one.
            raise _chain_lost(pool)
        conn.execute("SAVEPOINT held")
    run_ops(conn, ops)
    if sql is None:
        return None
    return conn.execute(sql, params).fetchall()


def _chain_lost(pool: Pool) -> StorageError:
    return StorageError(
        "the transaction this unit shared with the units before it was rolled back by SQLite",
        project=pool.project,
        path=pool.path,
        hint="an earlier error (I/O, full disk) ended it; nothing of these units was committed, "
        "retry them",
    )


def end_held_job(
    conn: sqlite3.Connection,
    ops: list[Op] | None,
    failed: bool,
    started: bool,
    commit: bool,
    pool: Pool,
    savepoint: bool = True,
) -> BaseException | None:
    """End a unit of a chain: flush its last statements (or undo it), and commit if asked.

    Returns the unit's own error (its savepoint undone, the transaction going on); raises if
    the transaction itself failed, or if the unit has no savepoint (``savepoint=False``: it is
    alone in its transaction, which its error ends).
    """
    own: BaseException | None = None
    try:
        if started:
            if not conn.in_transaction:
                raise _chain_lost(pool)
            if not failed and ops:
                try:
                    run_ops(conn, ops)
                except Exception as exc:  # a value SQLite cannot bind fails this unit only
                    if not savepoint or not conn.in_transaction:
                        raise  # (without a savepoint: alone, the unit's error ends it all)
                    own, failed = exc, True
            if savepoint:
                if failed:
                    conn.execute("ROLLBACK TO held")
                conn.execute("RELEASE held")
            elif failed:
                _rollback_if_active(conn)  # alone in its transaction: undo it all
                return None
        if commit:
            conn.execute("COMMIT")
    except BaseException:
        _rollback_if_active(conn)
        raise
    return own


def _file_size(path: str) -> int:
    try:
        return os.lstat(path).st_size
    except FileNotFoundError:
        return 0


def _restore_writer(conn: sqlite3.Connection) -> None:
    """Give the writer's connection back the settings ``connect`` gave it."""
    conn.execute(f"PRAGMA busy_timeout = {_WRITER_BUSY_MS}")
    conn.execute(f"PRAGMA wal_autocheckpoint = {_BACKSTOP_FRAMES}")


def _checkpoint_passive(conn: sqlite3.Connection) -> Any:
    """Copy committed WAL frames into the database without blocking the writer or readers."""
    return conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()


def _retrieve(fut: asyncio.Future[Any]) -> None:
    if not fut.cancelled():
        fut.exception()


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
