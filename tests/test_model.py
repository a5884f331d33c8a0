"""Concurrent units of work on one project, checked against a plain in-memory model.

A Hypothesis ``RuleBasedStateMachine`` launches *batches*: several writer tasks, each running
its units of work one after the other, plus reader tasks taking snapshots, all at once on one
project. Units append, retitle and delete, raise half-way, roll back nested savepoints, write
rows the database must refuse, and are cancelled at random points (including while their
commit is in flight). Each writer owns the conversations it works on for the batch (so the
model never has to guess the commit order of two writers touching one row) and all writers
append to one shared conversation (so their commits interleave).

Every unit records its own outcome from inside its task: the ``async with`` block returned
(committed), raised our exception, was refused by the database, or was cancelled. After every
step the database must hold exactly what the model holds: what committed, in each writer's
order, once; nothing of a unit that failed or was cancelled.
"""

from __future__ import annotations

import asyncio
import copy
import dataclasses
import shutil
import sqlite3
import tempfile
from collections.abc import Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from hypothesis import Phase, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    rule,
    run_state_machine_as_test,
)

from demiarch_store import (
    AsyncProjectStore,
    ConstraintViolation,
    Conversation,
    Message,
    NotFound,
    Store,
    StoreConfig,
    Transaction,
)

GHOST = "0000000000ghost0000000000"
"""A conversation ID that never exists: writes to it are refused at commit."""


# -- what Hypothesis generates (dataclass reprs make shrunk examples readable) ----------------


@dataclass(frozen=True)
class Create:
    """Start a conversation (the writer owns it from then on)."""

    title: str


@dataclass(frozen=True)
class Append:
    """Append ``count`` messages to one of the writer's conversations."""

    conv: int
    count: int
    many: bool


@dataclass(frozen=True)
class AppendShared:
    """Append ``count`` messages to the conversation every writer shares."""

    count: int


@dataclass(frozen=True)
class Retitle:
    conv: int
    title: str


@dataclass(frozen=True)
class DeleteMessage:
    conv: int
    msg: int


@dataclass(frozen=True)
class DeleteConversation:
    conv: int


@dataclass(frozen=True)
class ReadBack:
    """Read a conversation inside the unit: it must see its own writes (holds the writer)."""

    conv: int


@dataclass(frozen=True)
class Fail:
    """Raise an exception half-way through the unit."""


@dataclass(frozen=True)
class Ghost:
    """A write the database refuses at commit (or at the unit's next read)."""

    kind: Literal["append", "retitle", "delete"]


@dataclass(frozen=True)
class Savepoint:
    """Run ``actions`` in ``tx.savepoint()``; then roll it back if ``rollback``."""

    actions: tuple[Action, ...]
    rollback: bool


Action = (
    Create
    | Append
    | AppendShared
    | Retitle
    | DeleteMessage
    | DeleteConversation
    | ReadBack
    | Fail
    | Ghost
    | Savepoint
)


@dataclass(frozen=True)
class Unit:
    """One ``async with project.transaction()``; ``cancel_in_commit=k`` cancels the task k
    loop iterations after the block's body ended, that is while it commits."""

    actions: tuple[Action, ...]
    cancel_in_commit: int | None = None


@dataclass(frozen=True)
class Writer:
    """A task running its units in order; ``cancel_after=k`` cancels it after k iterations."""

    units: tuple[Unit, ...]
    cancel_after: int | None = None


@dataclass(frozen=True)
class Batch:
    writers: tuple[Writer, ...]
    readers: int


