"""Reads by primary key run in place, on the event loop's thread (``StoreConfig.inline_reads``).

The same connection and the same snapshot as the reader's thread would use, only while that
thread is idle; a first read that meets a lock goes to the thread instead of waiting on the loop.
"""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from ticker import ticking

from demiarch_store import (
    AsyncProjectStore,
    CorruptDatabase,
    NotFound,
    Store,
    StoreConfig,
)
from demiarch_store.sqlite import ELSEWHERE, Worker

pytestmark = pytest.mark.anyio


@pytest.fixture(params=[True, False], ids=["in-place", "threaded"])
async def either(request: pytest.FixtureRequest, config: StoreConfig) -> AsyncIterator[Store]:
    """A store with reads in place (the default) or with every read on a reader's thread."""
    async with Store(replace(config, inline_reads=request.param)) as store:
        yield store


def _reader(snapshot: Any) -> Worker:
    worker = snapshot._worker
    assert isinstance(worker, Worker)
    return worker


async def test_gets_answer_alike_in_place_and_on_the_thread(either: Store) -> None:
    """Records, a missing ID, a damaged row and the snapshot's isolation from a commit made
    after it was taken are the same on both paths; only the hops to the thread differ."""
    inline = either.config.inline_reads
    project = await either.create_project(name="either")
    async with project.transaction() as tx:
        conv = await tx.conversations.create(title="c")
        sent = await tx.messages.append_many(
            conv.id, [{"role": "user", "content": f"m{i}"} for i in range(5)]
        )
    raw = sqlite3.connect(project.path)
    with raw:
        raw.execute("UPDATE messages SET meta = 'not json{' WHERE id = ?", (sent[4].id,))
    async with project.read() as r:
        assert await r.messages.get(sent[0].id) == sent[0]  # takes the snapshot
        worker = _reader(r)
        hops = worker.submitted
        # Another connection commits a message now: this snapshot must not show it.
        with raw:
            raw.execute(
                "INSERT INTO messages (id, conversation_id, role, content, meta, created_at) "
                "SELECT '0zzzzzzzzzzzzzzzzzzzzzzzzz', conversation_id, role, 'late', meta, "
                "created_at FROM messages WHERE id = ?",
                (sent[0].id,),
            )
        assert [await r.messages.get(m.id) for m in sent[:4]] == sent[:4]
        with pytest.raises(NotFound):
            await r.messages.get("0zzzzzzzzzzzzzzzzzzzzzzzzz")
        with pytest.raises(CorruptDatabase) as caught:
            await r.messages.get(sent[4].id)
        assert caught.value.project == project.id and "not json" not in str(caught.value)
        # In place: no job reached the reader's thread. Threaded: one per get.
        assert worker.submitted - hops == (0 if inline else 6)
    raw.close()
    async with project.read() as r:
        assert (await r.messages.get("0zzzzzzzzzzzzzzzzzzzzzzzzz")).content == "late"


async def test_a_busy_first_read_goes_to_the_thread_without_waiting(
    project: AsyncProjectStore, tmp_path: Path
) -> None:
    """The read that takes a snapshot is the only one that could meet a lock. In place it runs
    with busy_timeout 0: a real SQLITE_BUSY (another connection's exclusive lock on a database
    the reader has attached) sends it to the thread, with nothing left begun and the reader's
    own busy_timeout restored; the thread then waits for the lock as always."""
    other_path = tmp_path / "other.sqlite"
    other = sqlite3.connect(other_path, isolation_level=None)
    other.execute("CREATE TABLE t (a)")
    seen: list[int] = []

    def count_other(conn: sqlite3.Connection, begin: bool) -> list[Any]:
        if begin:
            conn.execute("BEGIN")
        seen.append(conn.execute("PRAGMA busy_timeout").fetchone()[0])
        return conn.execute("SELECT count(*) FROM other.t").fetchall()

    pool = project.pool
    async with project.read() as r:
        worker = _reader(r)
        await worker.submit(lambda conn: conn.execute("ATTACH ? AS other", (str(other_path),)))
        try:
            other.execute("BEGIN EXCLUSIVE")
            assert pool.read_here(worker, count_other) is ELSEWHERE
            assert seen == [0]  # it did run in place, and could not wait there
            assert not worker.begun
            state = await worker.submit(
                lambda conn: (conn.in_transaction, conn.execute("PRAGMA busy_timeout").fetchone())
            )
            assert state == (False, (2000,))  # busy_deadline=2.0 in the test config
            on_thread = asyncio.ensure_future(r._read(count_other))
            await asyncio.sleep(0.05)
            assert not on_thread.done()  # the thread waits for the lock...
            other.execute("COMMIT")
            assert await on_thread == [(0,)]  # ...and reads once it is free
            assert seen == [0, 2000]
        finally:
            if other.in_transaction:
                other.execute("ROLLBACK")
            other.close()
    await worker.submit(lambda conn: conn.execute("DETACH other"))  # the snapshot has ended


