"""The fast paths keep the semantics: shared read epochs, batched jobs, fast IDs."""

from __future__ import annotations

import asyncio
import random
import sqlite3
from collections.abc import AsyncIterator
from dataclasses import replace

import pytest

from demiarch_store import AsyncProjectStore, PoolTimeout, Store, StoreConfig
from demiarch_store.ids import _encode, new_record_id

pytestmark = pytest.mark.anyio


@pytest.fixture(params=[True, False], ids=["in-place", "threaded"])
async def either(request: pytest.FixtureRequest, config: StoreConfig) -> AsyncIterator[Store]:
    """Units that read run in place when the writer's thread is idle (the default), or always
    on the thread, where units that read one after another chain into one transaction."""
    async with Store(replace(config, inline_writes=request.param)) as store:
        yield store


def test_record_ids_match_the_reference_encoding_and_increase() -> None:
    ids = [new_record_id() for _ in range(5000)]
    assert ids == sorted(ids) and len(set(ids)) == len(ids)
    for record_id in ids[::97]:
        assert len(record_id) == 26
        value = 0
        for ch in record_id:
            value = value * 32 + "0123456789abcdefghjkmnpqrstvwxyz".index(ch)
        assert _encode(value, 26) == record_id


async def test_snapshot_started_after_a_commit_sees_it(project: AsyncProjectStore) -> None:
    async with project.transaction() as tx:
        conv = await tx.conversations.create(title="c")
    async with project.read() as first:
        before = await first.messages.count()
        async with project.transaction() as tx:
            await tx.messages.append(conv.id, role="user", content="new")
        # The first snapshot's epoch is still open: a later snapshot must not join it.
        async with project.read() as second:
            assert await second.messages.count() == before + 1
        assert await first.messages.count() == before  # still its own consistent view


async def test_concurrent_snapshots_are_consistent_and_fresh(project: AsyncProjectStore) -> None:
    async with project.transaction() as tx:
        conv = await tx.conversations.create(title="c")
    acknowledged = 0

    async def writer() -> None:
        nonlocal acknowledged
        for _ in range(40):
            async with project.transaction() as tx:
                await tx.messages.append(conv.id, role="user", content="x")
            acknowledged += 1
            await asyncio.sleep(0)

    async def reader() -> None:
        for _ in range(60):
            floor = acknowledged
            async with project.read() as r:
                first = await r.messages.count()
                await asyncio.sleep(random.choice([0, 0, 0.001]))
                again = await r.messages.count()
            assert first == again  # one state for the whole block
            assert first >= floor  # includes every unit acknowledged before it began

    await asyncio.gather(writer(), *(reader() for _ in range(12)))
    async with project.read() as r:
        assert await r.messages.count() == 40


async def test_shared_readers_leave_exclusive_acquire_working(tmp_path: object) -> None:
    from pathlib import Path

    path = Path(str(tmp_path)) / "one.sqlite"
    config = StoreConfig(projects_dir=path.parent, max_readers=1, acquire_timeout=0.2)
    async with AsyncProjectStore(path, config=config) as project:
        async with project.transaction() as tx:
            conv = await tx.conversations.create(title="c")
        pool = project.pool
        worker = await pool.acquire_reader()
        # The only reader is held alone: a snapshot waits, then times out cleanly.
        with pytest.raises(PoolTimeout):
            async with project.read() as r:
                await r.conversations.get(conv.id)
        waiting = asyncio.create_task(_read_title(project, conv.id))
        await asyncio.sleep(0.01)
        pool.release_reader(worker, started=False)
        assert await waiting == "c"
        # Snapshots waiting together share the freed reader.
        worker = await pool.acquire_reader()
        tasks = [asyncio.create_task(_read_title(project, conv.id)) for _ in range(5)]
        await asyncio.sleep(0.01)
        pool.release_reader(worker, started=False)
        assert await asyncio.gather(*tasks) == ["c"] * 5
        # A cancelled waiter gives its place back.
        worker = await pool.acquire_reader()
        task = asyncio.create_task(_read_title(project, conv.id))
        await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        pool.release_reader(worker, started=False)
        assert await _read_title(project, conv.id) == "c"
        assert pool._readers_idle == pool._readers_all and not pool._shared


