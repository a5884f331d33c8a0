"""The pool of one database file: one writer, its readers and the checkpointer."""

from __future__ import annotations

import logging
import sqlite3
from typing import Any

from ..health import StoreStats
from .checkpointer import Checkpointing, optimize_on_close
from .connection import connect
from .inplace import InPlace
from .readers import Reading
from .state import PoolState
from .worker import Job, Worker
from .writer import Writing

__all__ = ["Pool", "stats_of"]

log = logging.getLogger("demiarch_store")


class Pool(Writing, InPlace, Reading, Checkpointing):
    """One writer and up to ``max_readers`` readers for one database file."""

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


def stats_of(pool: PoolState) -> StoreStats:
    """Take a snapshot of a pool's counters (on the event loop thread)."""
    c = pool.counters
    readers_in_use = len(pool._readers_all) - len(pool._readers_idle)
    return StoreStats(
        commits=c.commits,
        rollbacks=c.rollbacks,
        group_commits=c.groups,
        busy_retries=c.busy_retries,
        database_busy=c.busy_errors,
        pool_timeouts=c.pool_timeouts,
        pool_wait=c.pool_wait.percentiles(),
        transaction_seconds=c.transaction_seconds.percentiles(),
        connections=pool.connections,
        connections_in_use=readers_in_use + (1 if pool._writer_busy else 0),
        in_flight=pool._in_flight,
        checkpoints=c.checkpoints,
        idle_checkpoints=c.idle_checkpoints,
        last_checkpoint=c.last_checkpoint,
    )
