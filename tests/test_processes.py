"""Several OS processes on one project: nothing acknowledged is lost; locks are waited for."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import pytest
from lock_holder import database_claim, hold_write_lock, release_write_lock, shm_claim

from demiarch_store import AsyncProjectStore, DatabaseBusy, NotFound, Store, StoreConfig

pytestmark = pytest.mark.anyio

HERE = Path(__file__).parent


async def test_processes_writing_one_project_lose_nothing(store: Store) -> None:
    project = await store.create_project(name="shared")
    async with project.transaction() as tx:
        conv = await tx.conversations.create(title="many processes")
    children = [
        await asyncio.create_subprocess_exec(
            sys.executable,
            str(HERE / "proc_writer.py"),
            str(project.path),
            conv.id,
            f"p{n}",
            "150",
            stdout=asyncio.subprocess.PIPE,
        )
        for n in range(3)
    ]

    async def local_writes() -> list[str]:
        ids = []
        for i in range(150):
            async with project.transaction() as tx:
                ids.append((await tx.messages.append(conv.id, role="user", content=f"l:{i}")).id)
        return ids

    async with asyncio.timeout(120):
        mine = await local_writes()
        outputs = [await child.communicate() for child in children]
    assert [child.returncode for child in children] == [0, 0, 0]
    acked = set(mine)
    for out, _ in outputs:
        acked |= {line.split()[1] for line in out.decode().splitlines() if line.startswith("ack")}
    assert len(acked) == 600
    async with project.read() as r:
        stored = {m.id for m in await r.messages.list(conv.id)}
    assert acked <= stored


async def test_write_waits_for_another_process_lock_then_goes_through(tmp_path: Path) -> None:
    config = StoreConfig(projects_dir=tmp_path, busy_deadline=20.0)
    async with AsyncProjectStore(tmp_path / "p.sqlite", config=config) as project:
        locker = await hold_write_lock(project.path)
        write = asyncio.create_task(_create(project, "waited"))
        await asyncio.sleep(0.5)
        assert not write.done()  # still waiting for the lock
        await release_write_lock(locker)
        async with asyncio.timeout(20):
            await write
        assert project.pool.counters.busy_retries > 0
        async with project.read() as r:
            assert [c.title for c in await r.conversations.list()] == ["waited"]


async def test_lock_held_past_the_deadline_raises_database_busy(tmp_path: Path) -> None:
    config = StoreConfig(projects_dir=tmp_path, busy_deadline=0.5)
    async with AsyncProjectStore(tmp_path / "p.sqlite", config=config) as project:
        locker = await hold_write_lock(project.path)
        try:
            with pytest.raises(DatabaseBusy) as info:
                await _create(project, "refused")
            message = str(info.value)
            assert "another process" in message and str(project.path) in message
            # Reads still work while another process holds the write lock (WAL).
            async with project.read() as r:
                assert await r.conversations.count() == 0
        finally:
            await release_write_lock(locker)
        await _create(project, "recovered")  # the store recovers once the lock is gone
        async with project.read() as r:
            assert [c.title for c in await r.conversations.list()] == ["recovered"]
        assert project.pool.counters.busy_errors == 1


async def _create(project: AsyncProjectStore, title: str) -> None:
    async with project.transaction() as tx:
        await tx.conversations.create(title=title)


async def test_a_read_sees_another_process_commit_made_before_it_began(tmp_path: Path) -> None:
    async with AsyncProjectStore(tmp_path / "p.sqlite") as project:  # the default StoreConfig
        writer = """
import sqlite3, sys, time
conn = sqlite3.connect(sys.argv[1], isolation_level=None)
conn.execute("INSERT INTO conversations (id, title, meta, created_at, updated_at) "
             "VALUES ('other', 'from another process', NULL, 0, 0)")
