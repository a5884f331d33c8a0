"""DemiarchSaver under load and faults: 64 LangGraph threads at once in one process, OS threads
calling the sync API, 4 processes on one project, and a process killed with SIGKILL mid-run."""

from __future__ import annotations

import asyncio
import json
import os
import select
import signal
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

from demiarch_store import AsyncProjectStore, Store, StoreConfig
from demiarch_store.integrations.langgraph import DemiarchSaver

sys.path.insert(0, str(Path(__file__).resolve().parent))
from langgraph_child import chat_graph, loop_graph  # noqa: E402

pytestmark = pytest.mark.anyio


@pytest.fixture
def config(engine_config: StoreConfig) -> StoreConfig:
    """The tests that take ``config`` run on SQLite and on PostgreSQL (conftest.engine_config);
    the others need a project file (another process opens it, or it is killed) and say so."""
    return engine_config


@asynccontextmanager
async def opened(config: StoreConfig, project_id: str | None = None) -> AsyncIterator[Any]:
    """A new project (or ``project_id`` again) on ``config``'s engine, closed with its store."""
    async with Store(config) as store:
        if project_id is None:
            yield await store.create_project(name="langgraph")
        else:
            yield await store.open_project(project_id)


CHILD = Path(__file__).resolve().parent / "langgraph_child.py"
TIMEOUT = 240


async def _verify_threads(project: AsyncProjectStore, names: list[str], turns: int) -> None:
    """Every thread has all its checkpoints, their writes, and the state its turns made."""
    saver = DemiarchSaver(project)
    graph = chat_graph().compile(checkpointer=saver)
    for name in names:
        config = {"configurable": {"thread_id": name}}
        state = await graph.aget_state(config)
        assert state.values["turns"] == turns, name
        texts = [m.content for m in state.values["messages"]]
        assert texts == [x for t in range(turns) for x in (f"{name} turn {t}", "ok")], name
        history = [t async for t in saver.alist(config)]
        assert len(history) == 3 * turns, name  # input, agent, and nothing pending after END
        ids = {t.config["configurable"]["checkpoint_id"] for t in history}
        for tup in history:
            parent = tup.parent_config
            assert parent is None or parent["configurable"]["checkpoint_id"] in ids
            if tup.metadata["source"] == "input" or tup.metadata["step"] % 3 == 0:
                # The checkpoint before a step holds the writes of the tasks of that step.
                assert tup.pending_writes, (name, tup.metadata)
            else:
                assert tup.pending_writes == [], (name, tup.metadata)


async def test_64_threads_of_one_graph_at_once(config: StoreConfig) -> None:
    async with opened(config) as project:
        graph = chat_graph().compile(checkpointer=DemiarchSaver(project))
        names = [f"t-{i}" for i in range(64)]

        async def run(name: str) -> None:
            config = {"configurable": {"thread_id": name}}
            for t in range(4):
                text = f"{name} turn {t}"
                start: dict[str, Any] = {"messages": [("user", text)]}
                if t == 0:
                    start["turns"] = 0
                await graph.ainvoke(start, config)

        await asyncio.wait_for(asyncio.gather(*(run(n) for n in names)), timeout=TIMEOUT)
        await _verify_threads(project, names, 4)
        async with project.read() as r:
            assert await r.lg_checkpoints.count() == 64 * 12


async def test_os_threads_on_the_sync_api_at_once(config: StoreConfig) -> None:
    async with opened(config) as project:
        graph = chat_graph().compile(checkpointer=DemiarchSaver(project))
        names = [f"os-{i}" for i in range(16)]
        errors: list[BaseException] = []

        def run(name: str) -> None:
            try:
                config = {"configurable": {"thread_id": name}}
                for t in range(3):
                    start: dict[str, Any] = {"messages": [("user", f"{name} turn {t}")]}
                    if t == 0:
                        start["turns"] = 0
                    graph.invoke(start, config)
            except BaseException as exc:  # reported below, on the test's thread
                errors.append(exc)

        threads = [threading.Thread(target=run, args=(n,)) for n in names]
        for t in threads:
            t.start()
        for t in threads:
            await asyncio.wait_for(asyncio.to_thread(t.join, TIMEOUT), timeout=TIMEOUT + 10)
        assert not errors, errors
        await _verify_threads(project, names, 3)


