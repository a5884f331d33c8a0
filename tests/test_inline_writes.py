"""Small write-only units commit in place, on the event loop's thread (``inline_writes``).

Only a unit that is the project's only work, while the writer's thread is idle; the same
connection, the same ``BEGIN IMMEDIATE ... COMMIT``, the same errors. It never waits on the
loop: a lock held elsewhere sends the unit to the thread, and so does the checkpoint a commit
would start.
"""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from collections.abc import AsyncIterator
from dataclasses import replace
from decimal import Decimal
from typing import Any

import pytest
from lock_holder import hold_write_lock, release_write_lock
from ticker import ticking

from demiarch_store import AsyncProjectStore, ConstraintViolation, Store, StoreConfig

pytestmark = pytest.mark.anyio

LOOP = "loop"
THREAD = "writer thread"


@pytest.fixture(params=[True, False], ids=["in-place", "threaded"])
async def either(request: pytest.FixtureRequest, config: StoreConfig) -> AsyncIterator[Store]:
    """A store committing small lone units in place (the default), or always on the thread."""
    async with Store(replace(config, inline_writes=request.param)) as store:
        yield store


async def _trace(project: AsyncProjectStore) -> list[tuple[str, str]]:
    """Record each statement the writer's connection runs, and on which thread it ran."""
    seen: list[tuple[str, str]] = []
    loop_thread = threading.get_ident()

    def trace(sql: str) -> None:
        where = LOOP if threading.get_ident() == loop_thread else THREAD
        seen.append((where, sql))

    await project.pool.writer.submit(lambda conn: conn.set_trace_callback(trace))
    return seen


def _where(seen: list[tuple[str, str]], prefix: str) -> list[str]:
    return [where for where, sql in seen if sql.startswith(prefix)]


def _settings(conn: sqlite3.Connection) -> tuple[Any, ...]:
    return (
        conn.execute("PRAGMA busy_timeout").fetchone()[0],
        conn.execute("PRAGMA wal_autocheckpoint").fetchone()[0],
        conn.in_transaction,
    )


async def test_a_lone_unit_commits_alike_in_place_and_on_the_thread(either: Store) -> None:
    """Acknowledged means committed (another connection sees it at once); a failing unit
    raises the same error and leaves nothing behind; only the thread it ran on differs."""
    inline = either.config.inline_writes
    project = await either.create_project(name="either")
    async with project.transaction() as tx:
        conv = await tx.conversations.create(title="c")
    seen = await _trace(project)
    async with project.transaction() as tx:
        sent = await tx.messages.append(conv.id, role="user", content="hello")
        more = await tx.messages.append_many(conv.id, [{"role": "tool", "content": "x"}] * 3)
    raw = sqlite3.connect(project.path)
    try:
        stored = raw.execute("SELECT id, content FROM messages ORDER BY id").fetchall()
        assert stored == [(sent.id, "hello")] + [(m.id, "x") for m in more]
    finally:
        raw.close()
    assert _where(seen, "BEGIN IMMEDIATE") == [LOOP if inline else THREAD]
    assert _where(seen, "INSERT INTO messages") == [LOOP if inline else THREAD] * 4  # 1 + 3 rows
    assert _where(seen, "COMMIT") == [LOOP if inline else THREAD]

    with pytest.raises(ConstraintViolation) as caught:
        async with project.transaction() as tx:
            await tx.messages.append(conv.id, role="user", content="kept out")
            await tx.messages.append("no-such-conversation", role="user", content="orphan")
    assert caught.value.project == project.id
    assert _where(seen, "ROLLBACK") == [LOOP if inline else THREAD]
    async with project.read() as r:
        assert await r.messages.count(conv.id) == 4  # nothing of the failed unit
    await project.pool.writer.submit(lambda conn: conn.set_trace_callback(None))
    # The thread finds its own settings again, and no transaction left open.
    assert await project.pool.writer.submit(_settings) == (50, 4000, False)  # the backstop
    stats = project.stats()
    assert (stats.commits, stats.rollbacks) == (3, 1)


