"""Child process for cross-process tests: write units and acknowledge each after commit.

usage: python proc_writer.py DB_PATH CONVERSATION_ID TAG UNITS
Prints one line per committed unit: "ack <message id>".
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

from demiarch_store import AsyncProjectStore, StoreConfig


async def main(path: Path, conversation_id: str, tag: str, units: int) -> None:
    config = StoreConfig(projects_dir=path.parent.parent, busy_deadline=30.0)
    async with AsyncProjectStore(path, config=config, project_id=path.parent.name) as project:
        for i in range(units):
            async with project.transaction() as tx:
                m = await tx.messages.append(conversation_id, role="user", content=f"{tag}:{i}")
            print(f"ack {m.id}", flush=True)


if __name__ == "__main__":
    asyncio.run(main(Path(sys.argv[1]), sys.argv[2], sys.argv[3], int(sys.argv[4])))
