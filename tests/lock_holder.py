"""Another OS process that holds a database open, or its write lock, until released."""

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
