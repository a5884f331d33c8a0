"""The pool and the unit of work: concurrency, pragmas, savepoints, cancellation, timeouts."""

from __future__ import annotations

import asyncio
import random
import sqlite3
import threading
from pathlib import Path

import pytest

from demiarch_store import (
    AsyncProjectStore,
    ConstraintViolation,
    NotFound,
    PoolTimeout,
    Store,
    StoreClosed,
    StoreConfig,
    StoreError,
)

pytestmark = pytest.mark.anyio


async def test_hundreds_of_tasks_lose_nothing_and_keep_their_order(
    project: AsyncProjectStore,
) -> None:
    async with project.transaction() as tx:
        conv = await tx.conversations.create(title="crowd")
    tasks, per_task = 300, 10

    async def writer(n: int) -> list[str]:
        ids = []
        for i in range(per_task):
            async with project.transaction() as tx:
                m = await tx.messages.append(conv.id, role="user", content=f"{n}:{i}")
            ids.append(m.id)
            if i % 3 == 0:
                async with project.read() as r:
                    assert (await r.messages.get(m.id)).content == f"{n}:{i}"
        return ids

    acked = await asyncio.gather(*(writer(n) for n in range(tasks)))
    async with project.read() as r:
        stored = await r.messages.list(conv.id)
    assert len(stored) == tasks * per_task
    position = {m.id: k for k, m in enumerate(stored)}
    for n, ids in enumerate(acked):
        order = [position[i] for i in ids]
        assert order == sorted(order), f"task {n} out of order"
        assert [stored[position[i]].content for i in ids] == [f"{n}:{i}" for i in range(per_task)]
    assert project.pool.counters.groups < tasks * per_task  # writes were grouped


async def test_pragmas_are_set_on_every_connection(project: AsyncProjectStore) -> None:
    def pragmas(conn: sqlite3.Connection) -> dict[str, object]:
        names = [
            "journal_mode",
            "synchronous",
            "foreign_keys",
            "busy_timeout",
            "trusted_schema",
            "journal_size_limit",
            "query_only",
        ]
        return {n: conn.execute(f"PRAGMA {n}").fetchone()[0] for n in names}

    writer = await project.pool.writer.submit(pragmas)
    worker = await project.pool.acquire_reader()
    try:
        reader = await worker.submit(pragmas)
    finally:
        project.pool.release_reader(worker, started=False)
    for got in (writer, reader):
        assert got["journal_mode"] == "wal"
        assert got["synchronous"] == 1
        assert got["foreign_keys"] == 1
        assert got["trusted_schema"] == 0
        assert got["journal_size_limit"] == project.config.journal_size_limit
        assert int(got["busy_timeout"]) > 0  # type: ignore[call-overload]
    assert writer["query_only"] == 0
    assert reader["query_only"] == 1


async def test_synchronous_full_is_applied(tmp_path: Path) -> None:
    config = StoreConfig(projects_dir=tmp_path, synchronous="FULL")
    async with AsyncProjectStore(tmp_path / "full.sqlite", config=config) as project:
        got = await project.pool.writer.submit(
            lambda conn: conn.execute("PRAGMA synchronous").fetchone()[0]
        )
        assert got == 2


async def test_exception_rolls_back_the_whole_unit(project: AsyncProjectStore) -> None:
    with pytest.raises(RuntimeError):
        async with project.transaction() as tx:
            await tx.conversations.create(title="doomed")
            raise RuntimeError("boom")
    with pytest.raises(RuntimeError):
        async with project.transaction() as tx:
            await tx.conversations.create(title="doomed too")
            await tx.flush()  # reached the database, then rolled back
            raise RuntimeError("boom")
    async with project.read() as r:
        assert await r.conversations.count() == 0