def _checkpoint(conn: sqlite3.Connection) -> tuple[int, int, int]:
    return conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()  # type: ignore[no-any-return]


async def _read_title(project: AsyncProjectStore, conv_id: str) -> str | None:
    async with project.read() as r:
        return (await r.conversations.get(conv_id)).title


async def test_read_epoch_ends_its_transaction(project: AsyncProjectStore) -> None:
    async with project.transaction() as tx:
        conv = await tx.conversations.create(title="c")
    await asyncio.gather(*(_read_title(project, conv.id) for _ in range(20)))
    # Every epoch ended: a checkpoint can reset the whole WAL (no reader pins an old state).
    async with project.transaction() as tx:
        await tx.conversations.update(conv.id, title="d")
    pool = project.pool
    await pool.acquire_writer()
    try:
        busy, _, _ = await pool.run_writer(_checkpoint, action="checkpointing")
    finally:
        pool.release_writer()
    assert busy == 0
    assert await _read_title(project, conv.id) == "d"


async def test_chained_units_fail_alone_and_commit_together(either: Store) -> None:
    from demiarch_store import NotFound

    project = await either.create_project(name="p")
    async with project.transaction() as tx:
        conv = await tx.conversations.create(title="c")
    outcomes: dict[int, str] = {}

    async def unit(i: int) -> None:
        try:
            async with project.transaction() as tx:
                seen = await tx.conversations.get(conv.id)  # reads: holds the writer
                await tx.messages.append(seen.id, role="user", content=f"m{i}")
                if i % 5 == 1:
                    raise RuntimeError("the caller gives up")
                if i % 5 == 2:
                    await tx.conversations.update("missing", title="x")  # NotFound at commit
                if i % 5 == 3:
                    await tx.messages.count()  # a second read inside the unit
        except RuntimeError:
            outcomes[i] = "aborted"
        except NotFound:
            outcomes[i] = "not found"
        else:
            outcomes[i] = "ok"

    await asyncio.gather(*(unit(i) for i in range(60)))
    assert sorted(i for i, o in outcomes.items() if o == "aborted") == list(range(1, 60, 5))
    assert sorted(i for i, o in outcomes.items() if o == "not found") == list(range(2, 60, 5))
    committed = {f"m{i}" for i, o in outcomes.items() if o == "ok"}
    async with project.read() as r:
        stored = {m.content for m in await r.messages.list(conv.id)}
    assert stored == committed and len(committed) == 36
    pool = project.pool
    assert not pool._chain and not pool._tx_open and not pool._writer_busy


async def test_chained_units_survive_cancellation(either: Store) -> None:
    project = await either.create_project(name="p")
    async with project.transaction() as tx:
        conv = await tx.conversations.create(title="c")
    done: list[str] = []

    async def unit(i: int) -> None:
        async with project.transaction() as tx:
            await tx.conversations.get(conv.id)
            await tx.messages.append(conv.id, role="user", content=f"m{i}")
        done.append(f"m{i}")  # only once the unit committed

    tasks = [asyncio.create_task(unit(i)) for i in range(40)]
    for _ in range(3):
        await asyncio.sleep(0)
    for task in tasks[::3]:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    async with project.read() as r:
        stored = {m.content for m in await r.messages.list(conv.id)}
    assert stored == set(done)
    async with asyncio.timeout(5):  # the writer is free again
        async with project.transaction() as tx:
            await tx.conversations.get(conv.id)


