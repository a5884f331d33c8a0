"""Opening a SQLite connection: pragmas, WAL, the checks before any write; running statements."""

from __future__ import annotations

import logging
import os
import random
import sqlite3
import time
import urllib.parse
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Final

from ..config import StoreConfig
from ..engine import Op
from ..errors import StoreError
from ..schema import explain_foreign_key
from .worker import Job

log = logging.getLogger("demiarch_store")

_BUSY_CODES: Final = {sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED}


_BACKOFF_BASE: Final = 0.002


_BACKOFF_CAP: Final = 0.25


_CHECKPOINT_FRAMES: Final = 1000
"""WAL frames not yet copied into the database that start a checkpoint on the checkpointer
(SQLite's own threshold for its automatic checkpoint)."""


_BACKSTOP_FRAMES: Final = 4 * _CHECKPOINT_FRAMES
"""The writer's own ``wal_autocheckpoint``. Only a write transaction that begins once every
frame is copied starts the WAL over, and under steady writes one always begins while the
checkpointer is still copying: the writer's automatic checkpoint then copies what is left (a
few hundred frames, not a thousand) and the WAL starts over."""


_WRITER_BUSY_MS: Final = 50


class RowMissing(Exception):
    """Raised on a connection thread when an UPDATE or DELETE matched no row."""


def run_ops(conn: sqlite3.Connection, ops: Sequence[Op]) -> None:
    """Run the statements of a unit of work, in order."""
    for sql, params, many, missing in ops:
        try:
            cur = conn.executemany(sql, params) if many else conn.execute(sql, params)
        except sqlite3.IntegrityError as exc:
            if getattr(exc, "sqlite_errorcode", 0) == sqlite3.SQLITE_CONSTRAINT_FOREIGNKEY:
                exc.foreign_key = explain_foreign_key(sql, params)  # type: ignore[attr-defined]
            raise
        if missing is not None and cur.rowcount == 0:
            raise RowMissing(missing)


def _is_busy(exc: sqlite3.Error) -> bool:
    code = getattr(exc, "sqlite_errorcode", 0)
    return isinstance(code, int) and (code & 0xFF) in _BUSY_CODES


def _rollback_if_active(conn: sqlite3.Connection) -> None:
    if conn.in_transaction:
        conn.execute("ROLLBACK")


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


def readonly_uri(path: Path) -> str:
    """Return a URI that reads ``path`` without creating or writing any file.

    ``mode=ro`` alone is not enough: a read-only connection to a WAL-mode database creates the
    ``-wal`` and ``-shm`` files when they are missing (and cannot delete them again). So a
    database whose ``-wal`` and ``-shm`` exist (a process has it open, or left them behind) is
    read with ``mode=ro`` through them, which sees every committed transaction; any other is
    read with ``immutable=1``: no locks, no side files. A writer that starts meanwhile can make
    that read fail; ``describe`` then reads again.
    """
    quoted = urllib.parse.quote(str(path))
    if os.path.exists(f"{path}-wal") and os.path.exists(f"{path}-shm"):
        return f"file:{quoted}?mode=ro"
    return f"file:{quoted}?mode=ro&immutable=1"
