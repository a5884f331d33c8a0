"""Checkpoints run on the checkpointer's connection, off the commit path.

Once 1,000 frames of the WAL wait to be copied into the database, the pool starts a PASSIVE
checkpoint on a connection and thread of its own; the writer's own automatic checkpoint is
only a backstop, at 4,000 frames.
"""

from __future__ import annotations

import asyncio
import threading
from dataclasses import replace

import pytest

from demiarch_store import AsyncProjectStore, Store, StoreConfig

pytestmark = pytest.mark.anyio


async def _writer_autocheckpoint(project: AsyncProjectStore) -> int:
    return await project.pool.writer.submit(  # type: ignore[no-any-return]
        lambda conn: conn.execute("PRAGMA wal_autocheckpoint").fetchone()[0]
    )


@pytest.mark.parametrize("kind", ["batches", "units that read"])
async def test_the_checkpointer_copies_the_wal_while_the_writer_commits(
    config: StoreConfig, kind: str
) -> None:
    """Commits on the writer's thread (a group of one batch, or units that read and hold the
    writer) start a checkpoint on the checkpointer once the WAL holds 1,000 uncopied frames."""
    async with Store(replace(config, inline_writes=False)) as store:
        project = await store.create_project(name="busy")
        async with project.transaction() as tx:
            conv = await tx.conversations.create(title="c")
        assert await _writer_autocheckpoint(project) == 4000  # only the backstop
        size = project.path.stat().st_size
        rows = [{"role": "tool", "content": "x" * 300}] * 1000
        for _ in range(12):  # each adds about 100 frames of table and index pages
            async with project.transaction() as tx:
                if kind == "units that read":
                    await tx.conversations.get(conv.id)
                    for _ in range(10):
                        await tx.messages.append_many(conv.id, rows[:100])
                else:
                    await tx.messages.append_many(conv.id, rows)
        checkpointer = project.pool._checkpointer
        assert checkpointer is not None
        # The last checkpoint may still be copying; the checkpointer runs its jobs in order.
        await asyncio.wait_for(checkpointer.submit(lambda conn: None), 10)
        assert project.stats().checkpoints >= 1
        names = {t.name for t in threading.enumerate()}
        assert f"demiarch-checkpoint-{project.id}" in names
        assert project.path.stat().st_size > size  # frames were copied into the database
        async with project.read() as r:
            assert await r.messages.count(conv.id) == 12_000
    assert not any(t.name.startswith("demiarch-checkpoint") for t in threading.enumerate())


async def test_a_project_that_writes_little_opens_no_checkpointer(
    project: AsyncProjectStore,
) -> None:
    async with project.transaction() as tx:
        conv = await tx.conversations.create(title="c")
        await tx.messages.append_many(conv.id, [{"role": "user", "content": "hi"}] * 50)
    assert project.pool._checkpointer is None
    assert project.stats().checkpoints == 0
