"""A child process for the session concurrency and fault tests: agents taking turns.

    python session_child.py DB TAG SESSIONS TURNS [--forever]
    python session_child.py DB pop SESSION_ID TASKS


Runs SESSIONS Agents SDK sessions (``s0``..) on the project at DB at once, each adding TURNS
turns of two items (``TAG:s<i>:<n>:user`` and ``...:assistant``) and reading its last 20, and
prints ``acked <session> <n>`` once a turn's add_items has returned. With ``--forever`` it
keeps going until it is killed. ``pop`` runs TASKS tasks popping items of one session until it
is empty, and prints ``popped <content>`` for each.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

from demiarch_store import AsyncProjectStore
from demiarch_store.integrations.openai_agents import DemiarchSession


async def agent(project: AsyncProjectStore, tag: str, sid: str, turns: int) -> None:
    session = DemiarchSession(sid, project)
    n = 0
    while turns < 0 or n < turns:
        await session.add_items(
            [
                {"role": "user", "content": f"{tag}:{sid}:{n}:user"},
                {"role": "assistant", "content": f"{tag}:{sid}:{n}:assistant"},
            ]
        )
        print(f"acked {tag} {sid} {n}", flush=True)
        await session.get_items(limit=20)
        n += 1


async def main(db: Path, tag: str, sessions: int, turns: int) -> None:
    async with AsyncProjectStore(db) as project:
        await asyncio.gather(*(agent(project, tag, f"s{i}", turns) for i in range(sessions)))
    print("done", flush=True)


async def pop(db: Path, sid: str, tasks: int) -> None:
    async with AsyncProjectStore(db) as project:
        session = DemiarchSession(sid, project)

        async def popper() -> None:
            while (item := await session.pop_item()) is not None:
                print(f"popped {item['content']}", flush=True)

        await asyncio.gather(*(popper() for _ in range(tasks)))
    print("done", flush=True)


if __name__ == "__main__":
    if sys.argv[2] == "pop":
        asyncio.run(pop(Path(sys.argv[1]), sys.argv[3], int(sys.argv[4])))
        sys.exit(0)
    db, tag, sessions, turns = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    asyncio.run(main(Path(db), tag, sessions, -1 if "--forever" in sys.argv else turns))