_titles = st.text(max_size=6)
_index = st.integers(0, 7)
_plain: st.SearchStrategy[Action] = st.one_of(
    st.builds(Create, _titles),
    st.builds(Append, _index, st.integers(1, 3), st.booleans()),
    st.builds(AppendShared, st.integers(1, 3)),
    st.builds(Retitle, _index, _titles),
    st.builds(DeleteMessage, _index, _index),
    st.builds(DeleteConversation, _index),
    st.builds(ReadBack, _index),
    st.just(Fail()),
    st.builds(Ghost, st.sampled_from(["append", "retitle", "delete"])),
)
_actions: st.SearchStrategy[Action] = st.recursive(
    _plain,
    lambda inner: st.builds(Savepoint, st.lists(inner, max_size=3).map(tuple), st.booleans()),
    max_leaves=6,
)
_cancel = st.one_of(st.none(), st.none(), st.none(), st.integers(0, 12))
units = st.builds(
    Unit,
    st.lists(_actions, max_size=4).map(tuple),
    st.one_of(st.none(), st.none(), st.none(), st.integers(0, 3)),
)
# Write-only units (no ReadBack, which holds the writer) started together share group commits.
_write_only = st.recursive(
    st.one_of(
        st.builds(Create, _titles),
        st.builds(Append, _index, st.integers(1, 3), st.booleans()),
        st.builds(AppendShared, st.integers(1, 2)),
        st.builds(Retitle, _index, _titles),
        st.builds(DeleteMessage, _index, _index),
        st.builds(DeleteConversation, _index),
        st.builds(Ghost, st.sampled_from(["append", "retitle", "delete"])),
    ),
    lambda inner: st.builds(Savepoint, st.lists(inner, max_size=3).map(tuple), st.booleans()),
    max_leaves=5,
)
bursts = st.lists(
    st.builds(Unit, st.lists(_write_only, min_size=1, max_size=4).map(tuple)),
    min_size=3,
    max_size=8,
)
batches = st.builds(
    Batch,
    st.lists(
        st.builds(Writer, st.lists(units, min_size=1, max_size=3).map(tuple), _cancel),
        min_size=1,
        max_size=3,
    ).map(tuple),
    st.integers(0, 2),
)


# -- the model ------------------------------------------------------------------------------


@dataclass
class ConvState:
    record: Conversation
    title: str | None
    messages: list[Message] = field(default_factory=list)


@dataclass
class UnitState:
    """What a unit has done so far, as the model sees it (copied and restored by savepoints)."""

    convs: dict[str, ConvState]
    shared: list[Message] = field(default_factory=list)
    appended: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    doomed: bool = False


class Boom(Exception):
    """The exception a unit raises half-way."""


class Rollback(Exception):
    """Raised at the end of a savepoint that must roll back."""


@dataclass
class Outcome:
    writer: int
    unit: int
    spec: Unit
    result: Literal["committed", "raised", "refused", "cancelled"]
    appended: list[str]
    removed: list[str]


