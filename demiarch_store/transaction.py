"""The unit of work (``project.transaction()``) and the read snapshot (``project.read()``)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from time import perf_counter
from types import TracebackType
from typing import Any

from .engine import Op
from .errors import CorruptDatabase, NotFound, StoreError
from .repositories import Repositories
from .sqlite.pool import Pool
from .sqlite.state import ELSEWHERE, UNFINISHED
from .sqlite.worker import Worker, point_read_job, read_job, small_unit
from .sqlite.writer import interactive_job

__all__ = ["Session", "Snapshot", "Transaction"]

log = logging.getLogger("demiarch_store")


def _not_entered(pool: Pool, method: str, name: str) -> StoreError:
    """The error for a unit or snapshot used without ``async with`` (its work would be lost)."""
    return StoreError(
        f"project.{method}() was used without `async with`: nothing was written or read",
        project=pool.project,
        path=pool.path,
        hint=f"write `async with project.{method}() as {name}:` and use {name} inside the block",
    )


class Session(Repositories):
    """What repositories run on (``engine.Runner``): a unit of work or a snapshot."""

    _pool: Pool
    dialect = "sqlite"

    def defer(self, op: Op) -> None:
        """Queue a write for commit."""
        raise StoreError(
            "cannot write in a read snapshot",
            project=self._pool.project,
            path=self._pool.path,
            hint="write inside `async with project.transaction() as tx:`",
        )

    async def fetch(self, sql: str, params: Mapping[str, Any]) -> list[Any]:
        """Run one query and return its rows."""
        raise NotImplementedError  # pragma: no cover - both subclasses define it

    def damaged(self, noun: str, exc: Exception) -> CorruptDatabase:
        """The error for a stored row a column's converter cannot read (never its value)."""
        return CorruptDatabase(
            f"a stored {noun} could not be read: a value is damaged ({type(exc).__name__})",
            project=self._pool.project,
            path=self._pool.path,
            hint="run `demiarch-store check` on the project; restore it from a backup",
        )

    async def fetch_by_id(self, sql: str, id: str, select_in: str) -> list[Any]:
        """Run ``sql`` (a read of one row by ``:id``); ``select_in`` reads several at once."""
        return await self.fetch(sql, {"id": id})

    def not_found(self, message: str) -> NotFound:
        return NotFound(
            message,
            project=self._pool.project,
            path=self._pool.path,
            hint="check the ID; it may be mistyped or the record deleted",
        )


class Transaction(Session):
    """One unit of work: commits when its block ends, rolls back on any exception.

    Writes are collected and sent to the writer in one hop at commit. A read inside the unit
    first takes the writer for the unit (``BEGIN IMMEDIATE``, or a savepoint in the transaction
    of the units that read just before it: see ``Pool.start_held``) and flushes the writes so
    far, so the unit reads its own writes.
    """

    def __init__(self, pool: Pool) -> None:
        self._pool = pool
        self._ops: list[Op] = []
        self._flushed = 0
        self._held = False
        self._ended = True  # until __aenter__: a unit used without `async with` must not run
        self._failed: BaseException | None = None
        self._depth = 0
        self._t0 = 0.0

    async def __aenter__(self) -> Transaction:
        self._pool.enter()
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
        pool = self._pool
        try:
            if self._held:
                if exc is None and self._failed is None:
                    await pool.commit_held(self._ops[self._flushed :])
                else:
                    pool.abort_held()
                    pool.counters.rollbacks += 1
            elif exc is None and self._ops:
                await pool.commit_group(self._ops)
            elif exc is not None:
                pool.counters.rollbacks += 1
        finally:
            pool.leave()
            elapsed = perf_counter() - self._t0
            pool.counters.transaction_seconds.add(elapsed)
            if elapsed >= pool.config.slow_transaction:
                # Counts only: statement parameters may hold secrets.
                log.warning(
                    "slow transaction in project %s: %.3fs, %d statements",
                    pool.project,
                    elapsed,
                    len(self._ops),
                )

    def _check(self) -> None:
        if self._ended:
            if not self._t0:
                raise _not_entered(self._pool, "transaction", "tx")
            raise StoreError(
                "the transaction has ended",
                project=self._pool.project,
                path=self._pool.path,
                hint="use the repositories only inside the `async with` block",
            )
        if self._failed is not None:
            raise StoreError(
                "the transaction failed earlier and will be rolled back",
                project=self._pool.project,
                path=self._pool.path,
                hint="leave the `async with` block and start a new transaction",
            ) from self._failed

    def defer(self, op: Op) -> None:
        self._check()
        self._ops.append(op)

    async def fetch(self, sql: str, params: Mapping[str, Any]) -> list[Any]:
        # Every query of a unit may run in place while the writer's thread is idle
        # (Pool.interact_here): the unit holds the writer, so nothing else uses it meanwhile.
        return await self._interact(sql, params, here=True)  # type: ignore[no-any-return]

    async def flush(self) -> None:
        """Send the writes so far to the database now (errors surface here, not at commit)."""
        await self._interact(None, None)

    async def fetch_by_id(self, sql: str, id: str, select_in: str) -> list[Any]:
        # One row by primary key: cannot run long in place, so no progress handler for it.
        return await self._interact(  # type: ignore[no-any-return]
            sql, {"id": id}, here=True, bounded=False
        )

    async def _interact(
        self,
        sql: str | None,
        params: Mapping[str, Any] | None,
        *,
        here: bool = False,
        bounded: bool = True,
    ) -> Any:
        self._check()
        pool = self._pool
        start = 0
        if not self._held:
            if here and pool.yield_due():
                await asyncio.sleep(0)  # (reads in place never suspend; nothing is held yet)
            if pool.take_writer():
                pool.counters.pool_wait.add(0.0)
            else:
                t0 = perf_counter()
                await pool.acquire_writer(chain=True)
                pool.counters.pool_wait.add(perf_counter() - t0)
            self._held = True
            start = pool.start_held()
        ops = self._ops[self._flushed :]
        self._flushed = len(self._ops)
        try:
            if here and (not ops or small_unit(ops)):
                rows = pool.interact_here(start, ops, sql, params, bounded)
                if rows is UNFINISHED:
                    start, ops = 0, []  # begun and flushed in place; the query goes on below
                elif rows is not ELSEWHERE:
                    return rows
            return await pool.writer.submit(
                interactive_job, start, ops, sql, params, pool.config.busy_deadline, pool
            )
        except asyncio.CancelledError:
            self._failed = asyncio.CancelledError()
            raise
        except BaseException as exc:
            err = pool.translate(exc, "running a transaction")
            self._failed = err
            raise err from None

    @asynccontextmanager
    async def savepoint(self) -> AsyncIterator[Transaction]:
        """Nest a unit: an exception inside undoes only the writes made inside, then propagates."""
        self._check()
        self._depth += 1
        name = f"sp{self._depth}"
        mark = len(self._ops)
        self._ops.append(Op(f"SAVEPOINT {name}", ()))
        try:
            yield self
        except BaseException:
            if mark >= self._flushed:
                del self._ops[mark:]  # never reached the database
            else:
                # Writes queued since the last flush never reached the database: drop them
                # rather than replay them at commit, where one could fail the whole unit.
                del self._ops[self._flushed :]
                self._ops.append(Op(f"ROLLBACK TO {name}", ()))
                self._ops.append(Op(f"RELEASE {name}", ()))
            raise
        else:
            if mark >= self._flushed:
                del self._ops[mark]  # the savepoint is not needed any more
            else:
                self._ops.append(Op(f"RELEASE {name}", ()))
        finally:
            self._depth -= 1


