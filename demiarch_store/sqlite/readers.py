"""The readers: reader connections and the read epochs that overlapping snapshots share."""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from typing import Any, Final

from ..errors import PoolTimeout
from .connection import _is_busy, _rollback_if_active, connect
from .state import ELSEWHERE, PoolState
from .worker import Job, Worker

log = logging.getLogger("demiarch_store")

_EPOCH_MAX_HOLDERS: Final = 256
"""Snapshots one read epoch takes at most. High on purpose: one reader thread serving every
overlapping snapshot beats two threads taking turns at the GIL (W2 at 64 tasks: +35%)."""


class Reading(PoolState):
    """The reader connections and shared read epochs."""

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
