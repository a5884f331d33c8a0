"""LangGraph's data is part of the project: backups, bundles, check(), delete, the command line."""

from __future__ import annotations

import asyncio
import json
import sqlite3
from pathlib import Path
from typing import Any

import pytest
from langgraph.graph import END, START, StateGraph
from typing_extensions import TypedDict

from demiarch_store import ProjectNotFound, Store, StoreConfig
from demiarch_store.cli import main
from demiarch_store.integrations.langgraph import DemiarchSaver, DemiarchStore

pytestmark = pytest.mark.anyio


class Count(TypedDict):
    n: int


def counter() -> Any:
    def bump(state: Count) -> dict[str, int]:
        return {"n": state["n"] + 1}

    builder = StateGraph(Count)
    builder.add_node("bump", bump)
    builder.add_edge(START, "bump")
    builder.add_edge("bump", END)
    return builder


async def _fill(project: Any, runs: int = 3) -> None:
    graph = counter().compile(checkpointer=DemiarchSaver(project), store=DemiarchStore(project))
    for _ in range(runs):
        await graph.ainvoke({"n": 0}, {"configurable": {"thread_id": "alpha"}})
    await graph.ainvoke({"n": 10}, {"configurable": {"thread_id": "beta"}})
    await DemiarchStore(project).aput(("users", "u1"), "prefs", {"theme": "dark"})


async def _state(project: Any, thread_id: str) -> Any:
    graph = counter().compile(checkpointer=DemiarchSaver(project))
    return (await graph.aget_state({"configurable": {"thread_id": thread_id}})).values


async def test_backup_restore_and_bundles_carry_threads_and_memory(
    tmp_path: Path, config: StoreConfig
) -> None:
    """SQLite only: a backup is a copy of the project's file (PostgreSQL's are pg_dump's)."""
    async with Store(config) as store:
        project = await store.create_project(name="graphs")
        await _fill(project)
        backup = await project.backup()
        bundle = await store.export_project(project.id, tmp_path)
        await DemiarchSaver(project).adelete_thread("alpha")
        assert await _state(project, "alpha") == {}
        restored = await store.restore_project(project.id, backup)
        assert await _state(restored, "alpha") == {"n": 1}
        imported = await store.import_project(bundle, project_id="copy")
        assert await _state(imported, "beta") == {"n": 11}
        item = await DemiarchStore(imported).aget(("users", "u1"), "prefs")
        assert item is not None and item.value == {"theme": "dark"}
        report = await imported.check(full=True)
        assert report.ok, report.problems
        path = imported.path
        await store.delete_project("copy")
        assert not path.parent.exists()


async def test_bundles_carry_threads_and_memory_on_each_engine(
    tmp_path: Path, engine_config: StoreConfig
) -> None:
    async with Store(engine_config) as store:
        project = await store.create_project(name="graphs")
        await _fill(project)
        bundle = await store.export_project(project.id, tmp_path)
        await DemiarchSaver(project).adelete_thread("alpha")
        assert await _state(project, "alpha") == {}
        imported = await store.import_project(bundle, project_id=f"copy{project.id}")
        assert await _state(imported, "alpha") == {"n": 1}
        assert await _state(imported, "beta") == {"n": 11}
        item = await DemiarchStore(imported).aget(("users", "u1"), "prefs")
        assert item is not None and item.value == {"theme": "dark"}
        report = await imported.check(full=True)
        assert report.ok, report.problems
        await store.delete_project(imported.id)
        with pytest.raises(ProjectNotFound):
            await store.open_project(imported.id)


async def test_check_sees_an_orphaned_embedding(tmp_path: Path, config: StoreConfig) -> None:
    """SQLite only: the damage is done to the project's file behind the store's back."""
    async with Store(config) as store:
        project = await store.create_project(name="graphs")
        await _fill(project)
        path = project.path
        assert (await project.check()).ok
    conn = sqlite3.connect(path)  # damage it behind the store's back, foreign keys off
    conn.execute("INSERT INTO memory_vectors VALUES ('gone', 'k', '$', X'0000803f')")
    conn.commit()
    conn.close()
    async with Store(config) as store:
        report = await (await store.open_project(project.id)).check()
        assert not report.ok
        assert any("memory_vectors" in p for p in report.problems)


async def test_threads_have_counts_sizes_and_latest_step_on_each_engine(
    engine_config: StoreConfig,
) -> None:
    async with Store(engine_config) as store:
        project = await store.create_project(name="graphs")
        await _fill(project)
        async with project.read() as r:
            threads = {t.thread_id: t for t in await r.lg_checkpoints.threads()}
    assert set(threads) == {"alpha", "beta"}
    assert threads["alpha"].checkpoints == 9 and threads["beta"].checkpoints == 3
    assert threads["alpha"].latest_step == 7 and threads["beta"].latest_step == 1
    assert threads["alpha"].size_bytes > threads["beta"].size_bytes > 0


async def test_show_lists_threads_with_counts_sizes_and_latest_step(
    config: StoreConfig, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """SQLite only: `show` reports the project's files (the repository part, ``threads()``, is
    tested on both engines above)."""
    async with Store(config) as store:
        project = await store.create_project(name="graphs")
        await _fill(project)
        project_id = project.id
    monkeypatch.setenv("COLUMNS", "200")
    argv = ["--projects-dir", str(config.projects_dir), "show", project_id]
    capsys.readouterr()
    assert await _cli(argv + ["--json"]) == 0
    facts = json.loads(capsys.readouterr().out)
    threads = {t["thread_id"]: t for t in facts["langgraph_threads"]}
    assert set(threads) == {"alpha", "beta"}
    assert threads["alpha"]["checkpoints"] == 9 and threads["beta"]["checkpoints"] == 3
    assert threads["alpha"]["latest_step"] == 7 and threads["beta"]["latest_step"] == 1
    assert threads["alpha"]["size_bytes"] > threads["beta"]["size_bytes"] > 0
    assert facts["tables"]["lg_checkpoints"] == 12 and facts["tables"]["memory_items"] == 1
    assert await _cli(argv) == 0
    human = capsys.readouterr().out
    assert "LangGraph thread" in human and "Latest step" in human
    line = next(x for x in human.splitlines() if x.strip().startswith("alpha"))
    assert line.split()[1] == "9" and line.split()[-1] == "7"


async def _cli(argv: list[str]) -> int:
    # The command line runs its own event loop: give it a thread of its own.
    return await asyncio.wait_for(asyncio.to_thread(main, argv), timeout=60)