async def test_nested_savepoints(project: AsyncProjectStore) -> None:
    async with project.transaction() as tx:
        kept = await tx.conversations.create(title="kept")
        with pytest.raises(ValueError):
            async with tx.savepoint():
                await tx.conversations.create(title="undone")
                async with tx.savepoint():
                    await tx.conversations.create(title="undone inner")
                raise ValueError
        async with tx.savepoint():
            inner = await tx.conversations.create(title="inner kept")
            await tx.flush()
            with pytest.raises(KeyError):
                async with tx.savepoint():
                    await tx.conversations.create(title="flushed then undone")
                    await tx.flush()
                    raise KeyError
        assert await tx.conversations.count() == 2  # reads its own writes
    async with project.read() as r:
        titles = [c.title for c in await r.conversations.list()]
    assert titles == [kept.title, inner.title]


async def test_a_failing_unit_does_not_sink_its_group(project: AsyncProjectStore) -> None:
    async with project.transaction() as tx:
        conv = await tx.conversations.create(title="group")

    async def good(i: int) -> None:
        async with project.transaction() as tx:
            await tx.messages.append(conv.id, role="user", content=str(i))

    async def bad() -> None:
        async with project.transaction() as tx:
            await tx.messages.append(conv.id, role="user", content="orphan-1")
            await tx.messages.append("no-such-conversation", role="user", content="orphan-2")

    results = await asyncio.gather(
        *(good(i) for i in range(20)),
        bad(),
        *(good(i) for i in range(20, 40)),
        return_exceptions=True,
    )
    errors = [r for r in results if isinstance(r, BaseException)]
    assert len(errors) == 1 and isinstance(errors[0], ConstraintViolation)
    assert "FOREIGN KEY" in str(errors[0]) and project.id in str(errors[0])
    async with project.read() as r:
        contents = {m.content for m in await r.messages.list(conv.id)}
    assert contents == {str(i) for i in range(40)}


async def test_update_and_delete_of_missing_rows_raise_not_found(
    project: AsyncProjectStore,
) -> None:
    with pytest.raises(NotFound, match="no conversation with id 'ghost'"):
        async with project.transaction() as tx:
            await tx.conversations.update("ghost", title="x")
    with pytest.raises(NotFound):
        async with project.transaction() as tx:
            await tx.conversations.delete("ghost")


async def test_cancellation_storm_leaves_units_all_or_nothing(
    project: AsyncProjectStore,
) -> None:
    async with project.transaction() as tx:
        conv = await tx.conversations.create(title="storm")
    committed: list[str] = []
    rng = random.Random(7)

    async def unit(n: int) -> None:
        tag = f"u{n}"
        async with project.transaction() as tx:
            await tx.messages.append(conv.id, role="user", content=f"{tag}-a")
            if n % 3 == 0:
                await tx.flush()  # holds the writer: cancellation lands mid-transaction
            await asyncio.sleep(rng.random() / 1000)
            await tx.messages.append(conv.id, role="user", content=f"{tag}-b")
        committed.append(tag)

    for _round in range(5):
        tasks = [asyncio.create_task(unit(n + 100 * _round)) for n in range(60)]
        await asyncio.sleep(rng.random() / 500)
        for t in tasks:
            if rng.random() < 0.6:
                t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async with project.read() as r:
        contents = [m.content for m in await r.messages.list(conv.id)]
    tags = {c.rsplit("-", 1)[0] for c in contents}
    for tag in tags:
        assert f"{tag}-a" in contents and f"{tag}-b" in contents, tag
    assert tags == set(committed)
    # The store is healthy afterwards: writes and reads go through at once.
    async with asyncio.timeout(10):
        async with project.transaction() as tx:
            await tx.messages.append(conv.id, role="user", content="after")
        async with project.read() as r:
            assert (await r.messages.list(conv.id))[-1].content == "after"
    assert project.pool._in_flight == 0


async def test_cancelled_while_commit_in_flight_is_not_reported_as_cancelled(
    project: AsyncProjectStore,
) -> None:
    async with project.transaction() as tx:
        conv = await tx.conversations.create(title="shield")
    outcomes: list[str] = []

    async def unit() -> None:
        async with project.transaction() as tx:
            await tx.messages.append(conv.id, role="user", content="x")
        outcomes.append("block returned")  # only if the commit happened
        await asyncio.sleep(0)  # the pending cancellation is delivered here

    # Occupy the writer so the next group is sent while we cancel.
    for _ in range(50):
        task = asyncio.create_task(unit())
        for _ in range(random.randint(0, 3)):
            await asyncio.sleep(0)
        task.cancel()
        try:
            await task
        except asyncio.CancelledError:
            pass
    async with project.read() as r:
        stored = len(await r.messages.list(conv.id))
    assert stored == len(outcomes)