def test_four_processes_on_one_project(config: StoreConfig) -> None:
    async def create() -> tuple[str, str]:
        async with Store(config) as store:
            project = await store.create_project(name="shared")
            if config.database_url is not None:
                return project.id, f"{config.database_url}#{project.id}"
            return project.id, str(project.path)

    project_id, db = asyncio.run(create())  # created once, so no process races to build the schema
    procs = [
        subprocess.Popen(
            [sys.executable, str(CHILD), db, "turns", f"p{i}", "16", "4"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(4)
    ]
    outs = []
    try:
        for p in procs:
            out, err = p.communicate(timeout=TIMEOUT)
            assert p.returncode == 0, err
            assert "locked" not in err
            outs.append(json.loads(out.strip().splitlines()[-1]))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.communicate()
    assert outs == [{"threads": 16, "turns": 4}] * 4

    async def verify() -> None:
        async with opened(config, project_id) as project:
            names = [f"p{i}-{n}" for i in range(4) for n in range(16)]
            await _verify_threads(project, names, 4)
            async with project.read() as r:
                assert await r.lg_checkpoints.count() == 64 * 12
            assert (await project.check(full=True)).ok

    asyncio.run(verify())


def test_kill_9_mid_run_leaves_the_last_committed_checkpoint_resumable(tmp_path: Path) -> None:
    """SQLite only: what a kill can damage is the project's file (on PostgreSQL the server
    holds the data; a killed client is a dropped connection, tested in test_postgres.py)."""
    db = tmp_path / "killed.sqlite"
    steps = 100_000  # far more than it reaches before the kill
    proc = subprocess.Popen(
        [sys.executable, str(CHILD), str(db), "loop", "long-run", str(steps)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    printed = 0
    try:
        deadline = time.monotonic() + TIMEOUT
        assert proc.stdout is not None
        while printed < 40:  # let it commit some steps, then kill it mid-run
            assert time.monotonic() < deadline, "the child made no progress"
            ready, _, _ = select.select([proc.stdout], [], [], 5)
            if ready:
                line = proc.stdout.readline()
                assert line, proc.stderr.read() if proc.stderr else ""
                printed = int(line.split()[1])
        os.kill(proc.pid, signal.SIGKILL)
        # Steps the child printed before it died but this process had not read yet count too.
        rest, _ = proc.communicate(timeout=30)
        whole = [line for line in rest.splitlines(keepends=True) if line.endswith("\n")]
        printed = max([printed] + [int(line.split()[1]) for line in whole])
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for pipe in (proc.stdout, proc.stderr):
            if pipe is not None:
                pipe.close()
    assert proc.returncode == -signal.SIGKILL

    async def resume() -> None:
        async with AsyncProjectStore(db) as project:
            assert (await project.check(full=True)).ok
            target = printed + 20
            graph = loop_graph(target).compile(checkpointer=DemiarchSaver(project))
            config = {"configurable": {"thread_id": "long-run"}, "recursion_limit": 10_000}
            state = await graph.aget_state(config)
            n = state.values["n"]
            # Every printed step was committed; the one in flight may or may not be.
            assert printed <= n <= printed + 1
            assert state.values["log"] == list(range(1, n + 1))  # a consistent state
            done = await graph.ainvoke(None, config)  # resume from it
            assert done["n"] == target and done["log"] == list(range(1, target + 1))
            history = [s async for s in graph.aget_state_history(config)]
            counted = [s.values["n"] for s in history if "n" in s.values]
            assert counted == list(range(target, -1, -1))

    asyncio.run(resume())
