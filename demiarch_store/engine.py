"""The engine boundary: what units of work and repositories need from a storage engine.

Repositories build SQL and hand it to a *session* (a unit of work or a read snapshot) through
the few calls of ``Runner``; each engine's package (``demiarch_store.sqlite``) implements them
with its own connections. Nothing here imports an engine, so imports run one way:
``engine`` <- ``repositories`` <- ``transaction`` <- the engine's pool.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol

if TYPE_CHECKING:
    from .errors import CorruptDatabase, NotFound

__all__ = ["Op", "Runner", "settle"]


class Op(NamedTuple):
    """One statement of a unit of work, run later on the writer."""

    sql: str
    params: Any
    many: bool = False
    missing: str | None = None
    """If set, the statement must change a row; the text says what was missing."""


class Runner(Protocol):
    """What a repository runs its statements on: a unit of work or a read snapshot."""

    dialect: str
    """``"sqlite"`` or ``"postgresql"``: the few queries SQL cannot say the same way on both
    (JSON) pick their text by it."""

    def defer(self, op: Op) -> None:
        """Queue a write for commit."""

    async def fetch(self, sql: str, params: Mapping[str, Any]) -> list[Any]:
        """Run one query and return its rows."""

    async def fetch_by_id(self, sql: str, id: str, select_in: str) -> list[Any]:
        """Run ``sql`` (a read of one row by ``:id``); ``select_in`` reads several at once."""

    def damaged(self, noun: str, exc: Exception) -> CorruptDatabase:
        """The error for a stored row a column's converter cannot read (never its value)."""

    def not_found(self, message: str) -> NotFound:
        """The error for a record that is not there."""


async def settle(fut: asyncio.Future[Any], *, cancels: int) -> None:
    """Wait for a commit that can no longer be stopped; raise its error, if any, as is.

    Cancelling a unit of work never leaves its caller guessing: a cancellation that arrives
    (or arrived: ``cancels``) while the commit is in flight waits for its outcome. If the unit
    committed, the caller gets no error now and the cancellation at its next ``await``; if not,
    ``CancelledError``. So ``CancelledError`` from a unit of work means it was not applied.
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
        raise outcome