async def test_only_a_small_insert_only_unit_alone_commits_in_place(
    project: AsyncProjectStore, config: StoreConfig
) -> None:
    """Updates, big batches, concurrent units and synchronous=FULL go to the thread."""
    async with project.transaction() as tx:
        conv = await tx.conversations.create(title="c")
    seen = await _trace(project)

    async with project.transaction() as tx:
        await tx.conversations.update(conv.id, title="renamed")
    async with project.transaction() as tx:
        await tx.messages.append_many(conv.id, [{"role": "tool", "content": "x"}] * 17)
    async with project.transaction() as tx:
        await tx.messages.append(conv.id, role="user", content="y" * (64 * 1024 + 1))
    assert _where(seen, "BEGIN IMMEDIATE") == [THREAD] * 3
    del seen[:]

    async def one(i: int) -> None:
        async with project.transaction() as tx:
            await tx.messages.append(conv.id, role="user", content=f"m{i}")
            await asyncio.sleep(0)  # the other units start meanwhile

    await asyncio.gather(*(one(i) for i in range(5)))  # five units in flight at once
    assert LOOP not in _where(seen, "BEGIN IMMEDIATE")
    assert len(_where(seen, "INSERT INTO messages")) == 5

    full = replace(config, synchronous="FULL")
    async with AsyncProjectStore(project.path, config=full, create=False) as durable:
        seen = await _trace(durable)
        async with durable.transaction() as tx:
            await tx.messages.append(conv.id, role="user", content="fsync first")
        assert _where(seen, "COMMIT") == [THREAD]


async def test_a_lock_held_elsewhere_sends_the_unit_to_the_thread_without_blocking_the_loop(
    project: AsyncProjectStore,
) -> None:
    """In place, BEGIN IMMEDIATE runs with busy_timeout 0: another process's write lock sends
    the unit to the thread, which waits for it as always, while the event loop keeps running."""
    async with project.transaction() as tx:
        conv = await tx.conversations.create(title="c")
    seen = await _trace(project)
    locker = await hold_write_lock(project.path)
    gaps: list[float] = []
    loop = asyncio.get_running_loop()

    async def ticker() -> None:
        last = loop.time()
        while True:
            await asyncio.sleep(0.01)
            now = loop.time()
            gaps.append(now - last)
            last = now

    async def write() -> None:
        async with project.transaction() as tx:
            await tx.messages.append(conv.id, role="user", content="waited")

    ticks = asyncio.create_task(ticker())
    try:
        unit = asyncio.create_task(write())
        await asyncio.sleep(0.6)
        assert not unit.done()  # waiting for the lock, on the thread
        await release_write_lock(locker)
        async with asyncio.timeout(10):
            await unit
    finally:
        ticks.cancel()
    # Tried in place once, with no wait for the lock, then begun and committed on the thread.
    first = next(i for i, (where, sql) in enumerate(seen) if sql == "BEGIN IMMEDIATE")
    assert seen[first][0] == LOOP
    timeouts = [sql for _, sql in seen[:first] if sql.startswith("PRAGMA busy_timeout")]
    assert timeouts[-1:] == ["PRAGMA busy_timeout = 0"]
    assert _where(seen, "COMMIT") == [THREAD]
    assert max(gaps) < 0.3  # the loop was never held for the lock (held for 0.6 s)
    assert project.stats().busy_retries >= 1


async def _idle(project: AsyncProjectStore, *, checkpointer: bool = True) -> None:
    """Wait until the writer's thread (and a background checkpoint) has no work left."""
    pool = project.pool
    await asyncio.wait_for(pool.writer.submit(lambda conn: None), 10)
    if checkpointer and pool._checkpointer is not None:  # its jobs run in order
        await asyncio.wait_for(pool._checkpointer.submit(lambda conn: None), 10)


