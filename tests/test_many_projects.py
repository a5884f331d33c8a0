"""Many projects in one service: a bounded LRU of open projects, each opened once."""

from __future__ import annotations

import asyncio
import threading

import pytest

from demiarch_store import Store, StoreClosed, StoreConfig

pytestmark = pytest.mark.anyio


def _threads(project_id: str) -> int:
    return sum(1 for t in threading.enumerate() if t.name.endswith(f"-{project_id}"))


def _threads_but_the_executor() -> int:
    """threading.active_count(), less the event loop's default executor (bounded on its own)."""
    return threading.active_count() - sum(
        1 for t in threading.enumerate() if t.name.startswith("asyncio_")
    )


async def test_touching_many_projects_keeps_connections_and_threads_bounded(
    config: StoreConfig,
) -> None:
    bound, readers = 3, 2
    config = StoreConfig(
        projects_dir=config.projects_dir, max_open_projects=bound, max_readers=readers
    )
    baseline = _threads_but_the_executor()
    most = bound * (1 + readers)  # a writer and up to max_readers readers per open project
    async with Store(config) as store:
        ids = []
        for n in range(3 * bound):
            project = await store.create_project(name=f"p{n}")
            ids.append(project.id)
            assert len(store._open) <= bound
        for round_ in range(2):
            for n, project_id in enumerate(ids):
                project = await store.open_project(project_id)
                async with project.transaction() as tx:
                    await tx.conversations.create(title=f"round {round_}")
                async with project.read() as r1, project.read() as r2:  # two readers
                    assert await r1.conversations.count() == round_ + 1
                    assert await r2.projects.get(project_id)
                assert len(store._open) <= bound
                assert _threads_but_the_executor() - baseline <= most, (round_, n)
        assert list(store._open) == ids[-bound:]  # the most recently used stay open
        infos = await store.list_projects()
        assert [i.status for i in infos] == ["ok"] * len(ids)
    assert _threads_but_the_executor() == baseline


async def test_a_project_with_work_in_flight_is_never_closed(config: StoreConfig) -> None:
    config = StoreConfig(projects_dir=config.projects_dir, max_open_projects=1)
    async with Store(config) as store:
        first = await store.create_project(name="first")
        held = asyncio.Event()
        release = asyncio.Event()

        async def long_unit() -> None:
            async with first.transaction() as tx:
                await tx.conversations.create(title="in flight")
                await tx.flush()  # holds the writer: work is in flight
                held.set()
                await release.wait()

        task = asyncio.create_task(long_unit())
        await held.wait()
        assert first.busy
        second = await store.create_project(name="second")
        async with first.read() as r:  # reading keeps it busy too
            third = await store.create_project(name="third")
            assert not first.closed
        assert second.closed  # idle: closed to make room
        assert set(store._open) == {first.id, third.id}  # over the bound while first is busy
        release.set()
        await task
        assert not first.busy
        fourth = await store.create_project(name="fourth")
        assert first.closed and third.closed and list(store._open) == [fourth.id]
        with pytest.raises(StoreClosed, match="open_project"):
            first.transaction()
        again = await store.open_project(first.id)
        async with again.read() as r:
            assert [c.title for c in await r.conversations.list()] == ["in flight"]


async def test_opening_one_project_from_many_tasks_opens_it_once(config: StoreConfig) -> None:
    async with Store(config) as store:
        project_id = (await store.create_project(name="shared")).id
        await store.close()
    async with Store(config) as store:
        baseline = _threads(project_id)
        results = await asyncio.gather(*(store.open_project(project_id) for _ in range(50)))
        assert all(p is results[0] for p in results)
        assert _threads(project_id) == baseline + 1  # one writer thread, one connection
        assert results[0].pool.connections == 1
    assert _threads(project_id) == 0


async def test_a_failed_open_is_reported_to_every_waiting_task(config: StoreConfig) -> None:
    async with Store(config) as store:
        (config.projects_dir / "broken").mkdir(parents=True)
        (config.projects_dir / "broken" / "database.sqlite").write_text("not sqlite\n" * 500)
        results = await asyncio.gather(
            *(store.open_project("broken") for _ in range(10)), return_exceptions=True
        )
        assert all(type(r).__name__ == "CorruptDatabase" for r in results)
        assert not store._open and not store._opening