async def test_fast_inserts_round_trip_every_column(project: AsyncProjectStore) -> None:
    async with project.transaction() as tx:
        conv = await tx.conversations.create(title="c", meta={"k": [1, 2]})
        one = await tx.messages.append(conv.id, role="user", content="hi", meta={"a": 1})
        many = await tx.messages.append_many(
            conv.id,
            [
                {"role": "tool", "content": f"r{i}", "meta": {"i": i} if i % 2 else None}
                for i in range(5)
            ],
        )
    async with project.read() as r:
        assert await r.conversations.get(conv.id) == conv
        stored = await r.messages.list(conv.id)
    assert stored == [one, *many]
    assert [m.meta for m in many] == [None, {"i": 1}, None, {"i": 3}, None]
    assert len({m.created_at for m in many}) == 1 and many[0].created_at.tzinfo is not None


def test_fast_record_constructor_matches_the_dataclass() -> None:
    from datetime import UTC, datetime

    from demiarch_store.records import Message
    from demiarch_store.repositories import MessageRepository, _constructor

    now = datetime.now(UTC)
    made = MessageRepository._make("id", "conv", "user", "hi", {"a": 1}, now)
    assert made == Message("id", "conv", "user", "hi", {"a": 1}, now)
    assert type(made) is Message and hash(made.id) == hash("id")
    with pytest.raises(AttributeError):
        made.role = "tool"  # type: ignore[misc]

    class Plain:
        pass

    assert _constructor(Plain) is Plain  # not a slotted dataclass: its own constructor


async def test_a_chain_whose_transaction_dies_acknowledges_nothing_lost(either: Store) -> None:
    from demiarch_store.sqlite.connection import _rollback_if_active

    project = await either.create_project(name="p")
    async with project.transaction() as tx:
        conv = await tx.conversations.create(title="c")
    pool = project.pool

    async def unit(name: str) -> None:
        async with project.transaction() as tx:
            await tx.conversations.get(conv.id)  # reads: holds the writer, joins the chain
            if name == "b":
                # What SQLite does on an I/O error or a full disk: the whole transaction,
                # with the units before this one in the chain, is rolled back.
                pool.writer.post(_rollback_if_active)
            await tx.messages.append(conv.id, role="user", content=name)

    names = ["a", "b", "c", "d"]
    results = await asyncio.gather(*(unit(n) for n in names), return_exceptions=True)
    async with project.read() as r:
        stored = {m.content for m in await r.messages.list(conv.id)}
    for name, result in zip(names, results, strict=True):
        assert (name in stored) == (result is None), (name, result)
    assert isinstance(results[1], Exception)
    async with asyncio.timeout(5):  # the writer is healthy again
        await unit("e")
    async with project.read() as r:
        assert "e" in {m.content for m in await r.messages.list(conv.id)}


async def test_a_value_sqlite_cannot_bind_fails_its_unit_alone(either: Store) -> None:
    project = await either.create_project(name="p")
    async with project.transaction() as tx:
        conv = await tx.conversations.create(title="c")

    async def unit(i: int, *, reads: bool) -> str:
        try:
            async with project.transaction() as tx:
                if reads:
                    await tx.conversations.get(conv.id)  # a chain of units that read
                # 2**70 does not fit SQLite's 64-bit integers: OverflowError while binding.
                meta = {"n": 1} if i % 3 else None
                await tx.messages.append(conv.id, role="user", content=f"{reads}{i}", meta=meta)
                if i % 3 == 0:
                    await tx.conversations.update(conv.id, meta={"big": 1})
                    tx.defer(_op_with_unbindable_value())
        except Exception:
            return "failed"
        return "ok"

    for reads in (False, True):
        outcomes = await asyncio.gather(*(unit(i, reads=reads) for i in range(12)))
        assert outcomes == ["failed" if i % 3 == 0 else "ok" for i in range(12)]
    async with project.read() as r:
        stored = {m.content for m in await r.messages.list(conv.id)}
    assert stored == {f"{reads}{i}" for reads in (False, True) for i in range(12) if i % 3}


def _op_with_unbindable_value() -> object:
    from demiarch_store.engine import Op

    return Op("UPDATE conversations SET title = ? WHERE id = ?", (2**70, "x"))


