"""What every part of the pool shares: its counters, its state and the unit waiting to commit."""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import time
from collections import deque
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from ..config import StoreConfig
from ..engine import Op
from ..errors import DatabaseBusy, StoreClosed, translate
from ..health import (
    UPKEEP_SECONDS,
    Counters,
)
from .connection import RowMissing, _open_busy_ms
from .wal_index import WalIndex
from .worker import Worker

log = logging.getLogger("demiarch_store")

_HERE_STREAK: Final = 4
"""Operations run in place by one task in a row before it yields to the event loop once."""


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


def _retrieve(fut: asyncio.Future[Any]) -> None:
    if not fut.cancelled():
        fut.exception()


class PoolState:
    """The state of one pool, shared by the parts below (each a concern of ``Pool``)."""

    def __init__(self, path: Path, config: StoreConfig, *, project: str | None) -> None:
        self.path = path
        self.config = config
        self.project = project
        self.counters = Counters()
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

    @property
    def closed(self) -> bool:
        return self._closed

    def translate(self, exc: BaseException, action: str) -> BaseException:
        """Turn a driver error into the library's error for this project."""
        if isinstance(exc, RowMissing):
            from ..errors import NotFound

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

    @property
    def writer(self) -> Worker:
        assert self._writer is not None
        return self._writer

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

    @property
    def connections(self) -> int:
        """Open connections (each with its thread): writer, readers and the checkpointer."""
        workers = (self._writer, *self._readers_all, self._checkpointer)
        return len([w for w in workers if w is not None and w.alive])

    if TYPE_CHECKING:

        def _checkpoint_due(self) -> None: ...

        def _here_conn(self, *, holding: bool) -> sqlite3.Connection | None: ...

        def _pump(self) -> None: ...

        def _upkeep(self) -> None: ...

        def commit_here(self, conn: sqlite3.Connection, ops: list[Op]) -> object: ...

        def end_here(self, ops: list[Op]) -> object: ...
