"""Units of work run in place on the event loop's thread while the writer's thread is idle."""

from __future__ import annotations

import contextlib
import logging
import sqlite3
from time import perf_counter
from typing import Any, Final

from ..engine import Op
from ..errors import StoreClosed
from .checkpointer import _checkpoint_passive, _restore_writer
from .connection import _BACKSTOP_FRAMES, _CHECKPOINT_FRAMES, _is_busy, _rollback_if_active, run_ops
from .state import ELSEWHERE, UNFINISHED, PoolState
from .wal_index import _u32
from .worker import small_unit
from .writer import _chain_lost, commit_job, end_held_job, interactive_job

log = logging.getLogger("demiarch_store")

_HERE_QUERY_SECONDS: Final = 0.002
"""The longest a unit of work's query runs in place (``Pool.interact_here``) before it is
interrupted and run on the writer's thread instead."""


_HERE_QUERY_STEPS: Final = 1000
"""SQLite virtual-machine steps between two looks at the clock while a query runs in place."""


class InPlace(PoolState):
    """Running small units of work on the event loop's thread."""

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