async def test_commits_in_place_never_checkpoint(project: AsyncProjectStore) -> None:
    """Commits in place run with the automatic checkpoint off (a checkpoint may fsync).

    The checkpointer copies the WAL into the database once 1,000 frames wait, and the WAL
    starts over; the writer's thread runs the backstop checkpoint only when the WAL reaches
    4,000 frames with the checkpointer stuck. In WAL mode only a checkpoint writes to the
    database file, so a commit in place must never change its size."""
    async with project.transaction() as tx:
        conv = await tx.conversations.create(title="c")
    seen = await _trace(project)
    pool, wal = project.pool, project.pool._wal_index

    async def units(n: int, first: int, *, checkpointer: bool = True) -> list[int]:
        frames: list[int] = []
        for i in range(first, first + n):  # each unit adds ~15 pages
            await _idle(project, checkpointer=checkpointer)
            size = project.path.stat().st_size
            async with project.transaction() as tx:
                await tx.messages.append(conv.id, role="user", content=f"{i:05d}" * 10_000)
            assert _where(seen, "COMMIT")[-1] == LOOP
            assert project.path.stat().st_size == size, f"unit {i} checkpointed in place"
            frames.append(wal.frames())
        return frames

    frames = await units(200, 0)
    assert project.stats().checkpoints >= 1
    assert _where(seen, "PRAGMA wal_checkpoint") == []  # the writer never had to
    assert max(frames) >= 1000  # it grew past the threshold...
    assert any(b < a for a, b in zip(frames, frames[1:], strict=False))  # ...then started over
    assert max(frames) < 4000

    # The checkpointer stuck behind a job: the WAL reaches the backstop, and the writer's
    # thread runs the checkpoint SQLite's automatic one would have.
    assert pool._checkpointer is not None
    release = threading.Event()
    stuck = pool._checkpointer.submit(lambda conn: release.wait(10))
    try:
        frames = await units(400, 200, checkpointer=False)  # (it cannot copy now)
    finally:
        release.set()
    assert await asyncio.wait_for(stuck, 10)
    assert _where(seen, "PRAGMA wal_checkpoint(PASSIVE)")[:1] == [THREAD]
    assert max(frames) >= 4000
    assert any(b < a for a, b in zip(frames, frames[1:], strict=False))
    async with project.read() as r:
        assert await r.messages.count(conv.id) == 600


async def test_commits_in_place_yield_to_the_event_loop(project: AsyncProjectStore) -> None:
    """A task committing lone units in a loop still lets other tasks run."""
    async with project.transaction() as tx:
        conv = await tx.conversations.create(title="c")
    seen = await _trace(project)
    async with ticking() as ticks:
        await asyncio.sleep(0)
        before = ticks.count
        for i in range(40):
            async with project.transaction() as tx:
                await tx.messages.append(conv.id, role="user", content=f"m{i}")
    assert ticks.count - before >= 40 // 4
    # The ticker makes the project's only work unit no less alone: all ran in place.
    assert _where(seen, "COMMIT").count(LOOP) >= 35


async def test_a_unit_never_uses_the_writer_while_its_thread_runs_a_job(
    project: AsyncProjectStore,
) -> None:
    """While the writer's thread runs a job, a lone unit waits for it there, after it, instead
    of using the connection beside it; once the thread is idle again, units commit in place."""
    async with project.transaction() as tx:
        conv = await tx.conversations.create(title="c")
    seen = await _trace(project)
    gate = threading.Event()
    blocker = project.pool.writer.submit(lambda conn: gate.wait(10))

    async def write(content: str) -> None:
        async with project.transaction() as tx:
            await tx.messages.append(conv.id, role="user", content=content)

    unit = asyncio.create_task(write("behind the job"))
    await asyncio.sleep(0.05)
    assert not unit.done()  # queued behind the job, not run in place
    gate.set()
    async with asyncio.timeout(10):
        assert await blocker
        await unit
    await write("in place again")
    assert _where(seen, "COMMIT") == [THREAD, LOOP]


