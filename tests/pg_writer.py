"""Child process for the PostgreSQL cross-process test: write units, acknowledge each after commit.

usage: python pg_writer.py DATABASE_URL PROJECT_ID CONVERSATION_ID TAG UNITS
Prints one line per committed unit: "ack <message id>". Every third unit reads first (it takes
the project's lock); the others only write (they go through group commit).
"""

from __future__ import annotations

import asyncio
import sys
import tempfile

from demiarch_store import Store, StoreConfig


async def main(url: str, project_id: str, conversation_id: str, tag: str, units: int) -> None:
    config = StoreConfig(projects_dir=tempfile.gettempdir(), database_url=url, busy_deadline=30.0)
    async with Store(config) as store:
        project = await store.open_project(project_id)
        for i in range(units):
            async with project.transaction() as tx:
                if i % 3 == 0:
                    await tx.messages.last(conversation_id, 1)
                m = await tx.messages.append(conversation_id, role="user", content=f"{tag}:{i}")
            print(f"ack {m.id}", flush=True)


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5])))