conn.close()
"""
        async with project.read() as first:
            assert await first.conversations.count() == 0
            # Nothing committed anywhere since: the WAL-index header is unchanged, so a new
            # snapshot may join the first one's read transaction.
            async with project.read() as joined:
                assert joined._worker is first._worker
                assert await joined.conversations.count() == 0
            child = await asyncio.create_subprocess_exec(
                sys.executable, "-c", writer, str(project.path)
            )
            async with asyncio.timeout(60):
                assert await child.wait() == 0
            async with project.read() as second:  # begun after the other commit, at once
                assert second._worker is not first._worker
                assert await second.conversations.count() == 1
            assert await first.conversations.count() == 0  # still its own snapshot


ACK_TRIES = 200


async def test_a_read_begun_after_another_process_acknowledged_a_write_sees_it(
    tmp_path: Path,
) -> None:
    """An agent worker (another process) acknowledges a message and passes its ID on; this
    process, with other snapshots busy all the while, opens a new read() and must find it.

    A read that joined a snapshot begun before the other process's commit would not: with the
    former default (``read_share_window`` of 10 ms) most tries here got ``NotFound``.
    """
    async with AsyncProjectStore(tmp_path / "p.sqlite") as project:  # the default StoreConfig
        async with project.transaction() as tx:
            conv = await tx.conversations.create(title="worker and service")
        writer = await asyncio.create_subprocess_exec(
            sys.executable,
            str(HERE / "ack_writer.py"),
            str(project.path),
            conv.id,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
        )
        assert writer.stdin is not None and writer.stdout is not None
        stop = False

        async def keep_snapshots_busy() -> None:
            while not stop:
                async with project.read() as r:
                    await r.conversations.get(conv.id)
                    await asyncio.sleep(0.001)

        busy = [asyncio.create_task(keep_snapshots_busy()) for _ in range(3)]
        missed: list[int] = []
        try:
            async with asyncio.timeout(120):
                for i in range(ACK_TRIES):
                    writer.stdin.write(b"write\n")
                    line = await writer.stdout.readline()
                    assert line.startswith(b"ack "), f"the writer process said {line!r}"
                    message_id = line.split()[1].decode()
                    async with project.read() as r:  # begun after the write was acknowledged
                        try:
                            await r.messages.get(message_id)
                        except NotFound:
                            missed.append(i)
        finally:
            stop = True
            async with asyncio.timeout(30):
                await asyncio.gather(*busy)
            writer.stdin.close()
            try:
                async with asyncio.timeout(30):
                    await writer.wait()
            finally:
                if writer.returncode is None:
                    writer.kill()
                    await writer.wait()
        assert writer.returncode == 0
        assert not missed, (
            f"{len(missed)} of {ACK_TRIES} reads begun after the other process acknowledged "
            f"its write did not see it (tries {missed[:10]}...)"
        )


async def test_the_wal_index_stays_claimed_while_a_project_is_open(tmp_path: Path) -> None:
    """Reading the WAL-index header (read epochs, commits in place) keeps SQLite's locks.

    Closing any descriptor of the -shm file would drop every POSIX lock this process holds on
    it; another process opening the database would then truncate the file under this one's
    connections. Two pools on one file share the descriptor: closing one keeps the claim.
    """
    path = tmp_path / "p.sqlite"
    async with AsyncProjectStore(path) as first:
        async with AsyncProjectStore(path) as second:
            for project in (first, second):
                async with project.transaction() as tx:  # a commit (in place)
                    conv = await tx.conversations.create(title="claimed")
                async with project.read() as r:  # a read epoch reads the header
                    assert (await r.conversations.get(conv.id)).title == "claimed"
            assert second.pool._wal_index.frames() > 0  # the header really was mapped
            assert await shm_claim(path) == "in use"
        assert await shm_claim(path) == "in use"
        async with first.transaction() as tx:
            await tx.conversations.create(title="after the other closed")
        assert await shm_claim(path) == "in use"
    assert await shm_claim(path) in ("free", "gone")  # (SQLite deletes it on the last close)


async def test_opening_a_project_again_in_this_process_keeps_its_locks(tmp_path: Path) -> None:
    """Opening a second store on a database this process has open must not open and close a
    descriptor of the file: that would drop the SHARED lock SQLite holds on it, and another
    process closing its last connection would then take the database for unused, checkpoint
    it and delete its WAL under this process."""
    path = tmp_path / "p.sqlite"
    async with AsyncProjectStore(path) as first:
        async with first.transaction() as tx:
            await tx.conversations.create(title="first")
        assert await database_claim(path) == "in use"
        async with AsyncProjectStore(path, create=False) as second:
            assert await database_claim(path) == "in use"
            async with second.read() as r:
                assert len(await r.conversations.list()) == 1
        assert await database_claim(path) == "in use"
    assert await database_claim(path) == "free"