async def test_pool_timeout_for_readers_and_writer(tmp_path: Path) -> None:
    config = StoreConfig(projects_dir=tmp_path, max_readers=1, acquire_timeout=0.2)
    async with AsyncProjectStore(tmp_path / "p.sqlite", config=config) as project:
        # Overlapping read() snapshots share a read epoch, so hold the only reader alone.
        worker = await project.pool.acquire_reader()
        with pytest.raises(PoolTimeout, match="max_readers=1"):
            async with project.read():
                pass
        project.pool.release_reader(worker, started=False)
        async with project.transaction() as tx:
            await tx.conversations.count()  # holds the writer
            with pytest.raises(PoolTimeout, match="writer"):
                async with project.transaction() as other:
                    await other.conversations.count()
            with pytest.raises(PoolTimeout, match="writer"):
                async with project.transaction() as queued:  # write-only: waits in the queue
                    await queued.conversations.create(title="never")
        # Both pools recover.
        async with project.read() as r:
            assert await r.conversations.count() == 0
        async with project.transaction() as tx:
            await tx.conversations.create(title="after")
        async with project.read() as r:
            assert [c.title for c in await r.conversations.list()] == ["after"]
        assert project.pool.counters.pool_timeouts == 3


async def test_writes_in_a_snapshot_are_refused(project: AsyncProjectStore) -> None:
    async with project.read() as r:
        with pytest.raises(StoreError, match="cannot write in a read snapshot"):
            await r.conversations.create(title="x")


async def test_snapshot_is_consistent(project: AsyncProjectStore) -> None:
    async with project.read() as r:
        before = await r.conversations.count()
        async with project.transaction() as tx:
            await tx.conversations.create(title="new")
        assert await r.conversations.count() == before
    async with project.read() as r:
        assert await r.conversations.count() == before + 1


async def test_close_waits_for_work_and_joins_threads(config: StoreConfig) -> None:
    store = Store(config)
    project = await store.create_project(name="closing")
    async with project.transaction() as tx:
        conv = await tx.conversations.create(title="c")

    started = asyncio.Event()

    async def slow_unit() -> None:
        async with project.transaction() as tx:
            started.set()
            await asyncio.sleep(0.2)
            await tx.messages.append(conv.id, role="user", content="late")

    task = asyncio.create_task(slow_unit())
    await started.wait()
    await store.close()
    await task
    await store.close()  # idempotent
    await project.close()
    assert [t.name for t in threading.enumerate() if t.name.startswith("demiarch")] == []
    with pytest.raises(StoreClosed):
        project.transaction()
    with pytest.raises(StoreClosed):
        await store.open_project(project.id)
    async with AsyncProjectStore(project.path) as again:
        async with again.read() as r:
            assert [m.content for m in await r.messages.list(conv.id)] == ["late"]


async def test_transaction_objects_refuse_use_after_the_block(project: AsyncProjectStore) -> None:
    async with project.transaction() as tx:
        pass
    with pytest.raises(StoreError, match="ended"):
        await tx.conversations.create(title="late")
    async with project.read() as r:
        pass
    with pytest.raises(StoreError, match="ended"):
        await r.conversations.count()


async def test_error_messages_never_contain_written_values(project: AsyncProjectStore) -> None:
    secret = "sk-live-0123456789abcdef"
    with pytest.raises(ConstraintViolation) as info:
        async with project.transaction() as tx:
            await tx.messages.append("missing-conversation", role="user", content=secret)
    assert secret not in str(info.value) and secret not in repr(info.value)
    assert project.id in str(info.value) and str(project.path) in str(info.value)
    assert "referenced record does not exist" in str(info.value)
    assert info.value.__cause__ is not None  # the driver error is chained, not lost
