"""Backups: consistent online snapshots written with SQLite's backup API, files 0600."""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

__all__ = ["write_snapshot"]


def write_snapshot(source: sqlite3.Connection, dest: Path) -> None:
    """Copy ``source`` into a new file ``dest`` (mode 0600), verify it, and fsync it.

    Runs on a connection thread. Uses SQLite's online backup API in one step, so the copy is
    one consistent snapshot that includes what sits in the ``-wal`` file. The file is created
    with ``O_EXCL|O_NOFOLLOW``: an existing file or a planted link is never overwritten. On any
    failure the partial file is removed and the error re-raised.
    """
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    fd = os.open(dest, flags, 0o600)
    try:
        os.fchmod(fd, 0o600)
    finally:
        os.close(fd)
    try:
        target = sqlite3.connect(dest, isolation_level=None)
        try:
            source.backup(target)
            # The copy inherits the source's WAL mode; a backup is one self-contained file.
            target.execute("PRAGMA journal_mode = DELETE")
            result = target.execute("PRAGMA integrity_check").fetchall()
            if result != [("ok",)]:
                raise sqlite3.DatabaseError(
                    f"the backup failed its integrity check: {result[0][0]}"
                )
        finally:
            target.close()
        fd = os.open(dest, os.O_RDONLY | os.O_CLOEXEC)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except BaseException:
        for suffix in ("", "-journal", "-wal", "-shm"):
            try:
                os.unlink(f"{dest}{suffix}")
            except FileNotFoundError:
                pass
        raise
