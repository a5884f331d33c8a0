"""Sessions under load and faults: many at once, several processes, kill -9 mid-turn.

Real processes on one real project (a SQLite file, or a project on the PostgreSQL server: the
tests taking ``config`` run on both engines); every wait has a timeout.
"""

from __future__ import annotations

import asyncio
import os
import select
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import pytest
from google.adk.events import Event, EventActions
from google.genai import types

from demiarch_store import AsyncProjectStore, Store, StoreConfig
from demiarch_store.integrations.adk import DemiarchSessionService
from demiarch_store.integrations.openai_agents import DemiarchSession

pytestmark = pytest.mark.anyio
CHILD = Path(__file__).resolve().parent / "session_child.py"


@pytest.fixture
def config(engine_config: StoreConfig) -> StoreConfig:
    """The tests taking ``config`` (or ``project``) run on SQLite and on PostgreSQL."""
    return engine_config


@asynccontextmanager
async def opened(config: StoreConfig, project_id: str | None = None) -> AsyncIterator[Any]:
    """A new project (or ``project_id`` again) on ``config``'s engine, closed with its store."""
    async with Store(config) as store:
        if project_id is None:
            yield await store.create_project(name="shared")
        else:
            yield await store.open_project(project_id)


async def shared_project(config: StoreConfig) -> tuple[str, str]:
    """Create a project before the children race; return its ID and the children's DB argument
    (its file, or ``URL#ID`` on PostgreSQL: see session_child.py)."""
    async with opened(config) as project:
        if config.database_url is not None:
            return project.id, f"{config.database_url}#{project.id}"
        return project.id, str(project.path)


def expected(tag: str, sid: str, turns: int) -> list[str]:
    return [f"{tag}:{sid}:{n}:{who}" for n in range(turns) for who in ("user", "assistant")]


async def contents(project: AsyncProjectStore, sid: str) -> list[str]:
    return [item["content"] for item in await DemiarchSession(sid, project).get_items()]


async def test_64_sessions_at_once_in_one_process(project: AsyncProjectStore) -> None:
    turns = 10

    async def agent(i: int) -> None:
        session = DemiarchSession(f"s{i}", project)
        for n in range(turns):
            await session.add_items(
                [{"role": "user", "content": f"t:s{i}:{n}:user"},
                 {"role": "assistant", "content": f"t:s{i}:{n}:assistant"}]
            )  # fmt: skip
            latest = await session.get_items(limit=20)
            assert [x["content"] for x in latest] == expected("t", f"s{i}", n + 1)[-20:]

    with anyio.fail_after(240):
        await asyncio.gather(*(agent(i) for i in range(64)))
    for i in range(64):
        assert await contents(project, f"s{i}") == expected("t", f"s{i}", turns)
    async with project.read() as r:
        assert await r.messages.count() == 64 * turns * 2


async def test_64_adk_sessions_at_once(project: AsyncProjectStore) -> None:
    service = DemiarchSessionService(project)
    turns = 6

    async def agent(i: int) -> None:
        session = await service.create_session(app_name="app", user_id=f"u{i % 8}")
        for n in range(turns):
            text = types.Content(role="user", parts=[types.Part(text=f"{i}:{n}")])
            delta = EventActions(state_delta={"n": n, f"user:last{i}": n, "app:turns": n})
            await service.append_event(
                session, Event(author="user", invocation_id=f"{i}", content=text, actions=delta)
            )
        got = await service.get_session(app_name="app", user_id=f"u{i % 8}", session_id=session.id)
        assert got is not None
        assert [e.content.parts[0].text for e in got.events if e.content] == [
            f"{i}:{n}" for n in range(turns)
        ]
        assert got.state["n"] == turns - 1 and got.state[f"user:last{i}"] == turns - 1

    with anyio.fail_after(240):
        await asyncio.gather(*(agent(i) for i in range(64)))
    listed = (await service.list_sessions(app_name="app")).sessions
    assert len(listed) == 64


def spawn(
    db: Path | str, tag: str, sessions: int | str, turns: int, *extra: str
) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, str(CHILD), str(db), tag, str(sessions), str(turns), *extra],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


async def test_four_processes_on_one_project(config: StoreConfig) -> None:
    project_id, db = await shared_project(config)  # created once, before the children race
    sessions, turns = 8, 15
    children = [spawn(db, f"p{k}", sessions, turns) for k in range(4)]
    try:
        for child in children:
            out, err = child.communicate(timeout=240)
            assert child.returncode == 0, err
            assert out.count("acked") == sessions * turns and out.endswith("done\n")
    finally:
        for child in children:
            if child.poll() is None:
                child.kill()
                child.wait(10)
    async with opened(config, project_id) as project:
        for i in range(sessions):
            items = await contents(project, f"s{i}")
            # Four processes share each session ID: every process's turns, each in its order,
            # each turn's two items next to each other, nothing lost or twice.
            assert len(items) == 4 * turns * 2 and len(set(items)) == len(items)
            for k in range(4):
                mine = [x for x in items if x.startswith(f"p{k}:")]
                assert mine == expected(f"p{k}", f"s{i}", turns)
            for a, b in zip(items[::2], items[1::2], strict=True):
                assert a.endswith(":user") and b == a.replace(":user", ":assistant")