def test_batches_of_ids_increase_and_encode_like_single_ones() -> None:
    from demiarch_store.ids import new_record_ids

    ids: list[str] = []
    for n in (0, 1, 2, 7, 1023, 1024, 1025, 2500):
        ids += new_record_ids(n)
        ids.append(new_record_id())
    assert ids == sorted(ids) and len(set(ids)) == len(ids)
    alphabet = "0123456789abcdefghjkmnpqrstvwxyz"
    for record_id in ids[::37]:
        value = 0
        for ch in record_id:
            value = value * 32 + alphabet.index(ch)
        assert _encode(value, 26) == record_id


def test_generated_row_loaders_build_what_the_codec_and_constructor_build() -> None:
    """Every repository's generated ``row -> record`` equals SQLAlchemy's conversion, and a
    record type the generator cannot fill slot by slot (``__post_init__``) goes through its
    own constructor."""
    from dataclasses import dataclass
    from datetime import UTC, datetime

    from demiarch_store.repositories import _DIALECT, Codec, Repository, _row_loader
    from demiarch_store.schema import messages, to_micros

    when = datetime(2026, 11, 22, 3, 4, 5, 678901, tzinfo=UTC)
    stored = {"timestamp": to_micros(when), "json": '{"a": [1, "x"]}'}
    for repo in Repository.__subclasses__():
        codec = repo._codec
        loaders = dict(codec.row_loaders)
        # A NULL in every nullable-looking column and a stored value in the others.
        for fill_nulls in (False, True):
            row = []
            for i, name in enumerate(codec.names):
                if fill_nulls and i in loaders:
                    row.append(None)
                elif codec.timestamps[i]:
                    row.append(stored["timestamp"])
                elif i in loaders and "JSON" in type(repo.table.c[name].type).__name__:
                    row.append(stored["json"])
                elif i in loaders:
                    row.append(1)  # money (nano-units) or a boolean
                else:
                    row.append(f"{name}-value")
            # The reference: SQLAlchemy's own result processor for every column.
            values = []
            for column, value in zip(repo.table.columns, row, strict=True):
                proc = column.type.result_processor(_DIALECT, None)
                values.append(value if proc is None or value is None else proc(value))
            assert repo._load(tuple(row)) == repo._make(*values), repo.__name__

    seen: list[str] = []

    @dataclass(frozen=True)
    class Checked:
        id: str
        conversation_id: str
        role: str
        content: str
        meta: object
        created_at: datetime

        def __post_init__(self) -> None:
            seen.append(self.id)

    load = _row_loader(Checked, Codec(messages), Checked)
    record = load(("m1", "c1", "user", "hi", '{"k": 1}', to_micros(when)))
    assert record == Checked("m1", "c1", "user", "hi", {"k": 1}, when)
    assert seen == ["m1", "m1"]  # the loader went through __init__ and __post_init__


@pytest.fixture
async def threaded(store: Store) -> AsyncIterator[AsyncProjectStore]:
    """A project whose every read goes to a reader's thread (``inline_reads=False``)."""
    created = await store.create_project(name="threaded")
    path = created.path
    async with AsyncProjectStore(path, config=replace(store.config, inline_reads=False)) as p:
        yield p