class ConcurrencyMachine(RuleBasedStateMachine):
    """One project under batches of concurrent units; the model is two dicts.

    On SQLite the project is a file of its own; with ``database_url`` set (a subclass's), a
    project of that PostgreSQL database, created by a Store the machine opens and closes."""

    database_url: str | None = None

    def __init__(self) -> None:
        super().__init__()
        self.loop = asyncio.new_event_loop()
        self.dir = Path(tempfile.mkdtemp(prefix="demiarch-model-"))
        self.path = self.dir / "model.sqlite"
        self.config = StoreConfig(
            projects_dir=self.dir,
            busy_deadline=5.0,
            acquire_timeout=30.0,
            database_url=self.database_url,
        )
        self.store: Store | None = None
        self.project: AsyncProjectStore | None = None
        self.convs: dict[str, ConvState] = {}
        self.shared: ConvState | None = None

    def run(self, coro: Coroutine[Any, Any, Any]) -> Any:
        return self.loop.run_until_complete(coro)

    @property
    def p(self) -> AsyncProjectStore:
        assert self.project is not None
        return self.project

    @initialize()
    def open_project(self) -> None:
        async def go() -> None:
            if self.database_url is None:
                self.project = await AsyncProjectStore(self.path, config=self.config).open()
            else:
                self.store = Store(self.config)
                self.project = await self.store.create_project(name="model")
            async with self.p.transaction() as tx:
                shared = await tx.conversations.create(title="shared")
            self.shared = ConvState(shared, "shared")

        self.run(go())

    def teardown(self) -> None:
        try:
            if self.store is not None:
                store = self.store
                if self.project is not None:
                    self.run(store.delete_project(self.project.id))
                self.run(store.close())
            elif self.project is not None:
                self.run(self.project.close())
            if self.path.exists():
                conn = sqlite3.connect(self.path)
                try:
                    assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
                    assert conn.execute("PRAGMA foreign_key_check").fetchall() == []
                finally:
                    conn.close()
        finally:
            self.loop.close()
            shutil.rmtree(self.dir, ignore_errors=True)

    # -- rules ------------------------------------------------------------------------------

    @rule()
    def reopen(self) -> None:
        """Close the project and open the file again: what committed is still there."""

        async def go() -> None:
            if self.store is None:
                await self.p.close()
                self.project = await AsyncProjectStore(self.path, config=self.config).open()
                return
            await self.store.close()  # on PostgreSQL: a new store, new connections
            self.store = Store(self.config)
            self.project = await self.store.open_project(self.p.id)

        self.run(go())

    @rule(batch=batches)
    def run_batch(self, batch: Batch) -> None:
        """Run every writer and reader of the batch at once, then fold commits into the model."""
        self.run(self._batch(batch))

    @rule(units=bursts)
    def group_commit_burst(self, units: list[Unit]) -> None:
        """Start many write-only units at once: they share group commits (one savepoint each)."""
        self.run(self._batch(Batch(tuple(Writer((u,)) for u in units), readers=1)))

    async def _batch(self, batch: Batch) -> None:
        project = self.p
        assert self.shared is not None
        before = {m.id for c in self.convs.values() for m in c.messages}
        before |= {m.id for m in self.shared.messages}
        owned: list[dict[str, ConvState]] = [{} for _ in batch.writers]
        for i, cid in enumerate(sorted(self.convs)):
            owned[i % len(batch.writers)][cid] = copy.deepcopy(self.convs[cid])
        initial = [set(o) for o in owned]
        outcomes: list[Outcome] = []
        shared_commits: list[Message] = []
        cancels_sent = [0] * len(batch.writers)
        snapshots: list[tuple[set[str], set[str], set[str]]] = []

        async def run_writer(w: int, spec: Writer) -> None:
            for u, unit in enumerate(spec.units):
                state = UnitState(copy.deepcopy(owned[w]))
                result: Literal["committed", "raised", "refused", "cancelled"] = "cancelled"
                try:
                    async with project.transaction() as tx:
                        for action in unit.actions:
                            await self._act(tx, action, state, f"w{w}u{u}")
                        if unit.cancel_in_commit is not None:
                            _cancel_later(w, unit.cancel_in_commit)
                    result = "committed"
                except Boom:
                    result = "raised"
                except (ConstraintViolation, NotFound):
                    result = "refused"
                    assert state.doomed, f"unit w{w}u{u} {unit} was refused by the database"
                finally:
                    outcomes.append(
                        Outcome(w, u, unit, result, list(state.appended), list(state.removed))
                    )
                if result == "committed":
                    assert not state.doomed, f"unit w{w}u{u} {unit} committed a refused write"
                    owned[w] = state.convs
                    shared_commits.extend(state.shared)
                await asyncio.sleep(0)

        def _cancel_later(w: int, k: int) -> None:
            task = asyncio.current_task()
            assert task is not None

            def tick(n: int) -> None:
                if n > 0:
                    self.loop.call_soon(tick, n - 1)
                elif task.cancel():
                    cancels_sent[w] += 1

            self.loop.call_soon(tick, k)

        async def cancel_after(w: int, task: asyncio.Task[None], k: int) -> None:
            for _ in range(k):
                await asyncio.sleep(0)
            if task.cancel():
                cancels_sent[w] += 1

        async def read(n: int) -> None:
            for _ in range(3):
                async with project.read() as r:
                    listed = await r.conversations.list()
                    msgs = await r.messages.list()
                    # Gets run in place when the reader's thread is idle, on the thread when
                    # not: either way in the same snapshot as the lists, though other tasks
                    # retitle conversations and delete messages meanwhile.
                    for record in [*listed[-3:], *msgs[-3:]]:
                        repo = r.messages if record in msgs else r.conversations
                        assert await repo.get(record.id) == record, "a get left the snapshot"
                convs = {c.id for c in listed}
                snapshots.append(({m.id for m in msgs}, {m.conversation_id for m in msgs}, convs))
                await asyncio.sleep(0)

        writers = [asyncio.create_task(run_writer(w, s)) for w, s in enumerate(batch.writers)]
        others = [
            asyncio.create_task(cancel_after(w, writers[w], s.cancel_after))
            for w, s in enumerate(batch.writers)
            if s.cancel_after is not None
        ]
        others += [asyncio.create_task(read(n)) for n in range(batch.readers)]
        async with asyncio.timeout(120):
            results = await asyncio.gather(*writers, *others, return_exceptions=True)
        for w, res in enumerate(results[: len(writers)]):
            if isinstance(res, asyncio.CancelledError):
                assert cancels_sent[w], f"writer {w} was cancelled although nobody cancelled it"
            elif isinstance(res, BaseException):
                raise res
        for res in results[len(writers) :]:
            if isinstance(res, BaseException):
                raise res
        for o in outcomes:
            if o.result == "cancelled":
                assert cancels_sent[o.writer], f"unit w{o.writer}u{o.unit} cancelled by nobody"

        # Fold the batch into the model: each writer's conversations as its last commit left
        # them, the shared conversation with every committed append.
        for w in range(len(batch.writers)):
            for cid in initial[w]:
                del self.convs[cid]
            self.convs.update(owned[w])
        self.shared.messages = sorted(self.shared.messages + shared_commits, key=lambda m: m.id)

        # What every snapshot saw: committed data only, each unit all-or-nothing.
        removed = {r for o in outcomes if o.result == "committed" for r in o.removed}
        committed = {a for o in outcomes if o.result == "committed" for a in o.appended}
        for seen, referenced, convs in snapshots:
            assert referenced <= convs, "a snapshot saw messages of a missing conversation"
            assert seen <= before | committed, "a snapshot saw a write that never committed"
            for o in outcomes:
                if o.result != "committed":
                    continue
                stable = set(o.appended) - removed
                part = seen & stable
                assert not part or part == stable, f"a snapshot saw part of unit {o}"

    async def _act(self, tx: Transaction, action: Action, s: UnitState, tag: str) -> None:
        """Do ``action`` in the unit and in the model's copy ``s`` (changed in place)."""
        ids = sorted(s.convs)
        if self.database_url is not None and isinstance(action, Create | Retitle):
            # PostgreSQL's text cannot hold NUL (InvalidValue, tested in test_properties.py):
            # here titles lose theirs, in the unit and in the model alike.
            action = dataclasses.replace(action, title=action.title.replace("\x00", ""))
        match action:
            case Create(title):
                conv = await tx.conversations.create(title=title, meta={"by": tag})
                s.convs[conv.id] = ConvState(conv, title)
            case Append(i, count, many) if ids:
                cid = ids[i % len(ids)]
                items = [{"role": "user", "content": f"{tag}:{k}"} for k in range(count)]
                if many:
                    new = await tx.messages.append_many(cid, items)
                else:
                    new = [await tx.messages.append(cid, **item) for item in items]
                s.convs[cid].messages.extend(new)
                s.appended.extend(m.id for m in new)
            case AppendShared(count):
                assert self.shared is not None
                for _k in range(count):
                    m = await tx.messages.append(self.shared.record.id, role="agent", content=tag)
                    s.shared.append(m)
                    s.appended.append(m.id)
            case Retitle(i, title) if ids:
                cid = ids[i % len(ids)]
                await tx.conversations.update(cid, title=title)
                s.convs[cid].title = title
            case DeleteMessage(i, j) if ids and s.convs[ids[i % len(ids)]].messages:
                msgs = s.convs[ids[i % len(ids)]].messages
                gone = msgs.pop(j % len(msgs))
                await tx.messages.delete(gone.id)
                s.removed.append(gone.id)
            case DeleteConversation(i) if ids:
                gone_conv = s.convs.pop(ids[i % len(ids)])
                await tx.conversations.delete(gone_conv.record.id)
                s.removed.extend(m.id for m in gone_conv.messages)
            case ReadBack(i) if ids:
                cid = ids[i % len(ids)]
                rows = await tx.messages.list(cid)  # refused here if the unit is doomed
                assert not s.doomed, "a refused write did not surface at the unit's read"
                assert rows == s.convs[cid].messages, f"{tag} does not read its own writes"
                assert (await tx.conversations.get(cid)).title == s.convs[cid].title
            case Fail():
                raise Boom(f"{tag} fails half-way")
            case Ghost("append"):
                await tx.messages.append(GHOST, role="user", content=tag)
                s.doomed = True
            case Ghost("retitle"):
                await tx.conversations.update(GHOST, title=tag)
                s.doomed = True
            case Ghost(_):
                await tx.messages.delete(GHOST)
                s.doomed = True
            case Savepoint(inner, rollback):
                saved = copy.deepcopy(s)
                try:
                    async with tx.savepoint():
                        for a in inner:
                            await self._act(tx, a, s, tag)
                        if rollback:
                            raise Rollback
                except Rollback:
                    vars(s).update(vars(saved))
            case _:
                pass  # an action on a conversation the writer does not have: nothing to do

    # -- the check after every step -----------------------------------------------------------

    @invariant()
    def database_matches_model(self) -> None:
        if self.project is None:
            return
        assert self.shared is not None
        expected = {cid: c for cid, c in self.convs.items()}
        expected[self.shared.record.id] = self.shared

        async def go() -> None:
            if self.store is None:
                pool = self.p.pool
                assert pool._in_flight == 0 and not pool._writer_busy and not pool._queue
                assert len(pool._readers_idle) == len(pool._readers_all), "a reader not returned"
            else:
                engine = self.p.handle.engine  # type: ignore[attr-defined]
                await asyncio.gather(*engine._lanes)  # a lane gives its connection back last
                assert not engine._queue, "a unit was left queued"
                assert self.p.stats().connections_in_use == 0, "a connection was not returned"
            async with self.p.read() as r:
                convs = await r.conversations.list()
                got = {c.id: c for c in convs}
                assert sorted(got) == sorted(expected), "conversations differ from the model"
                for cid, c in got.items():
                    want = expected[cid]
                    assert (c.title, c.meta, c.created_at) == (
                        want.title,
                        want.record.meta,
                        want.record.created_at,
                    )
                    assert await r.messages.list(cid) == want.messages, f"messages of {cid}"
                total = sum(len(c.messages) for c in expected.values())
                assert await r.messages.count() == total, "a unit was applied twice or lost"

        self.run(go())