async def test_pops_in_three_processes_never_return_the_same_item(config: StoreConfig) -> None:
    project_id, db = await shared_project(config)
    items = [{"role": "user", "content": f"item {i}"} for i in range(300)]
    async with opened(config, project_id) as project:
        await DemiarchSession("shared", project).add_items(items)
    children = [spawn(db, "pop", "shared", 4) for _ in range(3)]
    popped: list[str] = []
    try:
        for child in children:
            out, err = child.communicate(timeout=240)
            assert child.returncode == 0, err
            assert out.endswith("done\n")
            popped += [line.removeprefix("popped ") for line in out.splitlines()[:-1]]
    finally:
        for child in children:
            if child.poll() is None:
                child.kill()
                child.communicate(timeout=30)
    assert sorted(popped) == sorted(i["content"] for i in items)  # each exactly once
    async with opened(config, project_id) as project:
        assert await DemiarchSession("shared", project).get_items() == []


async def test_four_processes_of_adk_sessions_share_app_state(config: StoreConfig) -> None:
    """Shared state is read and written in one unit of work: no process's keys are lost."""
    project_id, db = await shared_project(config)
    sessions, turns = 6, 10
    children = [spawn(db, "adk", f"u{k}", sessions, str(turns)) for k in range(4)]
    try:
        for child in children:
            out, err = child.communicate(timeout=240)
            assert child.returncode == 0, err
            assert out == "done\n"
    finally:
        for child in children:
            if child.poll() is None:
                child.kill()
                child.communicate(timeout=30)
    async with opened(config, project_id) as project:
        service = DemiarchSessionService(project)
        listed = (await service.list_sessions(app_name="app")).sessions
        assert len(listed) == 4 * sessions
        for k in range(4):
            for i in range(sessions):
                got = await service.get_session(app_name="app", user_id=f"u{k}", session_id=f"s{i}")
                assert got is not None
                assert [e.invocation_id for e in got.events] == [
                    f"u{k}:{i}:{n}" for n in range(turns)
                ]
                assert got.state["n"] == turns - 1
                assert {key: v for key, v in got.state.items() if key.startswith("user:")} == {
                    f"user:{j}": turns - 1 for j in range(sessions)
                }
                app = {key: v for key, v in got.state.items() if key.startswith("app:")}
                assert app == {
                    f"app:u{m}-{j}": turns - 1 for m in range(4) for j in range(sessions)
                }


def read_acks(child: subprocess.Popen[str], want: int, timeout: float) -> tuple[list[str], str]:
    """Read ``want`` or more lines of the child's output; return them and the unfinished rest.

    Reads the pipe's descriptor itself: a buffered readline() keeps lines read ahead in its
    buffer, where neither select() nor a later communicate() (which reads the descriptor) sees
    them, so acknowledged turns went missing from the count.
    """
    assert child.stdout is not None
    fd = child.stdout.fileno()
    text = ""
    deadline = time.monotonic() + timeout
    while text.count("\n") < want:
        left = deadline - time.monotonic()
        assert left > 0, f"only {text.count(chr(10))} acks in {timeout}s"
        ready, _, _ = select.select([fd], [], [], left)
        if ready:
            chunk = os.read(fd, 65536)
            assert chunk, "the child ended early"
            text += chunk.decode()
    *lines, rest = text.split("\n")
    return [line.strip() for line in lines], rest


# SQLite only: what a kill can damage is the project's file (on PostgreSQL a killed client is a
# dropped connection whose transaction the server rolls back, tested in test_postgres.py).
@pytest.mark.parametrize("round_", range(3))
async def test_kill_9_mid_turn_loses_no_acknowledged_item(tmp_path: Path, round_: int) -> None:
    db = tmp_path / "db.sqlite"
    async with AsyncProjectStore(db):
        pass
    child = spawn(db, "k", 4, 0, "--forever")
    try:
        acks, partial = read_acks(child, 40 + 25 * round_, timeout=120)
        os.kill(child.pid, signal.SIGKILL)  # mid-turn: the others are writing right now
        # Acks the child printed before it died but this process had not read yet count too.
        rest, _ = child.communicate(timeout=30)
        rest = partial + rest
        whole = [line for line in rest.splitlines(keepends=True) if line.endswith("\n")]
        acks += [line.strip() for line in whole if line.startswith("acked ")]
    finally:
        if child.poll() is None:
            child.kill()
            child.communicate(timeout=30)
    acked: dict[str, int] = {}
    for line in acks:
        _, _, sid, n = line.split()
        acked[sid] = max(acked.get(sid, -1), int(n))
    async with AsyncProjectStore(db) as project:
        report = await project.check()
        assert report.ok, report.problems
        for i in range(4):
            sid = f"s{i}"
            items = await contents(project, sid)
            # Every acknowledged turn is there, in order; at most the turn in flight beyond it,
            # and whole (add_items is one unit of work).
            done = acked.get(sid, -1) + 1
            assert items[: 2 * done] == expected("k", sid, done)
            assert items in (expected("k", sid, done), expected("k", sid, done + 1))
