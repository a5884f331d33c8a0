"""Health checks, metrics, logging and maintenance, on real files."""

from __future__ import annotations

import asyncio
import logging
import os
import sqlite3
from pathlib import Path

import pytest
from lock_holder import hold_write_lock, release_write_lock

from demiarch_store import (
    AsyncProjectStore,
    ConstraintViolation,
    DatabaseBusy,
    HealthReport,
    PoolTimeout,
    Store,
    StoreConfig,
    StoreStats,
)
from demiarch_store.health import Reservoir

pytestmark = pytest.mark.anyio


def small(config: StoreConfig, **changes: object) -> StoreConfig:
    values = {
        "projects_dir": config.projects_dir,
        "busy_deadline": config.busy_deadline,
        "acquire_timeout": config.acquire_timeout,
    }
    values.update(changes)
    return StoreConfig(**values)  # type: ignore[arg-type]


# -- check ---------------------------------------------------------------------------------------


async def test_check_of_a_healthy_project_reports_every_figure(project: AsyncProjectStore) -> None:
    async with project.transaction() as tx:
        conv = await tx.conversations.create(title="t")
        await tx.messages.append_many(conv.id, [{"role": "user", "content": "x"}] * 10)
    report = await project.check()
    assert isinstance(report, HealthReport)
    assert report.ok and report.problems == ()
    assert report.check == "quick_check" and report.integrity == ("ok",)
    assert report.foreign_key_violations == ()
    assert report.revision == report.head_revision
    assert report.database_bytes == project.path.stat().st_size > 0
    assert report.wal_bytes == Path(f"{project.path}-wal").stat().st_size > 0
    assert report.shm_bytes == Path(f"{project.path}-shm").stat().st_size > 0
    assert report.page_size == 4096 and report.page_count > 0 and report.freelist_pages == 0
    assert report.checkpoint is not None and report.checkpoint.mode == "PASSIVE"
    assert not report.checkpoint_blocked  # nobody reads an old snapshot
    assert report.checkpoint.checkpointed_frames == report.checkpoint.log_frames > 0
    assert isinstance(report.stats, StoreStats) and report.stats.commits == 2

    full = await project.check(full=True)
    assert full.ok and full.check == "integrity_check" and full.integrity == ("ok",)


async def test_foreign_key_violations_and_loose_modes_are_problems(
    project: AsyncProjectStore,
) -> None:
    async with project.transaction() as tx:
        conv = await tx.conversations.create(title="t")
        await tx.messages.append(conv.id, role="user", content="orphan soon")
    await project.close()
    conn = sqlite3.connect(project.path, isolation_level=None)  # foreign_keys is off here
    conn.execute("DELETE FROM conversations")
    conn.close()
    os.chmod(project.path, 0o644)
    async with AsyncProjectStore(project.path, project_id=project.id, create=False) as again:
        report = await again.check()
    assert not report.ok
    assert len(report.foreign_key_violations) == 1
    assert report.foreign_key_violations[0][0] == "messages"
    assert any("violate foreign keys" in p for p in report.problems)
    assert any("0644" in p and "chmod 600" in p for p in report.problems)


