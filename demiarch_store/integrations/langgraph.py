"""LangGraph on a project: ``DemiarchSaver`` (a checkpointer) and ``DemiarchStore`` (long-term
memory), over an open ``AsyncProjectStore``.

Install with ``pip install 'demiarch-store[langgraph]'``; then switch with one line::

    graph = builder.compile(checkpointer=DemiarchSaver(project), store=DemiarchStore(project))

Both use only the store's public API (``project.transaction()``, ``project.read()`` and the
``lg_*`` and ``memory_*`` repositories), so their rows are part of the project: backups,
bundles, ``check()`` and the command line see them.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator, Coroutine, Iterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, TypeVar

from langchain_core.runnables import RunnableConfig
from langgraph.checkpoint.base import (
    WRITES_IDX_MAP,
    BaseCheckpointSaver,
    ChannelVersions,
    Checkpoint,
    CheckpointMetadata,
    CheckpointTuple,
    PendingWrite,
    get_checkpoint_id,
    get_serializable_checkpoint_metadata,
    writes_sort_key,
)
from langgraph.checkpoint.serde.base import SerializerProtocol

from ..config import load_config
from ..errors import InvalidValue, ProjectNotFound
from ..project import AsyncProjectStore
from ..records import GraphBlob, GraphCheckpoint, GraphWrite
from ..store import Store
from ._langgraph_memory import DemiarchStore, SyncCallOnLoop, run_on_loop
from ._reads import quick_read

__all__ = ["DemiarchSaver", "DemiarchStore", "SyncCallOnLoop"]

T = TypeVar("T")

PAGE_SIZE = 200
"""Checkpoints ``alist`` reads per query (with their writes and channel values)."""


class DemiarchSaver(BaseCheckpointSaver[str]):
    """A LangGraph checkpointer that stores checkpoints in a demiarch-store project.

    ``DemiarchSaver(project)`` takes an open ``AsyncProjectStore``; create it on the event loop
    that opened the project. Every async method runs on that loop; the sync methods
    (``graph.invoke()``) may be called from any other thread, and run on that loop while the
    thread waits (on the loop's own thread they raise ``SyncCallOnLoop``).

    Channel values are stored once per channel version (``lg_blobs``): a value that did not
    change between steps is not written again. ``aget_tuple`` is one query; ``alist`` reads a
    page of checkpoints with their writes and channel values in one query. Writes of
    LangGraph's special channels (error, interrupt, resume, scheduled) replace earlier ones;
    other writes are kept once.

    Example::

        async with AsyncProjectStore("agent.sqlite") as project:
            graph = builder.compile(checkpointer=DemiarchSaver(project))
            await graph.ainvoke(inputs, {"configurable": {"thread_id": "t1"}})
    """

    def __init__(
        self,
        project: AsyncProjectStore,
        *,
        serde: SerializerProtocol | None = None,
    ) -> None:
        super().__init__(serde=serde)
        self.project = project
        try:
            self.loop: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            self.loop = None

    @classmethod
    @asynccontextmanager
    async def open(
        cls,
        path: Path | str | None = None,
        *,
        project_id: str | None = None,
        projects_dir: Path | str | None = None,
        create: bool = True,
        serde: SerializerProtocol | None = None,
    ) -> AsyncIterator[DemiarchSaver]:
        """Open a project and yield a saver on it; close the project on exit.

        Either ``path``, a database file (created if missing, like ``from_conn_string``), or
        ``project_id`` in ``projects_dir`` (the default directory if not given), created with
        that ID if it does not exist and ``create`` is true.
        """
        if (path is None) == (project_id is None):
            raise InvalidValue(
                "pass either a database path or a project_id",
                hint="DemiarchSaver.open('agent.sqlite') or "
                "DemiarchSaver.open(project_id=..., projects_dir=...)",
            )
        if path is not None:
            async with AsyncProjectStore(path) as project:
                yield cls(project, serde=serde)
            return
        config = (
            load_config() if projects_dir is None else load_config(projects_dir=Path(projects_dir))
        )
        async with Store(config) as store:
            assert project_id is not None
            try:
                project = await store.open_project(project_id)
            except ProjectNotFound:
                if not create:
                    raise
                project = await store.create_project(name=project_id, project_id=project_id)
            yield cls(project, serde=serde)

    # -- reading ------------------------------------------------------------------------------

    async def aget_tuple(self, config: RunnableConfig) -> CheckpointTuple | None:
        """Return the checkpoint of ``config`` (the newest of its thread and namespace if it
        names no ``checkpoint_id``), with its pending writes, or ``None``."""
        conf = config["configurable"]
        thread_id = str(conf["thread_id"])
        ns = conf.get("checkpoint_ns", "")
        async with quick_read(self.project) as r:
            rows, writes, blobs = await r.lg_checkpoints.load(
                thread_id, ns, checkpoint_id=get_checkpoint_id(config), limit=1
            )
        if not rows:
            return None
        return self._tuple(rows[0], self._checkpoint(rows[0]), blobs, writes)

    async def alist(
        self,
        config: RunnableConfig | None,
        *,
        filter: dict[str, Any] | None = None,
        before: RunnableConfig | None = None,
        limit: int | None = None,
    ) -> AsyncIterator[CheckpointTuple]:
        """Yield checkpoints newest first: of ``config``'s thread (and namespace, if it names
        one; every thread if ``config`` is None), whose metadata has ``filter``'s values,
        older than ``before``, at most ``limit``."""
        conf = config["configurable"] if config else {}
        thread_id = None if conf.get("thread_id") is None else str(conf["thread_id"])
        ns = conf.get("checkpoint_ns")
        checkpoint_id = conf.get("checkpoint_id") or None
        before_id = get_checkpoint_id(before) if before else None
        simple = {k: v for k, v in (filter or {}).items() if not isinstance(v, dict | list)}
        rest = {k: v for k, v in (filter or {}).items() if k not in simple}
        left = limit
        after: tuple[str, str, str] | None = None
        while left is None or left > 0:
            size = PAGE_SIZE if left is None or rest else min(left, PAGE_SIZE)
            async with self.project.read() as r:
                rows, writes, blobs = await r.lg_checkpoints.load(
                    thread_id,
                    ns,
                    checkpoint_id=checkpoint_id,
                    before=before_id,
                    after_key=after,
                    filter=simple,
                    limit=size,
                )
            if not rows:
                return
            last = rows[-1]
            after = (last.checkpoint_id, last.thread_id, last.checkpoint_ns)
            by_checkpoint: dict[tuple[str, str, str], list[GraphWrite]] = {}
            for w in writes:
                key = (w.thread_id, w.checkpoint_ns, w.checkpoint_id)
                by_checkpoint.setdefault(key, []).append(w)
            values = {(b.thread_id, b.checkpoint_ns, b.channel, b.version): b for b in blobs}
            for row in rows:
                if rest and not _matches(row.metadata, rest):
                    continue
                checkpoint = self._checkpoint(row)
                key = (row.thread_id, row.checkpoint_ns, row.checkpoint_id)
                mine = [
                    values[k]
                    for ch, v in checkpoint["channel_versions"].items()
                    if (k := (row.thread_id, row.checkpoint_ns, ch, str(v))) in values
                ]
                yield self._tuple(row, checkpoint, mine, by_checkpoint.get(key, []))
                if left is not None:
                    left -= 1
                    if left <= 0:
                        return
            if len(rows) < size:
                return

    # -- writing ------------------------------------------------------------------------------

    async def aput(
        self,
        config: RunnableConfig,
        checkpoint: Checkpoint,
        metadata: CheckpointMetadata,
        new_versions: ChannelVersions,
    ) -> RunnableConfig:
        """Store a checkpoint, and the values of the channels ``new_versions`` names (only
        those: the others are stored already)."""
        conf = config["configurable"]
        thread_id = str(conf["thread_id"])
        ns = conf.get("checkpoint_ns", "")
        saved = checkpoint.copy()
        values: dict[str, Any] = saved.pop("channel_values")  # type: ignore[misc]
        dumps = self.serde.dumps_typed
        blobs = [
            (ch, str(v), *dumps(values[ch])) if ch in values else (ch, str(v), "empty", None)
            for ch, v in new_versions.items()
        ]
        type_, data = dumps(saved)
        md = dict(get_serializable_checkpoint_metadata(config, metadata))
        run_id, step = md.get("run_id"), md.get("step")
        async with self.project.transaction() as tx:
            await tx.lg_blobs.put_many(thread_id, ns, blobs)
            await tx.lg_checkpoints.put(
                thread_id=thread_id,
                checkpoint_ns=ns,
                checkpoint_id=checkpoint["id"],
                parent_checkpoint_id=conf.get("checkpoint_id"),
                checkpoint_type=type_,
                checkpoint=data,
                metadata=md,
                channel_versions={ch: str(v) for ch, v in checkpoint["channel_versions"].items()},
                run_id=run_id if isinstance(run_id, str) else None,
                step=step if isinstance(step, int) else None,
            )
        return {
            "configurable": {
                "thread_id": thread_id,
                "checkpoint_ns": ns,
                "checkpoint_id": checkpoint["id"],
            }
        }

    async def aput_writes(
        self,
        config: RunnableConfig,
        writes: Sequence[tuple[str, Any]],
        task_id: str,
        task_path: str = "",
    ) -> None:
        """Store a task's writes after the checkpoint of ``config``."""
        conf = config["configurable"]
        dumps = self.serde.dumps_typed
        rows = [
            (WRITES_IDX_MAP.get(channel, idx), channel, *dumps(value))
            for idx, (channel, value) in enumerate(writes)
        ]
        async with self.project.transaction() as tx:
            await tx.lg_writes.put_many(
                str(conf["thread_id"]),
                conf.get("checkpoint_ns", ""),
                str(conf["checkpoint_id"]),
                task_id,
                rows,
                task_path=task_path,
            )

    async def adelete_thread(self, thread_id: str) -> None:
        """Delete a thread's checkpoints, writes and channel values, in every namespace."""
        async with self.project.transaction() as tx:
            await tx.lg_checkpoints.delete_thread(str(thread_id))

    async def adelete_for_runs(self, run_ids: Sequence[str]) -> None:
        """Delete the checkpoints made by these runs (``metadata["run_id"]``), with their
        writes."""
        if not run_ids:
            return
        async with self.project.transaction() as tx:
            await tx.lg_checkpoints.delete_runs(run_ids)

    async def acopy_thread(self, source_thread_id: str, target_thread_id: str) -> None:
        """Copy every checkpoint of a thread, with its writes and channel values, to another."""
        async with self.project.transaction() as tx:
            await tx.lg_checkpoints.copy_thread(str(source_thread_id), str(target_thread_id))

    async def aprune(self, thread_ids: Sequence[str], *, strategy: str = "keep_latest") -> None:
        """Prune threads: ``"keep_latest"`` keeps the newest checkpoint of each namespace (with
        its writes and the channel values it refers to), ``"delete"`` deletes them all.

        Not for threads whose graph uses LangGraph's (beta) ``DeltaChannel``: its values are
        rebuilt from the writes of earlier checkpoints, which ``keep_latest`` deletes.
        """
        if strategy not in ("keep_latest", "delete"):
            raise InvalidValue(
                f"unknown prune strategy {strategy!r}", hint="use 'keep_latest' or 'delete'"
            )
        if not thread_ids:
            return
        async with self.project.transaction() as tx:
            await tx.lg_checkpoints.prune(
                [str(t) for t in thread_ids], keep_latest=strategy == "keep_latest"
            )

    def get_next_version(self, current: str | int | None, channel: None) -> str:
        """Return the version after ``current``: a zero-padded counter, then a random fraction
        (so two branches forked from one checkpoint never store different values under one
        version)."""
        if current is None:
            n = 0
        elif isinstance(current, int):
            n = current
        else:
            n = int(str(current).split(".")[0])
        return f"{n + 1:032}.{random.random():016}"

    # -- sync, for graph.invoke() on another thread -----------------------------------------

    def get_tuple(self, config: RunnableConfig) -> CheckpointTuple | None:
        return self._sync(self.aget_tuple(config))

    def list(
        self,
        config: RunnableConfig | None,
        *,
        filter: dict[str, Any] | None = None,
        before: RunnableConfig | None = None,
        limit: int | None = None,
    ) -> Iterator[CheckpointTuple]:
        async def collect() -> list[CheckpointTuple]:
            found = self.alist(config, filter=filter, before=before, limit=limit)
            return [t async for t in found]

        return iter(self._sync(collect()))

    def put(
        self,
        config: RunnableConfig,
        checkpoint: Checkpoint,
        metadata: CheckpointMetadata,
        new_versions: ChannelVersions,
    ) -> RunnableConfig:
        return self._sync(self.aput(config, checkpoint, metadata, new_versions))

    def put_writes(
        self,
        config: RunnableConfig,
        writes: Sequence[tuple[str, Any]],
        task_id: str,
        task_path: str = "",
    ) -> None:
        self._sync(self.aput_writes(config, writes, task_id, task_path))

    def delete_thread(self, thread_id: str) -> None:
        self._sync(self.adelete_thread(thread_id))

    def delete_for_runs(self, run_ids: Sequence[str]) -> None:
        self._sync(self.adelete_for_runs(run_ids))

    def copy_thread(self, source_thread_id: str, target_thread_id: str) -> None:
        self._sync(self.acopy_thread(source_thread_id, target_thread_id))

    def prune(self, thread_ids: Sequence[str], *, strategy: str = "keep_latest") -> None:
        self._sync(self.aprune(thread_ids, strategy=strategy))

    def _sync(self, coro: Coroutine[Any, Any, T]) -> T:
        return run_on_loop(self.loop, coro, self.project, "DemiarchSaver")

    # -- rows to LangGraph's types ------------------------------------------------------------

    def _checkpoint(self, row: GraphCheckpoint) -> Checkpoint:
        return self.serde.loads_typed((row.checkpoint_type, row.checkpoint))  # type: ignore[no-any-return]

    def _tuple(
        self,
        row: GraphCheckpoint,
        checkpoint: Checkpoint,
        blobs: Sequence[GraphBlob],
        writes: Sequence[GraphWrite],
    ) -> CheckpointTuple:
        loads = self.serde.loads_typed
        checkpoint["channel_values"] = {
            b.channel: loads((b.value_type, b.value or b""))
            for b in blobs
            if b.value_type != "empty"
        }
        ordered = sorted(writes, key=lambda w: writes_sort_key(w.task_path, w.task_id, w.idx))
        pending: list[PendingWrite] = [
            (w.task_id, w.channel, loads((w.value_type, w.value or b""))) for w in ordered
        ]
        ids = {"thread_id": row.thread_id, "checkpoint_ns": row.checkpoint_ns}
        parent = row.parent_checkpoint_id
        return CheckpointTuple(
            config={"configurable": {**ids, "checkpoint_id": row.checkpoint_id}},
            checkpoint=checkpoint,
            metadata=row.metadata if row.metadata is not None else {},
            parent_config={"configurable": {**ids, "checkpoint_id": parent}} if parent else None,
            pending_writes=pending,
        )


def _matches(metadata: Any, expected: dict[str, Any]) -> bool:
    return isinstance(metadata, dict) and all(metadata.get(k) == v for k, v in expected.items())
