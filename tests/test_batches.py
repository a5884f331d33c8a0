"""Batches of rows on both engines: what goes in comes back, in order, or nothing does.

On PostgreSQL a batch of a plain INSERT goes as a few multi-row statements (``run_ops``); these
tests hold it to the same results as SQLite's ``executemany``: every row and value, the order,
chunks of uneven size, batches of concurrent units committed together, and a failing batch that
writes nothing.
"""

from __future__ import annotations

import asyncio

import pytest

from demiarch_store import Store, StoreConfig, StoreError

pytestmark = pytest.mark.anyio

ROWS = 2_500  # 6 columns: 1,000 rows a statement on PostgreSQL, so 1,000 + 1,000 + 500


async def test_a_big_batch_comes_back_whole_and_in_order(engine_config: StoreConfig) -> None:
    rows = [
        {
            "role": ("user", "assistant", "tool")[i % 3],
            "content": f"message {i} \N{SNOWMAN} 'quoted' %s %(x)s ?",
            "meta": None if i % 2 else {"i": i, "nested": {"ok": True}, "list": [1, "two"]},
        }
        for i in range(ROWS)
    ]
    async with asyncio.timeout(120), Store(engine_config) as store:
        project = await store.create_project(name="batches")
        async with project.transaction() as tx:
            conv = await tx.conversations.create(title="big")
            written = await tx.messages.append_many(conv.id, rows)
        async with project.read() as r:
            back = await r.messages.list(conv.id)
        assert [m.id for m in back] == [m.id for m in written]
        assert [(m.role, m.content, m.meta) for m in back] == [
            (row["role"], row["content"], row["meta"]) for row in rows
        ]


async def test_concurrent_batches_all_land(engine_config: StoreConfig) -> None:
    async with asyncio.timeout(120), Store(engine_config) as store:
        project = await store.create_project(name="batches")
        async with project.transaction() as tx:
            conv = await tx.conversations.create(title="many")

        async def batch(task: int) -> None:
            rows = [{"role": "tool", "content": f"{task}-{i}"} for i in range(300 + task)]
            async with project.transaction() as tx:
                await tx.messages.append_many(conv.id, rows)

        await asyncio.gather(*(batch(t) for t in range(8)))
        async with project.read() as r:
            back = await r.messages.list(conv.id)
        assert sorted(m.content for m in back) == sorted(
            f"{t}-{i}" for t in range(8) for i in range(300 + t)
        )


async def test_a_failing_batch_writes_nothing(engine_config: StoreConfig) -> None:
    async with asyncio.timeout(120), Store(engine_config) as store:
        project = await store.create_project(name="batches")
        async with project.transaction() as tx:
            conv = await tx.conversations.create(title="kept")
        rows = [{"role": "user", "content": str(i)} for i in range(1_500)]
        with pytest.raises(StoreError):
            async with project.transaction() as tx:
                await tx.messages.append_many(conv.id, rows)
                await tx.messages.append_many("01nosuchconversation00000", rows)
        async with project.read() as r:
            assert await r.messages.list(conv.id) == []