async def test_a_lone_unit_that_reads_runs_alike_in_place_and_on_the_thread(either: Store) -> None:
    """A unit that reads by ID, then writes (an agent loading its state, then appending) holds
    the writer; alone, each of its steps runs in place: it reads its own writes, commits, and a
    unit the database refuses at commit raises and leaves nothing."""
    inline = either.config.inline_writes
    where = LOOP if inline else THREAD
    project = await either.create_project(name="either")
    async with project.transaction() as tx:
        conv = await tx.conversations.create(title="c")
    seen = await _trace(project)
    async with project.transaction() as tx:
        loaded = await tx.conversations.get(conv.id)
        sent = await tx.messages.append(loaded.id, role="user", content="hello")
        assert await tx.messages.get(sent.id) == sent  # its own write, flushed
        more = await tx.messages.append(loaded.id, role="user", content="again")
    steps = [(w, sql.split()[0]) for w, sql in seen if not sql.startswith("PRAGMA")]
    # Begun in place, the unit is alone in its transaction: no savepoint (SQLite would keep a
    # statement journal for it). On the thread, units may chain: a savepoint each.
    held = ["BEGIN", "SELECT", "INSERT", "SELECT", "INSERT", "COMMIT"]
    if not inline:
        held = held[:1] + ["SAVEPOINT"] + held[1:-1] + ["RELEASE", "COMMIT"]
    assert steps == [(where, s) for s in held]
    assert _where(seen, "COMMIT") == [where]
    async with project.read() as r:
        assert [m.id for m in await r.messages.list(conv.id)] == [sent.id, more.id]

    with pytest.raises(ConstraintViolation):
        async with project.transaction() as tx:
            await tx.conversations.get(conv.id)
            await tx.messages.append("no-such-conversation", role="user", content="orphan")
    async with project.read() as r:
        assert await r.messages.count(conv.id) == 2
    pool = project.pool
    assert not pool._writer_busy and not pool._tx_open
    await project.pool.writer.submit(lambda conn: conn.set_trace_callback(None))
    assert await project.pool.writer.submit(_settings) == (50, 4000, False)  # the backstop


async def test_units_that_read_take_turns_in_place(either: Store) -> None:
    """Units that read hold the writer in turn: with the writer's thread idle, each one's read
    and commit run in place however many units wait (no chain: each commits on its own), and
    each is acknowledged only after its own COMMIT. Threaded, they chain on the thread."""
    inline = either.config.inline_writes
    project = await either.create_project(name="either")
    async with project.transaction() as tx:
        conv = await tx.conversations.create(title="c")
    seen = await _trace(project)
    acknowledged: list[str] = []
    raw = sqlite3.connect(project.path)

    async def agent(a: int) -> None:
        for i in range(10):
            async with project.transaction() as tx:
                loaded = await tx.conversations.get(conv.id)
                sent = await tx.messages.append(loaded.id, role="user", content=f"{a}.{i}")
            # Acknowledged: committed, for any other connection.
            row = raw.execute("SELECT content FROM messages WHERE id = ?", (sent.id,)).fetchone()
            assert row == (f"{a}.{i}",)
            acknowledged.append(sent.id)

    try:
        await asyncio.wait_for(asyncio.gather(*(agent(a) for a in range(8))), 30)
    finally:
        raw.close()
    assert len(acknowledged) == 80
    begins, commits = _where(seen, "BEGIN IMMEDIATE"), _where(seen, "COMMIT")
    if inline:
        # (The writer's thread is busy now and then: every 50 commits its upkeep checks the
        # WAL, and the unit whose turn comes meanwhile runs there, and may chain.)
        assert begins.count(LOOP) >= 70 and commits.count(LOOP) >= 70
    else:
        assert set(begins) == set(commits) == {THREAD}
        assert len(commits) < 80  # chained: several units a transaction
    async with project.read() as r:
        assert await r.messages.count(conv.id) == 80
    pool = project.pool
    assert not pool._writer_busy and not pool._tx_open and not pool._chain


async def test_a_unit_that_reads_meets_a_lock_on_the_thread_not_on_the_loop(
    project: AsyncProjectStore,
) -> None:
    """Its BEGIN IMMEDIATE, tried in place with busy_timeout 0, finds another process's lock
    and goes to the thread, which waits for it; the event loop keeps running."""
    async with project.transaction() as tx:
        conv = await tx.conversations.create(title="c")
    seen = await _trace(project)
    locker = await hold_write_lock(project.path)

    async def unit() -> None:
        async with project.transaction() as tx:
            await tx.conversations.get(conv.id)
            await tx.messages.append(conv.id, role="user", content="waited")

    task = asyncio.create_task(unit())
    await asyncio.sleep(0.3)
    assert not task.done()
    await release_write_lock(locker)
    async with asyncio.timeout(10):
        await task
    begins = [w for w, sql in seen if sql == "BEGIN IMMEDIATE"]
    assert begins[0] == LOOP and begins[-1] == THREAD
    first = next(i for i, (_, sql) in enumerate(seen) if sql == "BEGIN IMMEDIATE")
    timeouts = [sql for _, sql in seen[:first] if sql.startswith("PRAGMA busy_timeout")]
    assert timeouts[-1:] == ["PRAGMA busy_timeout = 0"]


