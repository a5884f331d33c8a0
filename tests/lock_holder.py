"""Another OS process that holds a database's write lock (BEGIN EXCLUSIVE) until released."""

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


async def hold_write_lock(path: Path) -> asyncio.subprocess.Process:
    """Start a process holding ``BEGIN EXCLUSIVE`` on ``path``; return once it holds it."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        LOCKER,
        str(path),
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
    )
    assert proc.stdout is not None
    async with asyncio.timeout(30):
        assert (await proc.stdout.readline()).strip() == b"locked"
    return proc


async def release_write_lock(proc: asyncio.subprocess.Process) -> None:
    """Let the holder commit and exit; check it exited cleanly."""
    assert proc.stdin is not None
    proc.stdin.write(b"go\n")
    async with asyncio.timeout(30):
        await proc.communicate()
    assert proc.returncode == 0
