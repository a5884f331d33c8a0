"""A child process for the session concurrency and fault tests: agents taking turns.

    python session_child.py DB TAG SESSIONS TURNS [--forever]
    python session_child.py DB pop SESSION_ID TASKS
    python session_child.py DB adk TAG SESSIONS TURNS

DB is a project's file, or URL#PROJECT_ID: a project on a PostgreSQL server.

Runs SESSIONS Agents SDK sessions (``s0``..) on the project at DB at once, each adding TURNS
turns of two items (``TAG:s<i>:<n>:user`` and ``...:assistant``) and reading its last 20, and
prints ``acked <session> <n>`` once a turn's add_items has returned. With ``--forever`` it
keeps going until it is killed. ``pop`` runs TASKS tasks popping items of one session until it
is empty, and prints ``popped <content>`` for each. ``adk`` runs SESSIONS ADK sessions of the
user TAG, each appending TURNS events whose state deltas touch the session, the user and the app.
"""

from __future__ import annotations

import asyncio
import sys
import tempfile
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from demiarch_store import AsyncProjectStore, Store, StoreConfig
from demiarch_store.integrations.openai_agents import DemiarchSession


@asynccontextmanager
async def opened(db: str) -> AsyncIterator[AsyncProjectStore]:
    """The project ``db`` names (see the module's docstring), closed when the block ends."""
    if db.startswith("postgresql://"):
        url, _, project_id = db.rpartition("#")
        config = StoreConfig(projects_dir=Path(tempfile.gettempdir()), database_url=url)
        async with Store(config) as store:
            yield await store.open_project(project_id)
    else:
        async with AsyncProjectStore(Path(db)) as project:
            yield project


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


async def main(db: str, tag: str, sessions: int, turns: int) -> None:
    async with opened(db) as project:
        await asyncio.gather(*(agent(project, tag, f"s{i}", turns) for i in range(sessions)))
    print("done", flush=True)


async def pop(db: str, sid: str, tasks: int) -> None:
    async with opened(db) as project:
        session = DemiarchSession(sid, project)

        async def popper() -> None:
            while (item := await session.pop_item()) is not None:
                print(f"popped {item['content']}", flush=True)

        await asyncio.gather(*(popper() for _ in range(tasks)))
    print("done", flush=True)


async def adk(db: str, tag: str, sessions: int, turns: int) -> None:
    from google.adk.events import Event, EventActions

    from demiarch_store.integrations.adk import DemiarchSessionService

    async with opened(db) as project:
        service = DemiarchSessionService(project)

        async def agent(i: int) -> None:
            session = await service.create_session(app_name="app", user_id=tag, session_id=f"s{i}")
            for n in range(turns):
                delta = {"n": n, f"user:{i}": n, f"app:{tag}-{i}": n}
                event = Event(author="user", invocation_id=f"{tag}:{i}:{n}")
                event.actions = EventActions(state_delta=delta)
                await service.append_event(session, event)

        await asyncio.gather(*(agent(i) for i in range(sessions)))
    print("done", flush=True)


if __name__ == "__main__":
    if sys.argv[2] == "adk":
        asyncio.run(adk(sys.argv[1], sys.argv[3], int(sys.argv[4]), int(sys.argv[5])))
        sys.exit(0)
    if sys.argv[2] == "pop":
        asyncio.run(pop(sys.argv[1], sys.argv[3], int(sys.argv[4])))
        sys.exit(0)
    db, tag, sessions, turns = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    asyncio.run(main(db, tag, sessions, -1 if "--forever" in sys.argv else turns))
