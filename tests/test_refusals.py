"""What the library refuses: each case on real files, real processes and a real terminal.

Destructive operations touch only what the library made; a file from elsewhere is checked
against the schema the library's own revision makes before anything in it runs; misuse is an
error, never a silently dropped write. (README: "What the library refuses".)
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from demiarch_store import AsyncProjectStore, StoreError

pytestmark = pytest.mark.anyio


# -- misuse: a unit of work or a snapshot used without `async with` ----------------------------


async def test_a_transaction_without_async_with_refuses_a_write(project: AsyncProjectStore) -> None:
    tx = project.transaction()
    with pytest.raises(StoreError, match=r"without `async with`") as caught:
        await tx.conversations.create(title="never written")
    assert "async with project.transaction() as tx:" in str(caught.value)
    async with project.read() as r:
        assert await r.conversations.list() == []


async def test_a_transaction_without_async_with_refuses_a_read(project: AsyncProjectStore) -> None:
    tx = project.transaction()
    with pytest.raises(StoreError, match=r"without `async with`"):
        await asyncio.wait_for(tx.conversations.list(), timeout=10)
    # The writer was never taken: a real unit runs at once.
    async with asyncio.timeout(10), project.transaction() as real:
        await real.conversations.create(title="written")
    async with project.read() as r:
        assert [c.title for c in await r.conversations.list()] == ["written"]


async def test_a_read_without_async_with_refuses_a_read(project: AsyncProjectStore) -> None:
    r = project.read()
    with pytest.raises(StoreError, match=r"without `async with`") as caught:
        await r.conversations.list()
    assert "async with project.read() as r:" in str(caught.value)


async def test_a_read_without_async_with_refuses_a_write(project: AsyncProjectStore) -> None:
    r = project.read()
    with pytest.raises(StoreError, match=r"without `async with`"):
        await r.conversations.create(title="never written")


async def test_an_ended_transaction_still_says_it_has_ended(project: AsyncProjectStore) -> None:
    async with project.transaction() as tx:
        pass
    with pytest.raises(StoreError, match="the transaction has ended"):
        await tx.conversations.create(title="late")
