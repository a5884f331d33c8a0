"""Real LangGraph graphs on DemiarchSaver (only the chat model is fake): interrupts resumed by
another process, time travel, subgraphs, and the same history as LangGraph's InMemorySaver."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Annotated, Any, TypedDict

import pytest
from langchain_core.language_models.fake_chat_models import (
    FakeMessagesListChatModel,
)
from langchain_core.messages import AIMessage, AnyMessage, HumanMessage
from langgraph.checkpoint.base import BaseCheckpointSaver
from langgraph.checkpoint.memory import InMemorySaver
from langgraph.graph import END, START, StateGraph
from langgraph.graph.message import add_messages
from langgraph.types import Command, interrupt

from demiarch_store import Store, StoreConfig
from demiarch_store.integrations import langgraph as integration
from demiarch_store.integrations.langgraph import DemiarchSaver, SyncCallOnLoop

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


EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


class Chat(TypedDict):
    messages: Annotated[list[AnyMessage], add_messages]
    turns: int
    notes: str


def chat_graph(replies: int = 50) -> StateGraph:
    model = FakeMessagesListChatModel(
        responses=[AIMessage(content=f"reply {i}", id=f"ai-{i}") for i in range(replies)]
    )

    def agent(state: Chat) -> dict[str, Any]:
        return {"messages": [model.invoke(state["messages"])], "turns": state["turns"] + 1}

    def tidy(state: Chat) -> dict[str, Any]:
        return {"notes": f"{len(state['messages'])} messages"}

    builder = StateGraph(Chat)
    builder.add_node("agent", agent)
    builder.add_node("tidy", tidy)
    builder.add_edge(START, "agent")
    builder.add_edge("agent", "tidy")
    builder.add_edge("tidy", END)
    return builder


def say(text: str, n: int) -> dict[str, Any]:
    return {"messages": [HumanMessage(content=text, id=f"human-{n}")]}


def thread(tid: str, **more: Any) -> dict[str, Any]:
    return {"configurable": {"thread_id": tid, **more}}


def shape(history: list[Any]) -> list[tuple[Any, ...]]:
    """What a state history means, without the IDs and times each run makes anew."""
    ids = {s.config["configurable"]["checkpoint_id"]: n for n, s in enumerate(history)}
    out = []
    for s in history:
        parent = s.parent_config["configurable"]["checkpoint_id"] if s.parent_config else None
        meta = {k: v for k, v in s.metadata.items() if k not in ("run_id", "thread_id")}
        out.append(
            (
                s.values,
                s.next,
                meta,
                ids.get(parent) if parent else None,
                [(t.name, t.interrupts) for t in s.tasks],
            )
        )
    return out


async def run_script(saver: BaseCheckpointSaver[Any]) -> list[tuple[Any, ...]]:
    """Turns, then time travel: a fork by update_state and a replay from an earlier step."""
    graph = chat_graph().compile(checkpointer=saver)
    config = thread("t1")
    await graph.ainvoke({**say("hi", 0), "turns": 0, "notes": ""}, config)
    await graph.ainvoke(say("more", 1), config)
    await graph.ainvoke(say("again", 2), config)
    history = [s async for s in graph.aget_state_history(config)]
    # Fork at the checkpoint after the first turn: update_state makes a new head there.
    first_turn = next(s for s in reversed(history) if s.values.get("turns") == 1 and not s.next)
    forked = await graph.aupdate_state(first_turn.config, {"notes": "edited"})
    await graph.ainvoke(say("after the fork", 3), forked)
    # Replay: run again from the checkpoint where "agent" was about to run the second time.
    before_agent = next(
        s for s in reversed(history) if s.next == ("agent",) and len(s.values["messages"]) == 3
    )
    replayed = await graph.ainvoke(None, before_agent.config)
    assert replayed["turns"] == 2
    return shape([s async for s in graph.aget_state_history(config)])


async def test_same_state_history_as_in_memory_saver(config: StoreConfig) -> None:
    theirs = await run_script(InMemorySaver())
    async with opened(config) as project:
        ours = await run_script(DemiarchSaver(project))
    assert ours == theirs
    assert len(ours) > 12  # turns, a fork and a replay
    assert any(meta.get("source") == "update" for _, _, meta, _, _ in ours)
    # The last turn after the fork saw "edited" notes go to the model's turn count 2.
    assert ours[0][0]["turns"] == 2


async def test_history_filter_before_and_limit_like_in_memory_saver(config: StoreConfig) -> None:
    memory = InMemorySaver()
    await run_script(memory)
    async with opened(config) as project:
        saver = DemiarchSaver(project)
        await run_script(saver)
        for kwargs in (
            {"filter": {"source": "loop"}},
            {"filter": {"step": 2}},
            {"filter": {"source": "update", "step": 3}},
            {"limit": 3},
        ):
            ours = [t async for t in saver.alist(thread("t1"), **kwargs)]
            theirs = [t async for t in memory.alist(thread("t1"), **kwargs)]
            assert [(t.metadata["step"], t.metadata["source"]) for t in ours] == [
                (t.metadata["step"], t.metadata["source"]) for t in theirs
            ]
            assert [t.checkpoint["channel_values"] for t in ours] == [
                t.checkpoint["channel_values"] for t in theirs
            ]
        newest = [t async for t in saver.alist(thread("t1"))]
        ids = [t.config["configurable"]["checkpoint_id"] for t in newest]
        assert ids == sorted(ids, reverse=True)
        older = [t async for t in saver.alist(thread("t1"), before=newest[4].config, limit=2)]
        assert [t.config for t in older] == [t.config for t in newest[5:7]]


async def test_a_subgraph_checkpoints_under_its_namespace_and_resumes(config: StoreConfig) -> None:
    class Inner(TypedDict):
        text: str

    def ask(state: Inner) -> dict[str, Any]:
        return {"text": state["text"] + " / " + interrupt("approve?")}

    inner = StateGraph(Inner)
    inner.add_node("ask", ask)
    inner.add_edge(START, "ask")
    inner.add_edge("ask", END)

    def prepare(state: Inner) -> dict[str, Any]:
        return {"text": state["text"] + " / prepared"}

    outer = StateGraph(Inner)
    outer.add_node("prepare", prepare)
    outer.add_node("review", inner.compile())
    outer.add_edge(START, "prepare")
    outer.add_edge("prepare", "review")
    outer.add_edge("review", END)

    async with opened(config) as project:
        graph = outer.compile(checkpointer=DemiarchSaver(project))
        config = thread("sub")
        paused = await graph.ainvoke({"text": "start"}, config)
        assert paused["__interrupt__"][0].value == "approve?"
        state = await graph.aget_state(config, subgraphs=True)
        (task,) = state.tasks
        assert task.name == "review" and task.state is not None
        sub_ns = task.state.config["configurable"]["checkpoint_ns"]
        assert sub_ns.startswith("review:")
        async with project.read() as r:
            namespaces = {c.checkpoint_ns for c in await r.lg_checkpoints.list("sub")}
        assert namespaces == {"", sub_ns}
        done = await graph.ainvoke(Command(resume="yes"), config)
        assert done["text"] == "start / prepared / yes"


async def test_sync_invoke_from_a_thread_and_a_clear_error_on_the_loop(config: StoreConfig) -> None:
    async with opened(config) as project:
        saver = DemiarchSaver(project)
        graph = chat_graph().compile(checkpointer=saver)
        out: dict[str, Any] = {}

        def worker() -> None:
            graph.invoke({**say("hi", 0), "turns": 0, "notes": ""}, thread("sync"))
            out["result"] = graph.invoke(say("again", 1), thread("sync"))
            out["history"] = list(graph.get_state_history(thread("sync")))

        runner = threading.Thread(target=worker)
        runner.start()
        await asyncio.wait_for(asyncio.to_thread(runner.join, 60), timeout=90)
        assert out["result"]["turns"] == 2 and len(out["history"]) == 8
        with pytest.raises(SyncCallOnLoop) as info:
            graph.invoke(say("x", 2), thread("sync"))
        assert "await" in str(info.value)
        state = await graph.aget_state(thread("sync"))
        assert state.values["turns"] == 2  # the refused call wrote nothing


async def test_an_unchanged_channel_value_is_stored_once(config: StoreConfig) -> None:
    class Big(TypedDict):
        docs: list[str]
        counter: int

    def step(state: Big) -> dict[str, Any]:
        return {"counter": state["counter"] + 1}

    builder = StateGraph(Big)
    builder.add_node("step", step)
    builder.add_edge(START, "step")
    builder.add_edge("step", END)
    async with opened(config) as project:
        graph = builder.compile(checkpointer=DemiarchSaver(project))
        docs = ["x" * 1000] * 50
        await graph.ainvoke({"docs": docs, "counter": 0}, thread("big"))
        for _ in range(9):
            await graph.ainvoke({"counter": 0}, thread("big"))
        async with project.read() as r:
            blobs = await r.lg_blobs.list("big")
            checkpoints = await r.lg_checkpoints.list("big")
        assert len(checkpoints) == 30
        assert [b.channel for b in blobs].count("docs") == 1  # 50 KB once, not 30 times
        assert (await graph.aget_state(thread("big"))).values["docs"] == docs


async def test_alist_reads_a_page_in_one_query(
    config: StoreConfig, monkeypatch: pytest.MonkeyPatch
) -> None:
    from demiarch_store.postgres.session import PgSnapshot
    from demiarch_store.transaction import Snapshot, Transaction

    async with opened(config) as project:
        saver = DemiarchSaver(project)
        graph = chat_graph(replies=200).compile(checkpointer=saver)
        await graph.ainvoke({**say("hi", 0), "turns": 0, "notes": ""}, thread("q"))
        for n in range(1, 111):  # 4 checkpoints a turn: 444 in all
            await graph.ainvoke(say(f"turn {n}", n), thread("q"))
        queries = 0
        # A lone read runs in a unit of work (in place), under load in a snapshot: count both.
        for cls in (Snapshot, Transaction, PgSnapshot):

            def counting(fetch: Any) -> Any:
                async def count(self: Any, sql: str, params: Any) -> list[Any]:
                    nonlocal queries
                    queries += 1
                    return await fetch(self, sql, params)  # type: ignore[no-any-return]

                return count

            monkeypatch.setattr(cls, "fetch", counting(cls.fetch))
        listed = [t async for t in saver.alist(thread("q"))]
        assert len(listed) == 444
        pages = -(-444 // integration.PAGE_SIZE)
        assert queries == pages  # checkpoints, their writes and channel values: one query
        queries = 0
        assert await saver.aget_tuple(thread("q")) == listed[0]
        assert queries == 1
        assert all(t.checkpoint["channel_values"] for t in listed[:-1])


def test_the_example_pauses_exits_and_a_new_process_resumes(tmp_path: Path) -> None:
    """SQLite only: the example takes a project file, all the new process has."""
    db = tmp_path / "agent.sqlite"

    def run(*args: str) -> str:
        out = subprocess.run(
            [sys.executable, str(EXAMPLES / "langgraph_resume.py"), str(db), *args],
            capture_output=True,
            text=True,
            timeout=120,
            env={**os.environ, "COLUMNS": "100"},
        )
        assert out.returncode == 0, out.stderr
        return out.stdout

    first = run("start")
    assert "paused for a human: Send this reply?" in first
    assert "waiting at node 'review', checkpoint step 1" in first
    second = run("resume", "yes")  # another process: all it has is the file
    assert "resumed with 'yes':" in second
    assert "ai: (reply sent)" in second
    assert "5 checkpoints in thread 'ticket-42' (steps [-1, 0, 1, 2, 3])" in second
    demo = run()
    assert demo.count("$ python langgraph_resume.py") == 2 and "(reply sent)" in demo