async def test_units_that_read_in_place_yield_and_a_cancel_leaves_the_writer_free(
    project: AsyncProjectStore,
) -> None:
    """A task running read-then-write units in a loop lets other tasks run; cancelled (at its
    only suspension point, before a unit holds the writer) it leaves the writer free."""
    async with project.transaction() as tx:
        conv = await tx.conversations.create(title="c")
    done = 0

    async def agent() -> None:
        nonlocal done
        while True:
            async with project.transaction() as tx:
                await tx.conversations.get(conv.id)
                await tx.messages.append(conv.id, role="user", content=f"m{done}")
            done += 1

    task = asyncio.create_task(agent())
    ticks = 0
    while done < 40:
        ticks += 1
        await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert ticks >= 40 // 4
    pool = project.pool
    assert not pool._writer_busy and not pool._tx_open and pool._in_flight == 0
    async with project.transaction() as tx:
        await tx.conversations.get(conv.id)
        await tx.messages.append(conv.id, role="user", content="after")
    async with project.read() as r:
        assert await r.messages.count(conv.id) == done + 1


async def test_units_that_read_with_a_query_run_alike_in_place_and_on_the_thread(
    either: Store,
) -> None:
    """Every query a repository offers (list, last, count, search, latest, totals), read in a
    unit of work before it writes, runs in place like a read by ID (or on the thread with
    inline_writes=False), sees the unit's own writes and answers alike."""
    inline = either.config.inline_writes
    where = LOOP if inline else THREAD
    project = await either.create_project(name="either")
    async with project.transaction() as tx:
        conv = await tx.conversations.create(title="c")
        await tx.messages.append_many(
            conv.id, [{"role": "user", "content": f"Needle {i}"} for i in range(3)]
        )
        await tx.code_generation.store("app.py", "v1")
        await tx.checkpoints.save("run", b"s1")
        await tx.llm_calls.record(model="m", cost_usd="0.25", input_tokens=3)
    seen = await _trace(project)
    answers: list[Any] = []
    for n in range(6):
        async with project.transaction() as tx:
            await tx.messages.append(conv.id, role="user", content=f"needle own {n}")
            if n == 0:
                answers.append([m.content for m in await tx.messages.list(conv.id, limit=5)])
            elif n == 1:
                answers.append([m.content for m in await tx.messages.last(conv.id, 2)])
            elif n == 2:
                answers.append(await tx.messages.count(conv.id))
            elif n == 3:
                found = await tx.messages.search("NEEDLE OWN", conversation_id=conv.id)
                answers.append([m.content for m in found])
            elif n == 4:
                answers.append((await tx.code_generation.latest("app.py")).content)
                answers.append((await tx.checkpoints.latest("run")).state)
            else:
                totals = await tx.llm_calls.totals()
                answers.append([(t.key, t.cost_usd, t.calls) for t in totals])
                answers.append(await tx.llm_calls.total_cost())
            await tx.llm_calls.record(model="m", cost_usd="0.5", conversation_id=conv.id)
    assert answers == [
        ["Needle 0", "Needle 1", "Needle 2", "needle own 0"],
        ["needle own 0", "needle own 1"],
        6,
        ["needle own 0", "needle own 1", "needle own 2", "needle own 3"],
        "v1",
        b"s1",
        [("m", Decimal("2.75"), 6)],
        Decimal("2.75"),
    ]
    steps = [(w, sql.split()[0]) for w, sql in seen if not sql.startswith("PRAGMA")]
    unit = ["BEGIN", "INSERT", "SELECT", "INSERT", "COMMIT"]  # in place: no savepoint
    if not inline:
        unit = ["BEGIN", "SAVEPOINT", "INSERT", "SELECT", "INSERT", "RELEASE", "COMMIT"]
    expected = []
    for n in range(6):
        at = unit.index("SELECT") + 1
        expected += unit[:at] + (["SELECT"] if n in (4, 5) else []) + unit[at:]
    assert [s for _, s in steps] == expected
    assert {w for w, _ in steps} == {where}
    async with project.read() as r:
        assert await r.messages.count(conv.id) == 9 and await r.llm_calls.count() == 7
    pool = project.pool
    assert not pool._writer_busy and not pool._tx_open


