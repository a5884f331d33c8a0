"""Other OS processes: one that holds a database open or its write lock until released, and
one that tells whether any process holds a lock on a file."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

LOCKER = """
import sqlite3, sys
conn = sqlite3.connect(sys.argv[1], isolation_level=None)
conn.execute("BEGIN EXCLUSIVE")
print("locked", flush=True)
sys.stdin.readline()
conn.execute("COMMIT")
conn.close()
"""


OPENER = """
import sqlite3, sys
conn = sqlite3.connect(sys.argv[1], isolation_level=None)
conn.execute("SELECT count(*) FROM messages").fetchone()
print("open", flush=True)
sys.stdin.readline()
conn.close()
"""


async def _start(script: str, path: Path, ready: bytes) -> asyncio.subprocess.Process:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        script,
        str(path),
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
    )
    assert proc.stdout is not None
    async with asyncio.timeout(30):
        assert (await proc.stdout.readline()).strip() == ready
    return proc


async def hold_write_lock(path: Path) -> asyncio.subprocess.Process:
    """Start a process holding ``BEGIN EXCLUSIVE`` on ``path``; return once it holds it."""
    return await _start(LOCKER, path, b"locked")


async def hold_open(path: Path) -> asyncio.subprocess.Process:
    """Start a process with ``path`` open (it has read it, holds no lock); return then."""
    return await _start(OPENER, path, b"open")


async def release_write_lock(proc: asyncio.subprocess.Process) -> None:
    """Let the holder (of the lock, or of the open file) finish and exit; check it did cleanly."""
    assert proc.stdin is not None
    proc.stdin.write(b"go\n")
    async with asyncio.timeout(30):
        await proc.communicate()
    assert proc.returncode == 0


_PROBE_LOCK = """
import fcntl, os, sys
try:
    fd = os.open(sys.argv[1], os.O_RDWR)
except FileNotFoundError:
    print("gone")
    sys.exit()
try:
    fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB, int(sys.argv[3]), int(sys.argv[2]), os.SEEK_SET)
except OSError:
    print("in use")
else:
    print("free")
"""


async def claim(path: Path, start: int, length: int) -> str:
    """Ask another process whether any process holds a lock on ``length`` bytes of ``path``.

    POSIX locks never conflict within one process, so only another process can tell.
    """
    child = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        _PROBE_LOCK,
        str(path),
        str(start),
        str(length),
        stdout=asyncio.subprocess.PIPE,
    )
    async with asyncio.timeout(30):
        out, _ = await child.communicate()
    assert child.returncode == 0
    return out.decode().strip()


async def shm_claim(path: Path) -> str:
    """SQLite's claim on the WAL index: a read lock on the -shm file's DMS byte (128)."""
    return await claim(Path(f"{path}-shm"), 128, 1)


async def database_claim(path: Path) -> str:
    """A connection in WAL mode holds a SHARED lock on the database file while it is open: a
    read lock in SQLite's shared byte range (from 2**30 + 2, 510 bytes)."""
    return await claim(path, 2**30 + 2, 510)
