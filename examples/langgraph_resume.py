"""A LangGraph agent that stops for a human, exits, and is resumed by a new process.

The graph drafts a reply with a chat model (a fake one from langchain-core: no network), then
asks a human to approve it with ``interrupt()``. Its checkpoints live in a demiarch-store
project, so the process can exit while it waits; a new process resumes the thread with
``Command(resume=...)`` and finishes it.

    python examples/langgraph_resume.py DB_PATH start           # runs until the interrupt
    python examples/langgraph_resume.py DB_PATH resume yes      # a new process resumes it
    python examples/langgraph_resume.py DB_PATH                 # both, as two processes

Needs ``pip install 'demiarch-store[langgraph]' langchain-core``.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path
from typing import Annotated, Any, TypedDict

from langchain_core.language_models.fake_chat_models import FakeMessagesListChatModel
from langchain_core.messages import AIMessage, AnyMessage, HumanMessage
from langgraph.graph import END, START, StateGraph
from langgraph.graph.message import add_messages
from langgraph.types import Command, interrupt

from demiarch_store.integrations.langgraph import DemiarchSaver

THREAD = {"configurable": {"thread_id": "ticket-42"}}


class State(TypedDict):
    messages: Annotated[list[AnyMessage], add_messages]
    approved: bool


model = FakeMessagesListChatModel(
    responses=[AIMessage(content="Your refund of $20 was approved and is on its way.")]
)


def draft(state: State) -> dict[str, Any]:
    return {"messages": [model.invoke(state["messages"])]}


def review(state: State) -> dict[str, Any]:
    answer = interrupt({"question": "Send this reply?", "draft": state["messages"][-1].content})
    return {"approved": answer == "yes"}


def send(state: State) -> dict[str, Any]:
    verdict = "sent" if state["approved"] else "discarded"
    return {"messages": [AIMessage(content=f"(reply {verdict})")]}


builder = StateGraph(State)
builder.add_node("draft", draft)
builder.add_node("review", review)
builder.add_node("send", send)
builder.add_edge(START, "draft")
builder.add_edge("draft", "review")
builder.add_edge("review", "send")
builder.add_edge("send", END)


async def start(path: Path) -> None:
    async with DemiarchSaver.open(path) as saver:
        graph = builder.compile(checkpointer=saver)  # the one-line switch
        question = HumanMessage(content="Where is my refund?")
        result = await graph.ainvoke({"messages": [question], "approved": False}, THREAD)
        (pending,) = result["__interrupt__"]
        print(f"paused for a human: {pending.value['question']} {pending.value['draft']!r}")
        state = await graph.aget_state(THREAD)
        print(f"waiting at node {state.next[0]!r}, checkpoint step {state.metadata['step']}")


async def resume(path: Path, answer: str) -> None:
    async with DemiarchSaver.open(path) as saver:
        graph = builder.compile(checkpointer=saver)
        result = await graph.ainvoke(Command(resume=answer), THREAD)
        print(f"resumed with {answer!r}:")
        for message in result["messages"]:
            print(f"  {message.type:>5}: {message.content}")
        history = [s async for s in graph.aget_state_history(THREAD)]
        steps = [s.metadata["step"] for s in reversed(history)]
        print(f"{len(history)} checkpoints in thread 'ticket-42' (steps {steps})")


def main(argv: list[str]) -> None:
    if len(argv) < 2:
        sys.exit(__doc__)
    path = Path(argv[1])
    if len(argv) == 2:  # the demo: each phase in a process of its own
        for phase in (["start"], ["resume", "yes"]):
            print(f"$ python {Path(argv[0]).name} {path.name} {' '.join(phase)}", flush=True)
            subprocess.run([sys.executable, argv[0], str(path), *phase], check=True, timeout=120)
    elif argv[2] == "start":
        asyncio.run(start(path))
    elif argv[2] == "resume" and len(argv) == 4:
        asyncio.run(resume(path, argv[3]))
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main(sys.argv)
