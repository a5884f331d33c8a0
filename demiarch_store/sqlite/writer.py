"""The writer: group commit, units that hold the writer, chains, the busy retry."""

from __future__ import annotations

import asyncio
import functools
import logging
import random
import sqlite3
import time
from typing import Any, Final

from ..engine import Op, settle
from ..errors import PoolTimeout, StorageError, StoreClosed
from .connection import _BACKOFF_BASE, _BACKOFF_CAP, _is_busy, _rollback_if_active, run_ops
from .state import _PENDING, ELSEWHERE, PoolState, _resolve, _retrieve, _Unit
from .worker import Job, small_unit

log = logging.getLogger("demiarch_store")

_CHAIN_MAX: Final = 64


_CHAIN_MAX_AGE: Final = 0.005


_GROUP_ROWS: Final = 2000
"""A group commit takes queued units until it holds this many rows (a unit is never split):
a transaction of tens of thousands of rows outgrows SQLite's page cache and runs slower."""


def begin_immediate(conn: sqlite3.Connection, deadline_s: float, pool: PoolState) -> None:
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
    conn: sqlite3.Connection, units: list[list[Op]], deadline_s: float, pool: PoolState
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
    pool: PoolState,
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


def _chain_lost(pool: PoolState) -> StorageError:
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
    pool: PoolState,
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


def commit_job(conn: sqlite3.Connection, ops: list[Op]) -> None:
    """Flush the last statements of an interactive unit and commit it."""
    try:
        run_ops(conn, ops)
        conn.execute("COMMIT")
    except BaseException:
        _rollback_if_active(conn)
        raise


class Writing(PoolState):
    """The writer connection: group commit, held units and chains."""

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
        """Wait for a commit that can no longer be stopped (``engine.settle``)."""
        try:
            await settle(fut, cancels=cancels)
        except asyncio.CancelledError:
            raise
        except BaseException as exc:
            raise self.translate(exc, "committing a transaction") from None

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