def test_concurrency(engine_config: StoreConfig) -> None:
    """The machine on each engine (on PostgreSQL, projects of the session's database)."""
    machine = type(
        "ConcurrencyMachine", (ConcurrencyMachine,), {"database_url": engine_config.database_url}
    )
    if engine_config.database_url is None:
        run_state_machine_as_test(machine, settings=settings())
        return
    # On PostgreSQL a step costs round trips to the server: fewer examples (never none), and
    # no replaying or shrinking, whose reruns of the same steps the server's timing can steer
    # elsewhere (Hypothesis then reports its own "flaky" error, not the failure).
    run_state_machine_as_test(
        machine,
        settings=settings(
            settings(),
            max_examples=max(5, settings().max_examples // 3),
            database=None,
            phases=[Phase.explicit, Phase.generate],
        ),
    )


# -- regressions the machine found, kept as plain tests ------------------------------------------


def test_savepoint_rolled_back_after_a_read_drops_its_pending_writes(tmp_path: Path) -> None:
    """Found by the machine: ``Savepoint((ReadBack(0), Ghost('append')), rollback=True)``.

    The read flushed the unit, so the savepoint's rollback was queued as ``ROLLBACK TO``; the
    refused write queued after the read was still replayed at commit and failed the unit.
    """

    async def go() -> None:
        async with AsyncProjectStore(tmp_path / "sp.sqlite") as project:
            async with project.transaction() as tx:
                conv = await tx.conversations.create(title="kept")
            async with project.transaction() as tx:
                try:
                    async with tx.savepoint():
                        await tx.messages.list(conv.id)
                        await tx.messages.append(GHOST, role="user", content="dropped")
                        await tx.messages.append(conv.id, role="user", content="dropped")
                        raise Rollback
                except Rollback:
                    pass
                await tx.messages.append(conv.id, role="user", content="kept")
            async with project.read() as r:
                assert [m.content for m in await r.messages.list(conv.id)] == ["kept"]

    asyncio.run(go())