async def test_a_damaged_page_is_reported_not_raised(store: Store) -> None:
    project = await store.create_project(name="damaged")
    async with project.transaction() as tx:
        conv = await tx.conversations.create(title="t")
        await tx.messages.append_many(conv.id, [{"role": "user", "content": "x" * 500}] * 400)
    await project.close()
    conn = sqlite3.connect(project.path)
    pages = conn.execute("PRAGMA page_count").fetchone()[0]
    conn.close()
    with open(project.path, "r+b") as f:  # wreck a page in the middle of the messages
        f.seek(4096 * (pages // 2))
        f.write(b"\xff" * 4096)

    again = await store.open_project(project.id)
    for full in (False, True):
        report = await again.check(full=full)
        assert not report.ok
        assert report.integrity != ("ok",)
        assert "restore the project from a backup" in report.problems[0]


# -- WAL growth behind a long reader, and the idle checkpoint -------------------------------------


async def test_a_long_reader_blocks_checkpoints_and_the_wal_growth_is_reported(
    config: StoreConfig,
) -> None:
    config = small(config, wal_checkpoint_bytes=64 * 1024)
    async with Store(config) as store:
        project = await store.create_project(name="long read")
        async with project.transaction() as tx:
            conv = await tx.conversations.create(title="t")

        async def write(n: int) -> None:
            for _ in range(n):
                async with project.transaction() as tx:
                    await tx.messages.append(conv.id, role="user", content="y" * 2000)

        async with project.read() as long_read:
            await long_read.conversations.list()  # its snapshot starts here
            await write(60)  # 60 commits: the writer's idle upkeep ran at least once
            report = await project.check()
            stats = project.stats()
            assert (await long_read.conversations.get(conv.id)).title == "t"

        assert report.checkpoint_blocked
        assert report.wal_bytes > 60 * 2000
        assert any("WAL has grown" in p and "long read" in p for p in report.problems)
        assert stats.idle_checkpoints >= 1
        assert stats.last_checkpoint is not None and stats.last_checkpoint.blocked
        assert stats.last_checkpoint.mode == "TRUNCATE"

        # The reader is gone: the next idle upkeep truncates the WAL.
        await write(50)
        after = project.stats()
        assert after.idle_checkpoints > stats.idle_checkpoints
        assert after.last_checkpoint is not None and not after.last_checkpoint.blocked
        assert after.last_checkpoint.wal_bytes_before >= report.wal_bytes
        later = await project.check()
        assert later.ok, later.problems
        assert later.wal_bytes < report.wal_bytes  # reset, then only the commits since


# -- stats ---------------------------------------------------------------------------------------


def test_reservoir_keeps_the_latest_samples_in_a_fixed_array() -> None:
    r = Reservoir(size=1024)
    assert r.percentiles().count == 0
    for i in range(1, 2001):
        r.add(float(i))
    p = r.percentiles()
    assert p.count == 2000
    # The window is samples 977..2000; nearest rank.
    assert (p.p50, p.p95, p.p99, p.max) == (1488.0, 1949.0, 1990.0, 2000.0)


async def test_stats_count_commits_rollbacks_timeouts_and_busy(config: StoreConfig) -> None:
    config = small(config, max_readers=1, acquire_timeout=0.2, busy_deadline=0.3)
    async with Store(config) as store:
        project = await store.create_project(name="counted")  # one commit
        async with project.transaction() as tx:
            conv = await tx.conversations.create(title="t")
        with pytest.raises(RuntimeError):
            async with project.transaction() as tx:
                await tx.messages.append(conv.id, role="user", content="undone")
                raise RuntimeError("changed my mind")
        with pytest.raises(ConstraintViolation):
            async with project.transaction() as tx:
                await tx.messages.append("no-such-conversation", role="user", content="x")

        async with project.read() as r:
            await r.conversations.list()
            async with project.transaction() as tx:  # a newer state: no sharing r's snapshot
                await tx.messages.append(conv.id, role="user", content="newer")
            held = project.stats()
            with pytest.raises(PoolTimeout):
                async with project.read():
                    pass
        assert held.connections_in_use == 1 and held.in_flight == 1

        proc = await hold_write_lock(project.path)
        try:
            with pytest.raises(DatabaseBusy):
                async with project.transaction() as tx:
                    await tx.messages.append(conv.id, role="user", content="blocked")
        finally:
            await release_write_lock(proc)

        s = project.stats()
        assert (s.commits, s.rollbacks) == (3, 3)
        assert s.group_commits >= 2
        assert s.pool_timeouts == 1
        assert s.database_busy == 1
        assert s.busy_retries >= 1
        assert s.transaction_seconds.count == 6
        t = s.transaction_seconds
        assert 0 < t.p50 <= t.p95 <= t.p99 <= t.max
        assert s.pool_wait.count == 1  # the one read that got a connection
        assert s.connections == 2 and s.connections_in_use == 0 and s.in_flight == 0


# -- logging -------------------------------------------------------------------------------------


async def test_logs_retries_and_slow_transactions_but_never_a_parameter(
    config: StoreConfig, caplog: pytest.LogCaptureFixture
) -> None:
    secret = "sk-live-SECRET-4242"
    caplog.set_level(logging.DEBUG, logger="demiarch_store")
    config = small(config, slow_transaction=0.0, busy_deadline=30.0)
    async with Store(config) as store:
        project = await store.create_project(name="logged")
        async with project.transaction() as tx:
            conv = await tx.conversations.create(title=secret)
        proc = await hold_write_lock(project.path)
        try:

            async def blocked_write() -> None:
                async with project.transaction() as tx:
                    await tx.messages.append(conv.id, role="user", content=secret)

            task = asyncio.create_task(blocked_write())
            for _ in range(3000):  # until the write has been retried twice
                if project.stats().busy_retries >= 2:
                    break
                await asyncio.sleep(0.01)
        finally:
            await release_write_lock(proc)
        await task
        with pytest.raises(ConstraintViolation) as caught:
            async with project.transaction() as tx:
                await tx.messages.append("missing", role="user", content=secret)
        assert secret not in str(caught.value)

    records = [r for r in caplog.records if r.name == "demiarch_store"]
    assert any(r.levelno == logging.DEBUG and "retry" in r.getMessage() for r in records)
    slow = [r for r in records if "slow transaction" in r.getMessage()]
    assert slow and all(r.levelno == logging.WARNING for r in slow)
    assert secret not in caplog.text
    assert all(secret not in r.getMessage() for r in caplog.records)


# -- maintenance ---------------------------------------------------------------------------------


async def test_vacuum_gives_free_pages_back(project: AsyncProjectStore) -> None:
    async with project.transaction() as tx:
        convs = [await tx.conversations.create(title="t") for _ in range(3)]
        for c in convs:
            await tx.messages.append_many(c.id, [{"role": "user", "content": "z" * 1000}] * 100)
    async with project.transaction() as tx:
        for c in convs:
            await tx.conversations.delete(c.id)  # its messages go too (ON DELETE CASCADE)
    before = await project.check()
    assert before.freelist_pages > 0
    await project.vacuum()
    after = await project.check()
    assert after.ok and after.freelist_pages == 0
    assert after.database_bytes < before.database_bytes


async def test_optimize_runs_on_demand_and_on_close(store: Store) -> None:
    project = await store.create_project(name="planned")
    await project.optimize()
    async with project.transaction() as tx:  # reads on the writer: the planner sees them
        conv = await tx.conversations.create(title="t")
        await tx.messages.append_many(conv.id, [{"role": "user", "content": "q"}] * 200)
        assert len(await tx.messages.list(conv.id)) == 200
    conn = sqlite3.connect(f"file:{project.path}?mode=ro", uri=True)
    has_stats = "SELECT count(*) FROM sqlite_master WHERE name = 'sqlite_stat1'"
    assert conn.execute(has_stats).fetchone()[0] == 0
    conn.close()
    await project.close()
    conn = sqlite3.connect(f"file:{project.path}?mode=ro", uri=True)
    assert conn.execute(has_stats).fetchone()[0] == 1  # PRAGMA optimize ran at close
    conn.close()
