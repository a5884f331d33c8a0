"""A task that counts the turns of the event loop it gets: does other work let it run?"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager


class Ticks:
    count = 0


@asynccontextmanager
async def ticking() -> AsyncIterator[Ticks]:
    """Run a task that counts one tick per turn of the event loop until the block ends."""
    ticks = Ticks()

    async def tick() -> None:
        while True:
            ticks.count += 1
            await asyncio.sleep(0)

    task = asyncio.create_task(tick())
    try:
        yield ticks
    finally:
        task.cancel()
