"""Child process for the consistency test: an agent worker that writes and says so.

usage: python ack_writer.py DB_PATH CONVERSATION_ID
For every line read on stdin it commits one message in a unit of work, then prints
"ack <message id>" (the write is acknowledged: the block returned). Ends at end of input.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

from demiarch_store import AsyncProjectStore, StoreConfig


async def main(path: Path, conversation_id: str) -> None:
    config = StoreConfig(projects_dir=path.parent, busy_deadline=30.0)
    async with AsyncProjectStore(path, config=config, create=False) as project:
        loop = asyncio.get_running_loop()
        n = 0
        while await loop.run_in_executor(None, sys.stdin.readline):
            async with project.transaction() as tx:
                m = await tx.messages.append(conversation_id, role="assistant", content=f"{n}")
            print(f"ack {m.id}", flush=True)
            n += 1


if __name__ == "__main__":
    asyncio.run(main(Path(sys.argv[1]), sys.argv[2]))
