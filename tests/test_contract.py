"""The public contract of DESIGN.md, exercised end to end on a real file and on the server."""

from __future__ import annotations

from pathlib import Path

import pytest

import demiarch_store
from demiarch_store import (
    AsyncProjectStore,
    NotFound,
    ProjectNotFound,
    Store,
    StoreClosed,
    StoreConfig,
)

pytestmark = pytest.mark.anyio


def test_all_is_complete_and_sorted() -> None:
    public = {
        name
        for name, value in vars(demiarch_store).items()
        if not name.startswith("_") and not isinstance(value, type(demiarch_store))
    } - {"annotations"}
    assert sorted(demiarch_store.__all__) == demiarch_store.__all__
    assert set(demiarch_store.__all__) == public


async def test_contract_flow(engine_config: StoreConfig) -> None:
    config = engine_config
    async with Store(config) as store:
        project = await store.create_project(name="my app")
        if config.database_url is None:
            assert project.path == config.projects_dir / project.id / "database.sqlite"
            assert project.path.is_file()
        else:  # a project on PostgreSQL is rows of a shared database, not a file
            assert project.path is None
            assert not config.projects_dir.exists()

        async with project.transaction() as tx:
            conv = await tx.conversations.create(title="planning")
            first = await tx.messages.append(conv.id, role="user", content="hello")
            many = await tx.messages.append_many(
                conv.id, [{"role": "tool", "content": "..."}] * 100
            )
        async with project.read() as r:
            history = await r.messages.list(conv.id)
            assert [m.id for m in history] == [first.id, *(m.id for m in many)]
            assert await r.messages.get(history[0].id) == first
            assert [c.id for c in await r.conversations.list()] == [conv.id]
            page = await r.messages.list(conv.id, limit=10, after=history[4].id)
            assert [m.id for m in page] == [m.id for m in history[5:15]]
            with pytest.raises(NotFound):
                await r.messages.get("nope")

        infos = await store.list_projects()
        if config.database_url is not None:  # the session's database holds others' projects
            infos = [i for i in infos if i.id == project.id]
        assert [(i.id, i.name, i.status) for i in infos] == [(project.id, "my app", "ok")]
        assert await store.open_project(project.id) is project

        await store.delete_project(project.id)
        if project.path is not None:
            assert not project.path.parent.exists()
        with pytest.raises(StoreClosed):
            project.transaction()
        with pytest.raises(ProjectNotFound):
            await store.open_project(project.id)
        assert project.id not in {i.id for i in await store.list_projects()}


async def test_project_store_alone_on_one_file(tmp_path: Path) -> None:
    # SQLite only: a project store opened on a file of its own, without a Store.
    path = tmp_path / "agent.sqlite"
    async with AsyncProjectStore(path) as project:
        async with project.transaction() as tx:
            conv = await tx.conversations.create(title="solo")
        async with project.read() as r:
            assert (await r.conversations.get(conv.id)).title == "solo"
    async with AsyncProjectStore(path) as again:
        async with again.read() as r:
            assert await r.conversations.count() == 1
