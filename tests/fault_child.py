"""Child processes for the fault tests (tests/test_faults.py). Run as a script:

    python fault_child.py writer DB_PATH TAG SEED
        Open (or create) the project; three agents each start a conversation (``conv <id>``),
        then append messages to it forever. After each ``async with`` block returns, its agent
        prints ``ack <conversation> <id> ...`` (flushed): the parent kills the process with
        SIGKILL at a random moment and checks every ack is stored.

    python fault_child.py diskfull DB_PATH CONVERSATION_ID LIMIT_BYTES
        Set RLIMIT_FSIZE (SIGXFSZ ignored) and write until the store refuses; then read,
        lift the limit and write again. Prints one JSON line with what happened.

    python fault_child.py perms SCENARIO DIR
        Run as an unprivileged user: open or create a project the user cannot write, and
        print one JSON line describing the error (class, message, path, hint).
"""

from __future__ import annotations

import asyncio
import json
import random
import resource
import signal
import sys
from pathlib import Path
from typing import Any

from demiarch_store import AsyncProjectStore, StorageError, Store, StoreConfig, StoreError


def _config(path: Path, **kw: Any) -> StoreConfig:
    return StoreConfig(projects_dir=path.parent, **kw)


async def writer(path: Path, tag: str, seed: int) -> None:
    rng = random.Random(seed)
    async with AsyncProjectStore(path, config=_config(path, busy_deadline=60.0)) as project:

        async def agent(name: str) -> None:
            # Three agents at once: their write-only units share group commits, and units
            # that read (a get or a query first) hold the writer in turn, in place or chained on
            # the thread.
            async with project.transaction() as tx:
                conv = await tx.conversations.create(title=name)
            print(f"conv {conv.id}", flush=True)
            i = 0
            while True:
                async with project.transaction() as tx:
                    roll = rng.random()
                    if roll < 0.2:
                        await tx.conversations.get(conv.id)  # reads: holds the writer
                    elif roll < 0.35:
                        await tx.messages.last(conv.id, 1)  # a query: in place too
                    n = rng.randint(1, 4)
                    items = [
                        {"role": "user", "content": f"{name}:{i}:{k}/{n}|" * rng.randint(1, 40)}
                        for k in range(n)
                    ]
                    if rng.random() < 0.5:
                        msgs = await tx.messages.append_many(conv.id, items)
                    else:
                        msgs = [await tx.messages.append(conv.id, **item) for item in items]
                    if rng.random() < 0.2:
                        await tx.flush()  # holds the writer: the kill may land mid-transaction
                print(f"ack {conv.id} " + " ".join(m.id for m in msgs), flush=True)
                i += 1

        await asyncio.gather(*(agent(f"{tag}a{a}") for a in range(3)))


def _describe(exc: BaseException) -> dict[str, Any]:
    return {
        "error": type(exc).__name__,
        "store_error": isinstance(exc, StoreError),
        "storage_error": isinstance(exc, StorageError),
        "message": str(exc),
        "path": str(getattr(exc, "path", None)),
        "hint": getattr(exc, "hint", None),
    }


async def diskfull(path: Path, conv_id: str, limit: int) -> dict[str, Any]:
    report: dict[str, Any] = {"acked": []}
    async with AsyncProjectStore(path, config=_config(path)) as project:
        soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, hard))
        big = "x" * 50_000
        for i in range(10_000):
            try:
                async with project.transaction() as tx:
                    m = await tx.messages.append(conv_id, role="user", content=f"{i}:{big}")
            except BaseException as exc:  # noqa: BLE001 - the parent checks what it was
                report["failure"] = _describe(exc)
                break
            report["acked"].append(m.id)
        # Reads still work while the disk is full.
        async with project.read() as r:
            report["readable"] = [m.id for m in await r.messages.list(conv_id)]
        # A second write while still full fails the same way, and does not hang.
        try:
            async with project.transaction() as tx:
                await tx.messages.append(conv_id, role="user", content=big)
            report["second"] = None
        except BaseException as exc:  # noqa: BLE001
            report["second"] = _describe(exc)
        # Space returns: the same open project writes again.
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        try:
            async with project.transaction() as tx:
                m = await tx.messages.append(conv_id, role="user", content="after the limit")
            report["after"] = m.id
        except BaseException as exc:  # noqa: BLE001
            report["after"] = _describe(exc)
    return report


async def perms(scenario: str, root: Path) -> dict[str, Any]:
    """Each scenario was prepared by root so that this (unprivileged) process cannot write."""
    steps: dict[str, Any] = {}
    try:
        if scenario == "projects_dir":
            async with Store(StoreConfig(projects_dir=root / "projects")) as store:
                await store.create_project(name="nope")
        else:
            path = root / "projects" / "p1" / "database.sqlite"
            async with AsyncProjectStore(path, config=_config(path), create=False) as project:
                steps["opened"] = True
                try:
                    async with project.read() as r:
                        steps["read"] = await r.conversations.count()
                except BaseException as exc:  # noqa: BLE001
                    steps["read"] = _describe(exc)
                async with project.transaction() as tx:
                    await tx.conversations.create(title="refused")
        steps["result"] = None
    except BaseException as exc:  # noqa: BLE001
        steps["result"] = _describe(exc)
    return steps


def main(argv: list[str]) -> None:
    mode = argv[1]
    if mode == "writer":
        asyncio.run(writer(Path(argv[2]), argv[3], int(argv[4])))
    elif mode == "diskfull":
        print(json.dumps(asyncio.run(diskfull(Path(argv[2]), argv[3], int(argv[4])))))
    elif mode == "perms":
        print(json.dumps(asyncio.run(perms(argv[2], Path(argv[3])))))
    else:
        raise SystemExit(f"unknown mode {mode!r}")


if __name__ == "__main__":
    main(sys.argv)
