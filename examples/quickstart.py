"""The README's quick start, runnable: python examples/quickstart.py"""

import asyncio
import tempfile
from pathlib import Path

from demiarch_store import NotFound, Store, StoreConfig


async def main(projects_dir: Path) -> None:
    async with Store(StoreConfig(projects_dir=projects_dir)) as store:
        project = await store.create_project(name="my app")
        print(project.id, project.path.relative_to(projects_dir))

        async with project.transaction() as tx:  # commit on success, rollback on exception
            conv = await tx.conversations.create(title="planning")
            await tx.messages.append(conv.id, role="user", content="hello")
            await tx.messages.append_many(conv.id, [{"role": "tool", "content": "..."}] * 100)

        async with project.read() as r:  # a consistent snapshot on a reader connection
            history = await r.messages.list(conv.id)
            page = await r.messages.list(conv.id, limit=2, after=history[0].id)
            print(len(history), history[0].role, history[0].content, [m.role for m in page])
            try:
                await r.messages.get("no-such-id")
            except NotFound as exc:
                print("NotFound:", exc)

        for info in await store.list_projects():
            print(info.id, info.name, info.status, info.size_bytes)


if __name__ == "__main__":
    with tempfile.TemporaryDirectory() as tmp:
        asyncio.run(main(Path(tmp)))