class Snapshot(Session):
    """A read-only, consistent view on a reader connection, taken at its first query.

    Overlapping snapshots may share one read transaction (see ``Pool.acquire_shared``); each
    still sees one state, which includes every unit acknowledged before it began.
    """

    def __init__(self, pool: Pool) -> None:
        self._pool = pool
        self._worker: Worker | None = None
        self._entered = False

    async def __aenter__(self) -> Snapshot:
        pool = self._pool
        pool.enter()
        worker = pool.join_shared()
        if worker is not None:  # joined a read epoch: no wait (the common case under load)
            pool.counters.pool_wait.add(0.0)
            self._worker = worker
            self._entered = True
            return self
        try:
            t0 = perf_counter()
            self._worker = await pool.acquire_shared()
            pool.counters.pool_wait.add(perf_counter() - t0)
        except BaseException:
            pool.leave()
            raise
        self._entered = True
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        worker, self._worker = self._worker, None
        if worker is not None:
            self._pool.release_shared(worker)
        self._pool.leave()

    def defer(self, op: Op) -> None:
        if not self._entered:
            raise _not_entered(self._pool, "read", "r")
        super().defer(op)

    async def fetch_by_id(self, sql: str, id: str, select_in: str) -> list[Any]:
        # In place when the reader's thread is idle (Pool.read_here); otherwise point reads
        # queued together on the reader run as one query (Worker._point_reads).
        return await self._read(point_read_job, sql, {"id": id}, select_in, here=True)

    async def fetch(self, sql: str, params: Mapping[str, Any]) -> list[Any]:
        return await self._read(read_job, sql, params)

    async def _read(self, job: Any, *args: Any, here: bool = False) -> list[Any]:
        worker = self._worker
        pool = self._pool
        if worker is None:
            if not self._entered:
                raise _not_entered(pool, "read", "r")
            raise StoreError(
                "the read snapshot has ended",
                project=pool.project,
                path=pool.path,
                hint="use the repositories only inside the `async with` block",
            )
        if here:
            try:
                rows = pool.read_here(worker, job, *args)
            except Exception as exc:
                raise pool.translate(exc, "reading") from None
            if rows is not ELSEWHERE:
                if pool.yield_due():
                    await asyncio.sleep(0)
                return rows  # type: ignore[no-any-return]
        # The first query of a read epoch begins its transaction; the others run inside it
        # (the worker runs jobs in order).
        begin = not worker.begun
        worker.begun = True
        serial = worker.epoch_serial
        try:
            rows = await worker.submit(job, begin, *args)
        except asyncio.CancelledError:
            raise
        except BaseException as exc:
            raise pool.translate(exc, "reading") from None
        if worker.epoch_serial == serial:
            worker.established = serial  # the snapshot is taken: reads may now run in place
        return rows  # type: ignore[no-any-return]