async def test_a_query_that_runs_long_in_place_finishes_on_the_thread(
    project: AsyncProjectStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A unit's query never runs long on the loop: SQLite's progress handler interrupts it in
    place once it runs past its time, and it runs again on the writer's thread, in the same
    transaction (begun, and the unit's writes sent, in place): the same answer, the unit's own
    writes in it, committed once. A short query in the same unit still runs in place."""
    from demiarch_store.sqlite import inplace as pool_module

    async with project.transaction() as tx:
        conv = await tx.conversations.create(title="c")
        await tx.messages.append_many(conv.id, [{"role": "user", "content": "m"}] * 3000)
    monkeypatch.setattr(pool_module, "_HERE_QUERY_SECONDS", 0.0)  # every look at the clock
    seen = await _trace(project)
    async with project.transaction() as tx:
        own = await tx.messages.append(conv.id, role="user", content="own")
        assert await tx.messages.count(conv.id) == 3001  # thousands of steps: interrupted
        assert [m.id for m in await tx.messages.last(conv.id, 1)] == [own.id]  # a few steps
        await tx.messages.append(conv.id, role="user", content="after")
    steps = [(w, sql.split()[0]) for w, sql in seen if not sql.startswith("PRAGMA")]
    assert steps == [
        (LOOP, "BEGIN"),
        (LOOP, "INSERT"),
        (LOOP, "SELECT"),  # the count, interrupted
        (THREAD, "SELECT"),  # the count again, on the thread
        (LOOP, "SELECT"),  # the last message, in place again
        (LOOP, "INSERT"),
        (LOOP, "COMMIT"),
    ]
    async with project.read() as r:
        assert await r.messages.count(conv.id) == 3002
    pool = project.pool
    assert not pool._writer_busy and not pool._tx_open
    conn = await pool.writer.submit(lambda conn: conn)
    assert conn.execute("SELECT count(*) FROM messages").fetchone() == (3002,)  # no handler left


@pytest.mark.parametrize("fails", [False, True], ids=["commits", "refused"])
async def test_a_unit_begun_in_place_ends_alone_on_the_thread(
    project: AsyncProjectStore, fails: bool
) -> None:
    """A unit that began its transaction in place has no savepoint; when it ends on the thread
    (its last writes are too many for the loop) while other units wait for the writer, none of
    them chains into its transaction: it commits alone, or, refused, leaves nothing and the
    others go on."""
    async with project.transaction() as tx:
        conv = await tx.conversations.create(title="c")
    seen = await _trace(project)
    go, begun = asyncio.Event(), asyncio.Event()

    async def big() -> None:
        async with project.transaction() as tx:
            await tx.conversations.get(conv.id)  # begins in place
            begun.set()
            await go.wait()
            target = "no-such-conversation" if fails else conv.id
            await tx.messages.append_many(target, [{"role": "tool", "content": "x"}] * 20)

    async def small(i: int) -> None:
        async with project.transaction() as tx:
            await tx.conversations.get(conv.id)
            await tx.messages.append(conv.id, role="user", content=f"small {i}")

    async with asyncio.timeout(30):
        first = asyncio.create_task(big())
        await begun.wait()
        others = [asyncio.create_task(small(i)) for i in range(3)]
        await asyncio.sleep(0.01)  # they wait for the writer
        go.set()
        if fails:
            with pytest.raises(ConstraintViolation):
                await first
        else:
            await first
        await asyncio.gather(*others)
    steps = [(w, sql.split()[0]) for w, sql in seen if not sql.startswith("PRAGMA")]
    steps = [s for i, s in enumerate(steps) if i == 0 or s != steps[i - 1]]  # executemany: one
    ended = (THREAD, "ROLLBACK") if fails else (THREAD, "COMMIT")
    assert steps[:4] == [(LOOP, "BEGIN"), (LOOP, "SELECT"), (THREAD, "INSERT"), ended]
    assert (THREAD, "SAVEPOINT") not in steps[:4] and (LOOP, "SAVEPOINT") not in steps
    async with project.read() as r:
        contents = [m.content for m in await r.messages.list(conv.id)]
    assert contents.count("x") == (0 if fails else 20)
    assert sorted(c for c in contents if c != "x") == [f"small {i}" for i in range(3)]
    pool = project.pool
    assert not pool._writer_busy and not pool._tx_open and not pool._chain and not pool._bare
