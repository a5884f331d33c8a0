"""A child process for the LangGraph concurrency and fault tests.

DB is a project's file, or URL#PROJECT_ID: a project on a PostgreSQL server.

python tests/langgraph_child.py DB turns PREFIX THREADS TURNS
    runs THREADS LangGraph threads named PREFIX-<n> concurrently, TURNS turns each, and
    prints one JSON line: {"threads": ..., "turns": ...}
python tests/langgraph_child.py DB loop THREAD_ID STEPS
    runs (or resumes) a graph that counts to STEPS one superstep at a time, printing
    "step <n>" after each committed checkpoint; the parent kills it with SIGKILL.
"""

from __future__ import annotations

import asyncio
import json
import sys
import tempfile
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Annotated, Any, TypedDict

from langchain_core.language_models.fake_chat_models import FakeMessagesListChatModel
from langchain_core.messages import AIMessage, AnyMessage, HumanMessage
from langgraph.graph import END, START, StateGraph
from langgraph.graph.message import add_messages

from demiarch_store import AsyncProjectStore, Store, StoreConfig
from demiarch_store.integrations.langgraph import DemiarchSaver


class Chat(TypedDict):
    messages: Annotated[list[AnyMessage], add_messages]
    turns: int


def chat_graph() -> Any:
    model = FakeMessagesListChatModel(responses=[AIMessage(content="ok")])

    def agent(state: Chat) -> dict[str, Any]:
        reply = model.invoke(state["messages"])
        # The fake model answers with one message object; give each turn's reply its own ID,
        # or add_messages would replace the last reply with the next.
        turn = state["turns"] + 1
        return {"messages": [AIMessage(content=reply.content, id=f"ai-{turn}")], "turns": turn}

    builder = StateGraph(Chat)
    builder.add_node("agent", agent)
    builder.add_edge(START, "agent")
    builder.add_edge("agent", END)
    return builder


class Loop(TypedDict):
    n: int
    log: Annotated[list[int], lambda a, b: a + b]


def loop_graph(steps: int) -> Any:
    async def count(state: Loop) -> dict[str, Any]:
        await asyncio.sleep(0.005)
        return {"n": state["n"] + 1, "log": [state["n"] + 1]}

    def more(state: Loop) -> str:
        return "count" if state["n"] < steps else END

    builder = StateGraph(Loop)
    builder.add_node("count", count)
    builder.add_edge(START, "count")
    builder.add_conditional_edges("count", more)
    return builder


@asynccontextmanager
async def opened(db: str) -> AsyncIterator[Any]:
    """The project ``db`` names (see the module's docstring), closed when the block ends."""
    if db.startswith("postgresql://"):
        url, _, project_id = db.rpartition("#")
        config = StoreConfig(projects_dir=Path(tempfile.gettempdir()), database_url=url)
        async with Store(config) as store:
            yield await store.open_project(project_id)
    else:
        async with AsyncProjectStore(Path(db)) as project:
            yield project


async def turns(db: str, prefix: str, threads: int, n: int) -> None:
    async with opened(db) as project:
        graph = chat_graph().compile(checkpointer=DemiarchSaver(project))

        async def one(i: int) -> None:
            config = {"configurable": {"thread_id": f"{prefix}-{i}"}}
            for t in range(n):
                text = HumanMessage(content=f"{prefix}-{i} turn {t}")
                start = {"messages": [text], "turns": 0} if t == 0 else {"messages": [text]}
                await graph.ainvoke(start, config)

        await asyncio.gather(*(one(i) for i in range(threads)))
    print(json.dumps({"threads": threads, "turns": n}), flush=True)


async def loop(db: str, thread_id: str, steps: int) -> None:
    async with opened(db) as project:
        graph = loop_graph(steps).compile(checkpointer=DemiarchSaver(project))
        config = {"configurable": {"thread_id": thread_id}, "recursion_limit": steps * 4}
        state = await graph.aget_state(config)
        start = None if state.values else {"n": 0, "log": []}
        # durability="sync": each step's checkpoint is committed before the next step starts, so
        # a printed step is a committed one.
        stream = graph.astream(start, config, stream_mode="values", durability="sync")
        async for chunk in stream:
            print(f"step {chunk['n']}", flush=True)


def main(argv: list[str]) -> None:
    db, mode = argv[1], argv[2]
    if mode == "turns":
        asyncio.run(turns(db, argv[3], int(argv[4]), int(argv[5])))
    elif mode == "loop":
        asyncio.run(loop(db, argv[3], int(argv[4])))
    else:
        raise SystemExit(__doc__)


if __name__ == "__main__":
    main(sys.argv)
