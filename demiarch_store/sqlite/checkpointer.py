"""The checkpointer: a connection of its own that keeps the WAL short, and idle upkeep."""

from __future__ import annotations

import logging
import os
import sqlite3
import time
from typing import Any

from ..errors import StoreClosed
from ..health import UPKEEP_COMMITS, UPKEEP_SECONDS, _checkpoint, _size
from .connection import _BACKSTOP_FRAMES, _CHECKPOINT_FRAMES, _WRITER_BUSY_MS, connect
from .state import PoolState
from .worker import Worker

log = logging.getLogger("demiarch_store")


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


class Checkpointing(PoolState):
    """Keeping the WAL short: the checkpointer connection and idle upkeep."""

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


def idle_checkpoint(conn: sqlite3.Connection, pool: PoolState) -> None:
    """Reset a grown WAL with a ``TRUNCATE`` checkpoint (a writer job, posted when idle).

    Never waits for readers: with ``busy_timeout`` at 0 a blocked checkpoint returns at once,
    copies what it can, and is tried again at the next idle moment.
    """
    wal = _size(f"{pool.path}-wal")
    if wal <= pool.config.wal_checkpoint_bytes:
        return
    previous = conn.execute("PRAGMA busy_timeout").fetchone()[0]
    conn.execute("PRAGMA busy_timeout = 0")
    try:
        result = _checkpoint(conn, "TRUNCATE", wal)
    finally:
        conn.execute(f"PRAGMA busy_timeout = {int(previous)}")
    pool.counters.idle_checkpoints += 1  # only the writer thread writes these two
    pool.counters.last_checkpoint = result
    if result.blocked:
        log.info(
            "WAL of %s is %d bytes; a reader kept %d of %d frames from the checkpoint",
            pool.path,
            wal,
            result.log_frames - result.checkpointed_frames,
            result.log_frames,
        )
    else:
        log.debug("WAL of %s checkpointed and truncated from %d bytes", pool.path, wal)


def optimize_on_close(conn: sqlite3.Connection) -> None:
    """Run ``PRAGMA optimize`` before the writer closes (best effort: another process may lock)."""
    try:
        # Bounds the ANALYZE work optimize may start, so closing a big project stays quick.
        conn.execute("PRAGMA analysis_limit = 1000")
        conn.execute("PRAGMA optimize")
    except sqlite3.Error as exc:
        log.debug("PRAGMA optimize on close skipped: %s", exc)