async def test_reads_in_place_yield_to_the_event_loop(project: AsyncProjectStore) -> None:
    """A task reading in place in a loop still lets other tasks run: it yields at least once
    every four reads, as if each read had gone to the thread now and then."""
    async with project.transaction() as tx:
        conv = await tx.conversations.create(title="c")
        msg = await tx.messages.append(conv.id, role="user", content="hi")
    async with ticking() as ticks, project.read() as r:
        await r.messages.get(msg.id)
        worker = _reader(r)
        hops, before = worker.submitted, ticks.count
        for _ in range(40):
            assert await r.messages.get(msg.id) == msg
        assert worker.submitted == hops  # all forty ran in place
        assert ticks.count - before >= 40 // 4


async def test_a_get_never_uses_the_connection_while_its_thread_runs_a_job(
    project: AsyncProjectStore,
) -> None:
    """While the reader's thread runs a job, a get of the same snapshot waits for it there,
    after it, instead of using the connection beside it; once the thread is idle again, gets
    and the snapshot's end run in place."""
    async with project.transaction() as tx:
        conv = await tx.conversations.create(title="c")
        msg = await tx.messages.append(conv.id, role="user", content="hi")
    gate = threading.Event()
    async with project.read() as r:
        assert await r.messages.get(msg.id) == msg
        worker = _reader(r)
        blocker = worker.submit(lambda conn: gate.wait(10))
        get = asyncio.ensure_future(r.messages.get(msg.id))
        await asyncio.sleep(0.05)
        assert not get.done()  # queued behind the job, not run in place
        gate.set()
        assert await get == msg and await blocker
        hops = worker.submitted
        assert await r.messages.get(msg.id) == msg
    assert worker.submitted == hops  # the get and the snapshot's end ran in place
    assert await worker.submit(lambda conn: conn.in_transaction) is False


async def test_reads_in_place_and_on_the_thread_mix_consistently(config: StoreConfig) -> None:
    """Gets while the same reader's thread runs lists for other snapshots of the epoch: a get
    goes in place only when the thread is idle; every answer is right and consistent. (One
    reader, so that the lists and the gets share its thread: with several, the gets could
    all land on readers the lists never use.)"""
    async with Store(replace(config, max_readers=1)) as store:
        project = await store.create_project(name="one reader")
        assert await _mix(project) > 0


async def _mix(project: AsyncProjectStore) -> int:
    async with project.transaction() as tx:
        conv = await tx.conversations.create(title="c")
        sent = await tx.messages.append_many(
            conv.id, [{"role": "user", "content": f"m{i}"} for i in range(200)]
        )

    async def lister() -> None:
        for _ in range(20):
            async with project.read() as r:
                assert await r.messages.list(conv.id) == sent

    async def getter(k: int) -> int:
        in_place = 0
        for i in range(100):
            async with project.read() as r:
                worker = _reader(r)
                hops = worker.submitted
                message = sent[(k * 7 + i) % 200]
                assert await r.messages.get(message.id) == message
                in_place += worker.submitted == hops
        return in_place

    results = await asyncio.gather(lister(), lister(), *(getter(k) for k in range(8)))
    in_place = sum(n for n in results if isinstance(n, int))
    assert 0 < in_place < 800  # both paths were taken
    return in_place