async def test_concurrent_gets_run_as_one_query_and_each_gets_its_own_answer(
    threaded: AsyncProjectStore,
) -> None:
    """Point reads queued together on a reader run as one ``WHERE id IN (...)`` query (seen in
    SQLite's own statement trace), and every get still returns its record, a missing ID still
    raises NotFound, and a repeated ID is answered twice."""
    from demiarch_store import NotFound

    async with threaded.transaction() as tx:
        conv = await tx.conversations.create(title="many gets")
        sent = await tx.messages.append_many(
            conv.id, [{"role": "user", "content": f"m{i}"} for i in range(40)]
        )
    statements: list[str] = []
    async with threaded.read() as first:
        await first.messages.count()  # the epoch's transaction has begun on its reader
        worker = first._worker
        assert worker is not None
        await worker.submit(lambda conn: conn.set_trace_callback(statements.append))
        wanted = [m.id for m in sent] + [sent[3].id, "0" * 26]

        async def get(message_id: str) -> str:
            async with threaded.read() as r:
                assert r._worker is worker
                try:
                    return (await r.messages.get(message_id)).content
                except NotFound:
                    return "missing"

        got = await asyncio.gather(*(get(i) for i in wanted))
        await worker.submit(lambda conn: conn.set_trace_callback(None))
    assert got == [f"m{i}" for i in range(40)] + ["m3", "missing"]
    # The trace shows each statement with its parameters: one holds many of the IDs.
    merged = [s for s in statements if " IN (" in s]
    assert merged and max(sum(i in s for i in set(wanted)) for s in merged) > 10, statements
    assert len(statements) < len(wanted)  # fewer queries than gets


async def test_a_merged_get_that_fails_leaves_the_other_gets_their_rows(
    threaded: AsyncProjectStore,
) -> None:
    """One row whose text is not UTF-8 (a scribbled page) makes the merged query fail; each get
    then runs alone: the damaged one raises CorruptDatabase, the others return their records."""
    from demiarch_store import CorruptDatabase

    async with threaded.transaction() as tx:
        conv = await tx.conversations.create(title="one bad row")
        sent = await tx.messages.append_many(
            conv.id, [{"role": "user", "content": f"m{i}"} for i in range(10)]
        )
    raw = sqlite3.connect(threaded.path)
    with raw:
        raw.execute("UPDATE messages SET content = CAST(X'FF' AS TEXT) WHERE id = ?", (sent[4].id,))
    raw.close()
    async with threaded.read() as first:
        await first.messages.count()

        async def get(message_id: str) -> str:
            async with threaded.read() as r:
                try:
                    return (await r.messages.get(message_id)).content
                except CorruptDatabase:
                    return "corrupt"

        got = await asyncio.gather(*(get(m.id) for m in sent))
    assert got == [f"m{i}" if i != 4 else "corrupt" for i in range(10)]


async def test_more_gets_at_once_than_one_merged_query_takes(
    threaded: AsyncProjectStore,
) -> None:
    """600 gets gathered in one snapshot (runs of at most 256 per query), each ID twice."""
    async with threaded.transaction() as tx:
        conv = await tx.conversations.create(title="wide")
        sent = await tx.messages.append_many(
            conv.id, [{"role": "user", "content": f"w{i}"} for i in range(300)]
        )
    async with threaded.read() as r:
        got = await asyncio.gather(*(r.messages.get(m.id) for m in sent + sent))
    assert got == sent + sent


async def test_a_group_commit_stops_at_two_thousand_rows_without_splitting_a_unit(
    project: AsyncProjectStore,
) -> None:
    """Queued units share a transaction until it holds 2,000 rows: five batches of 1,000 rows
    waiting together commit as groups of two, two and one, each unit whole."""
    async with project.transaction() as tx:
        conv = await tx.conversations.create(title="c")
    pool = project.pool
    await pool.acquire_writer()  # the units below queue behind this holder

    async def batch(i: int) -> list[str]:
        async with project.transaction() as tx:
            sent = await tx.messages.append_many(
                conv.id, [{"role": "tool", "content": f"b{i}"}] * 1000
            )
        return [m.id for m in sent]

    units = [asyncio.create_task(batch(i)) for i in range(5)]
    await asyncio.sleep(0.05)
    assert len(pool._queue) == 5
    before = project.stats().group_commits
    pool.release_writer()
    async with asyncio.timeout(30):
        ids = await asyncio.gather(*units)
    assert project.stats().group_commits - before == 3
    async with project.read() as r:
        stored = [m.id for m in await r.messages.list(conv.id)]
    assert sorted(stored) == sorted(i for unit in ids for i in unit)
