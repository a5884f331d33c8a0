"""A small agent runtime: several agents, as concurrent tasks, share one project.

Each agent writes its turns into one conversation; then the runtime reads the conversation back
and prints it. Run it with `make demo` (uses a fresh temporary projects directory) or
`python examples/agent_runtime.py [PROJECTS_DIR]`.
"""

from __future__ import annotations

import asyncio
import sys
import tempfile
from pathlib import Path

from demiarch_store import AsyncProjectStore, Store, StoreConfig

AGENTS = ["planner", "coder", "reviewer", "tester"]
TURNS = 5


async def run_agent(project: AsyncProjectStore, conversation_id: str, name: str) -> None:
    for turn in range(TURNS):
        async with project.transaction() as tx:
            await tx.messages.append(
                conversation_id,
                role="assistant",
                content=f"{name}: step {turn + 1} done",
                meta={"agent": name, "turn": turn + 1},
            )
        await asyncio.sleep(0)  # let the other agents take their turn


async def main(projects_dir: Path) -> None:
    async with Store(StoreConfig(projects_dir=projects_dir)) as store:
        project = await store.create_project(name="demo: agent runtime")
        async with project.transaction() as tx:
            conv = await tx.conversations.create(title="build a todo app")
            await tx.messages.append(conv.id, role="user", content="Build me a todo app.")
        await asyncio.gather(*(run_agent(project, conv.id, name) for name in AGENTS))

        async with project.read() as r:
            history = await r.messages.list(conv.id)
        print(f"project {project.id} at {project.path}")
        print(f"conversation {conv.title!r}: {len(history)} messages")
        for message in history:
            print(f"  [{message.role:>9}] {message.content}")
        for info in await store.list_projects():
            print(f"{info.id}  {info.name!r}  {info.status}  {info.size_bytes} bytes")


if __name__ == "__main__":
    if len(sys.argv) > 1:
        asyncio.run(main(Path(sys.argv[1])))
    else:
        with tempfile.TemporaryDirectory() as tmp:
            asyncio.run(main(Path(tmp) / "projects"))
