"""Every repository of the agent schema, on a real project file, with its bad input."""

from __future__ import annotations

import asyncio
import hashlib
import json
import sqlite3
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path

import psycopg
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from demiarch_store import (
    AsyncProjectStore,
    ConstraintViolation,
    CorruptDatabase,
    CostTotal,
    InvalidValue,
    NotFound,
    StoreConfig,
    StoreError,
)

pytestmark = pytest.mark.anyio


@pytest.fixture
def config(engine_config: StoreConfig) -> StoreConfig:
    """Every test here runs on SQLite and on PostgreSQL (see conftest.engine_config)."""
    return engine_config


def _no_raw_errors(exc: BaseException) -> None:
    """The error is ours, and the driver's error is kept only as its cause."""
    assert isinstance(exc, StoreError)
    assert not isinstance(exc, sqlite3.Error)


# -- messages --------------------------------------------------------------------------------


async def test_messages_last_count_and_search(project: AsyncProjectStore) -> None:
    async with project.transaction() as tx:
        conv = await tx.conversations.create(title="a")
        other = await tx.conversations.create(title="b")
        sent = await tx.messages.append_many(
            conv.id, [{"role": "user", "content": f"step {i}"} for i in range(10)]
        )
        odd = [
            await tx.messages.append(conv.id, role="tool", content="100% done"),
            await tx.messages.append(conv.id, role="tool", content="file_name.py DONE"),
            await tx.messages.append(conv.id, role="tool", content="back\\slash"),
        ]
        await tx.messages.append(other.id, role="user", content="100 percent done")
    async with project.read() as r:
        assert [m.id for m in await r.messages.last(conv.id, 3)] == [m.id for m in odd]
        assert [m.content for m in await r.messages.last(conv.id, 2)] == [
            "file_name.py DONE",
            "back\\slash",
        ]
        assert await r.messages.last(conv.id, 0) == []
        assert len(await r.messages.last(conv.id, 100)) == 13
        assert await r.messages.last("no-such-conversation", 5) == []
        assert await r.messages.count(conv.id) == 13
        assert await r.messages.count(other.id) == 1
        assert await r.messages.count() == 14
        assert await r.messages.count("nope") == 0

        # Wildcards match themselves: '%' is not "anything", '_' is not "any character".
        assert [m.content for m in await r.messages.search("100%")] == ["100% done"]
        assert [m.content for m in await r.messages.search("e_n")] == ["file_name.py DONE"]
        assert await r.messages.search("a_e") == []  # "ame" would match a wildcard
        assert [m.content for m in await r.messages.search("\\")] == ["back\\slash"]
        # ASCII case-insensitive, in order, within one conversation or all.
        assert [m.content for m in await r.messages.search("done")] == [
            "100% done",
            "file_name.py DONE",
            "100 percent done",
        ]
        in_conv = await r.messages.search("DONE", conversation_id=conv.id)
        assert [m.content for m in in_conv] == ["100% done", "file_name.py DONE"]
        assert len(await r.messages.search("step", limit=4)) == 4
        assert [m.id for m in await r.messages.search("step 3")] == [sent[3].id]
        # A quote or SQL in the text is data.
        assert await r.messages.search("'; DROP TABLE messages; --") == []
        assert await r.messages.count() == 14

        for bad in ("", None, 42):
            with pytest.raises(InvalidValue):
                await r.messages.search(bad)  # type: ignore[arg-type]
        with pytest.raises(InvalidValue):
            await r.messages.last(conv.id, -1)
        with pytest.raises(InvalidValue):
            await r.messages.search("x", limit=-2)


@pytest.mark.parametrize(
    "bad", [{1, 2}, object(), {"k": b"bytes"}, float("nan"), {"k": [float("inf")]}, -float("inf")]
)
async def test_message_meta_that_is_not_json_is_refused_and_nothing_is_written(
    project: AsyncProjectStore, bad: object
) -> None:
    async with project.transaction() as tx:
        conv = await tx.conversations.create(title="meta")
    for many in (False, True):
        with pytest.raises(InvalidValue) as caught:
            async with project.transaction() as tx:
                await tx.messages.append(conv.id, role="user", content="kept out")
                if many:
                    items = [{"role": "user", "content": "x", "meta": bad}]
                    await tx.messages.append_many(conv.id, items)
                else:
                    await tx.messages.append(conv.id, role="user", content="x", meta=bad)
        assert "meta" in str(caught.value)
    async with project.read() as r:
        assert await r.messages.count() == 0


@pytest.mark.parametrize("engine_config", ["sqlite"], indirect=True)  # scribbles on the file
@pytest.mark.parametrize(
    ("column", "stored"),
    [("meta", "secret-token{not json"), ("created_at", "secret-token"), ("meta", "\x00" * 8)],
)
async def test_a_damaged_stored_value_is_corrupt_database_without_the_value(
    project: AsyncProjectStore, column: str, stored: str
) -> None:
    """A value a column's converter cannot read (what a scribbled page leaves) is a damaged
    file: CorruptDatabase naming the project and path, never the value, on every read path."""
    async with project.transaction() as tx:
        conv = await tx.conversations.create(title="damaged")
        msg = await tx.messages.append(conv.id, role="user", content="hi", meta={"k": 1})
    raw = sqlite3.connect(project.path)
    with raw:
        raw.execute(f"UPDATE messages SET {column} = ? WHERE id = ?", (stored, msg.id))
    raw.close()
    async with project.read() as r:
        for read in (r.messages.get(msg.id), r.messages.list(conv.id), r.messages.last(conv.id, 5)):
            with pytest.raises(CorruptDatabase) as caught:
                await read
            err = caught.value
            assert err.project == project.id and str(project.path) in str(err)
            assert "secret-token" not in str(err) and "message" in str(err) and err.hint
        assert await r.conversations.get(conv.id) == conv  # other rows still read


async def test_message_to_unknown_conversation_is_a_constraint_violation(
    project: AsyncProjectStore,
) -> None:
    with pytest.raises(ConstraintViolation) as info:
        async with project.transaction() as tx:
            await tx.messages.append("01nosuchconversation000000", role="user", content="hi")
    _no_raw_errors(info.value)
    assert project.id in str(info.value)
    assert isinstance(info.value.__cause__, sqlite3.IntegrityError | psycopg.IntegrityError)


# -- agents ----------------------------------------------------------------------------------


async def test_agents(project: AsyncProjectStore) -> None:
    async with project.transaction() as tx:
        planner = await tx.agents.register("planner", role="plans", config={"model": "x"})
        coder = await tx.agents.register("coder", status="running", state={"step": 1})
        await tx.agents.register("tester")
    assert planner.status == "idle" and planner.state is None
    async with project.read() as r:
        assert await r.agents.get(planner.id) == planner
        assert await r.agents.get(coder.id) == coder
        assert [a.name for a in await r.agents.list_by_status("idle")] == ["planner", "tester"]
        assert [a.name for a in await r.agents.list_by_status("running")] == ["coder"]
        assert await r.agents.list_by_status("gone") == []

    async with project.transaction() as tx:
        await tx.agents.update_status(planner.id, "running")
        await tx.agents.update_state(coder.id, {"step": 2, "files": ["a.py"]})
        await tx.agents.update_config(planner.id, {"model": "y"})
    async with project.read() as r:
        running = await r.agents.list_by_status("running")
        assert [a.name for a in running] == ["planner", "coder"]
        assert [a.name for a in await r.agents.list_by_status("running", limit=1)] == ["planner"]
        page = await r.agents.list_by_status("running", after=planner.id)
        assert [a.name for a in page] == ["coder"]
        again = await r.agents.get(coder.id)
        assert again.state == {"step": 2, "files": ["a.py"]}
        assert again.updated_at >= coder.updated_at
        assert (await r.agents.get(planner.id)).config == {"model": "y"}

    async with project.transaction() as tx:
        await tx.agents.update_state(coder.id, None)
    async with project.read() as r:
        assert (await r.agents.get(coder.id)).state is None

    with pytest.raises(NotFound):
        async with project.transaction() as tx:
            await tx.agents.update_status("01nosuchagent0000000000000", "idle")
    with pytest.raises(NotFound):
        async with project.transaction() as tx:
            await tx.agents.update_state("01nosuchagent0000000000000", {})
    async with project.transaction() as tx:
        for bad_name in ("", None, "x" * 201):
            with pytest.raises(InvalidValue):
                await tx.agents.register(bad_name)  # type: ignore[arg-type]
        with pytest.raises(InvalidValue):
            await tx.agents.register("a", status="")
        with pytest.raises(InvalidValue):
            await tx.agents.register("a", state={"not json": {1, 2}})
        with pytest.raises(InvalidValue):
            await tx.agents.update_status(coder.id, 3)  # type: ignore[arg-type]
        with pytest.raises(InvalidValue):
            await tx.agents.update_state(coder.id, object())
    async with project.read() as r:
        assert await r.agents.count() == 3


# -- skills ----------------------------------------------------------------------------------


async def test_skills(project: AsyncProjectStore) -> None:
    async with project.transaction() as tx:
        agent = await tx.agents.register("coder")
        grep = await tx.skills.add(
            "grep",
            description="search files",
            definition={"cmd": "rg"},
            tags=["search", "cli", "search"],
            agent_id=agent.id,
        )
        sql = await tx.skills.add("sql", tags=["db"])
        plain = await tx.skills.add("plain")
    assert (grep.uses, grep.successes, grep.failures, grep.last_used_at) == (0, 0, 0, None)
    async with project.read() as r:
        assert await r.skills.get(grep.id) == grep
        assert await r.skills.find_by_name("sql") == sql
        assert await r.skills.tags(grep.id) == ["cli", "search"]
        assert await r.skills.tags(plain.id) == []
        assert [s.name for s in await r.skills.find_by_tag("search")] == ["grep"]
        assert await r.skills.find_by_tag("nothing") == []
        assert [s.name for s in await r.skills.list()] == ["grep", "sql", "plain"]
        with pytest.raises(NotFound):
            await r.skills.find_by_name("nope")
        with pytest.raises(NotFound):
            await r.skills.tags("01nosuchskill0000000000000")

    async with project.transaction() as tx:
        await tx.skills.record_use(grep.id, success=True)
        await tx.skills.record_use(grep.id, success=True)
        await tx.skills.record_use(grep.id, success=False)
        await tx.skills.update(sql.id, description="queries", tags=["db", "search"])
        await tx.skills.update(grep.id, name="ripgrep")
    async with project.read() as r:
        used = await r.skills.get(grep.id)
        assert (used.name, used.uses, used.successes, used.failures) == ("ripgrep", 3, 2, 1)
        assert used.last_used_at is not None and used.last_used_at >= grep.created_at
        assert await r.skills.tags(grep.id) == ["cli", "search"]  # unchanged without tags=
        assert await r.skills.tags(sql.id) == ["db", "search"]
        assert [s.name for s in await r.skills.find_by_tag("search")] == ["ripgrep", "sql"]
        assert (await r.skills.get(sql.id)).description == "queries"

    async with project.transaction() as tx:
        await tx.skills.update(sql.id, tags=[])
        await tx.skills.delete(plain.id)
    async with project.read() as r:
        assert await r.skills.tags(sql.id) == []
        assert await r.skills.count() == 2

    # Deleting the agent that learned a skill keeps the skill, unlinked.
    async with project.transaction() as tx:
        await tx.agents.delete(agent.id)
    async with project.read() as r:
        assert (await r.skills.get(grep.id)).agent_id is None


async def test_skills_bad_input(project: AsyncProjectStore) -> None:
    async with project.transaction() as tx:
        first = await tx.skills.add("grep")
    with pytest.raises(ConstraintViolation) as info:
        async with project.transaction() as tx:
            await tx.skills.add("grep")
    _no_raw_errors(info.value)
    assert "skills.name" in str(info.value) and "must be unique" in str(info.value)
    with pytest.raises(ConstraintViolation):
        async with project.transaction() as tx:
            await tx.skills.add("new", agent_id="01nosuchagent0000000000000")
    with pytest.raises(NotFound):
        async with project.transaction() as tx:
            await tx.skills.record_use("01nosuchskill0000000000000", success=True)
    with pytest.raises(NotFound):
        async with project.transaction() as tx:
            await tx.skills.update("01nosuchskill0000000000000", name="x", tags=["a"])
    async with project.transaction() as tx:
        with pytest.raises(InvalidValue):
            await tx.skills.record_use(first.id, success=1)  # type: ignore[arg-type]
        with pytest.raises(InvalidValue):
            await tx.skills.add("x", tags="one-string")
        with pytest.raises(InvalidValue):
            await tx.skills.add("x", tags=[""])
        with pytest.raises(InvalidValue):
            await tx.skills.add("x", tags=[3])  # type: ignore[list-item]
        with pytest.raises(InvalidValue):
            await tx.skills.add("")
    async with project.read() as r:
        assert [s.name for s in await r.skills.list()] == ["grep"]
        assert (await r.skills.get(first.id)).uses == 0
        assert await r.skills.find_by_tag("a") == []


# -- code_generation -------------------------------------------------------------------------


async def test_code_generation_versions(project: AsyncProjectStore) -> None:
    async with project.transaction() as tx:
        conv = await tx.conversations.create()
        v1 = await tx.code_generation.store("src/app.py", "print(1)\n", language="python")
        v2 = await tx.code_generation.store(
            "src/app.py", "print(2)\n", language="python", conversation_id=conv.id
        )
        css = await tx.code_generation.store("web/style.css", "body {}", meta={"by": "coder"})
    assert (v1.version, v2.version, css.version) == (1, 2, 1)
    assert v1.content_hash == hashlib.sha256(b"print(1)\n").hexdigest()
    async with project.transaction() as tx:
        v3 = await tx.code_generation.store("src/app.py", "print(3) \u00e9\n")
    assert v3.version == 3
    assert v3.content_hash == hashlib.sha256("print(3) \u00e9\n".encode()).hexdigest()
    async with project.read() as r:
        assert await r.code_generation.latest("src/app.py") == v3
        assert await r.code_generation.history("src/app.py") == [v1, v2, v3]
        assert await r.code_generation.history("nope.py") == []
        assert await r.code_generation.list_latest() == [v3, css]
        assert await r.code_generation.get(v2.id) == v2
        with pytest.raises(NotFound):
            await r.code_generation.latest("nope.py")


async def test_code_generation_bad_input(project: AsyncProjectStore) -> None:
    with pytest.raises(ConstraintViolation):
        async with project.transaction() as tx:
            await tx.code_generation.store("a.py", "x", agent_id="01nosuchagent0000000000000")
    async with project.transaction() as tx:
        for path in ("", None, "p" * 1001):
            with pytest.raises(InvalidValue):
                await tx.code_generation.store(path, "x")  # type: ignore[arg-type]
        with pytest.raises(InvalidValue):
            await tx.code_generation.store("a.py", b"bytes")  # type: ignore[arg-type]
        with pytest.raises(InvalidValue):
            await tx.code_generation.store("a.py", "half a pair \ud800")
        with pytest.raises(InvalidValue):
            await tx.code_generation.store("a.py", "x", language="l" * 65)
    async with project.read() as r:
        assert await r.code_generation.count() == 0
        with pytest.raises(StoreError):
            await r.code_generation.store("a.py", "x")  # a snapshot cannot write


# -- plugins ---------------------------------------------------------------------------------


async def test_plugins(project: AsyncProjectStore) -> None:
    async with project.transaction() as tx:
        git = await tx.plugins.install("git", version="1.2", config={"remote": "origin"})
        lint = await tx.plugins.install("lint", enabled=False)
    assert git.enabled is True and lint.enabled is False
    async with project.read() as r:
        assert await r.plugins.get(git.id) == git
        assert await r.plugins.get_by_name("lint") == lint
        assert [p.name for p in await r.plugins.list_enabled()] == ["git"]
        with pytest.raises(NotFound):
            await r.plugins.get_by_name("nope")
    async with project.transaction() as tx:
        await tx.plugins.enable(lint.id)
        await tx.plugins.disable(git.id)
        await tx.plugins.set_config(lint.id, {"rules": ["E", "F"]})
        await tx.plugins.set_state(lint.id, {"runs": 3, "last": None})
    async with project.read() as r:
        now = await r.plugins.get(lint.id)
        assert now.enabled is True
        assert now.config == {"rules": ["E", "F"]}
        assert now.state == {"runs": 3, "last": None}
        assert [p.name for p in await r.plugins.list_enabled()] == ["lint"]
        assert (await r.plugins.get(git.id)).enabled is False
    async with project.transaction() as tx:
        await tx.plugins.set_config(lint.id, None)
    async with project.read() as r:
        assert (await r.plugins.get(lint.id)).config is None

    with pytest.raises(ConstraintViolation):
        async with project.transaction() as tx:
            await tx.plugins.install("git")
    for method in ("enable", "disable"):
        with pytest.raises(NotFound):
            async with project.transaction() as tx:
                await getattr(tx.plugins, method)("01nosuchplugin000000000000")
    with pytest.raises(NotFound):
        async with project.transaction() as tx:
            await tx.plugins.set_state("01nosuchplugin000000000000", {})
    async with project.transaction() as tx:
        with pytest.raises(InvalidValue):
            await tx.plugins.install("x", enabled="yes")  # type: ignore[arg-type]
        with pytest.raises(InvalidValue):
            await tx.plugins.set_config(git.id, {"bad": b"bytes"})
        with pytest.raises(InvalidValue):
            await tx.plugins.install("")
    async with project.read() as r:
        assert await r.plugins.count() == 2


# -- sessions --------------------------------------------------------------------------------


async def test_sessions(project: AsyncProjectStore) -> None:
    async with project.transaction() as tx:
        agent = await tx.agents.register("helper")
        alice = await tx.sessions.start(user_id="alice", meta={"client": "cli"})
        bob = await tx.sessions.start(user_id="bob", agent_id=agent.id)
    assert alice.ended_at is None and alice.last_active_at == alice.started_at
    async with project.read() as r:
        assert await r.sessions.get(alice.id) == alice
        assert [s.user_id for s in await r.sessions.list_active()] == ["alice", "bob"]

    async with project.transaction() as tx:
        await tx.sessions.touch(bob.id)
        await tx.sessions.end(alice.id)
    async with project.read() as r:
        ended = await r.sessions.get(alice.id)
        assert ended.ended_at is not None and ended.ended_at >= alice.started_at
        touched = await r.sessions.get(bob.id)
        assert touched.last_active_at >= bob.last_active_at
        assert [s.id for s in await r.sessions.list_active()] == [bob.id]
        assert [s.id for s in await r.sessions.list_active(active_since=bob.started_at)] == [bob.id]
        later = touched.last_active_at + timedelta(microseconds=1)
        assert await r.sessions.list_active(active_since=later) == []

    # An ended session can be neither touched nor ended again; unknown IDs neither.
    for method, id in [
        ("touch", alice.id),
        ("end", alice.id),
        ("touch", "01nosuchsession00000000000"),
        ("end", "01nosuchsession00000000000"),
    ]:
        with pytest.raises(NotFound):
            async with project.transaction() as tx:
                await getattr(tx.sessions, method)(id)
    with pytest.raises(ConstraintViolation):
        async with project.transaction() as tx:
            await tx.sessions.start(agent_id="01nosuchagent0000000000000")
    async with project.transaction() as tx:
        with pytest.raises(InvalidValue):
            await tx.sessions.start(user_id=5)  # type: ignore[arg-type]
        with pytest.raises(InvalidValue):
            await tx.sessions.list_active(active_since=datetime(2020, 1, 1))
    async with project.read() as r:
        assert await r.sessions.count() == 2


# -- llm_calls -------------------------------------------------------------------------------


async def test_llm_calls_record_and_totals(project: AsyncProjectStore) -> None:
    day1 = datetime(2026, 3, 1, 23, 59, 59, 999_999, tzinfo=UTC)
    day2 = datetime(2026, 3, 2, 0, 0, tzinfo=UTC)
    async with project.transaction() as tx:
        coder = await tx.agents.register("coder")
        conv = await tx.conversations.create()
        first = await tx.llm_calls.record(
            provider="openai",
            model="gpt-x",
            input_tokens=12,
            output_tokens=40,
            cost_usd=Decimal("0.0021"),
            latency_ms=350,
            agent_id=coder.id,
            conversation_id=conv.id,
            created_at=day1,
        )
        await tx.llm_calls.record(
            model="gpt-x",
            input_tokens=1,
            output_tokens=2,
            cost_usd="0.000000001",
            created_at=day2,
        )
        await tx.llm_calls.record(
            model="claude",
            input_tokens=100,
            output_tokens=0,
            cost_usd=Decimal("1.1"),
            status="error",
            error="rate limited",
            agent_id=coder.id,
            created_at=day2 + timedelta(hours=5),
        )
        # Tenths that a float would sum to 0.30000000000000004.
        for _ in range(3):
            await tx.llm_calls.record(
                model="tiny",
                cost_usd=Decimal("0.1"),
                conversation_id=conv.id,
                created_at=datetime(2026, 3, 3, 12, tzinfo=timezone(timedelta(hours=2))),
            )
    async with project.read() as r:
        got = await r.llm_calls.get(first.id)
        assert got == first
        assert got.cost_usd == Decimal("0.0021") and got.created_at == day1
        assert await r.llm_calls.total_cost() == Decimal("1.402100001")
        assert await r.llm_calls.total_cost(since=day2) == Decimal("1.400000001")
        assert await r.llm_calls.total_cost(until=day2) == Decimal("0.0021")
        assert await r.llm_calls.total_cost(since=day2, until=day2) == Decimal(0)

        by_model = await r.llm_calls.totals("model")
        assert by_model == [
            CostTotal("claude", 1, 100, 0, Decimal("1.1")),
            CostTotal("gpt-x", 2, 13, 42, Decimal("0.002100001")),
            CostTotal("tiny", 3, 0, 0, Decimal("0.3")),
        ]
        assert await r.llm_calls.totals("agent") == [
            CostTotal(None, 4, 1, 2, Decimal("0.300000001")),
            CostTotal(coder.id, 2, 112, 40, Decimal("1.1021")),
        ]
        assert await r.llm_calls.totals("conversation") == [
            CostTotal(None, 2, 101, 2, Decimal("1.100000001")),
            CostTotal(conv.id, 4, 12, 40, Decimal("0.3021")),
        ]
        # Days are UTC: 23:59:59.999999 is the 1st, midnight the 2nd, 12:00+02:00 the 3rd.
        assert await r.llm_calls.totals("day") == [
            CostTotal("2026-03-01", 1, 12, 40, Decimal("0.0021")),
            CostTotal("2026-03-02", 2, 101, 2, Decimal("1.100000001")),
            CostTotal("2026-03-03", 3, 0, 0, Decimal("0.3")),
        ]
        ranged = await r.llm_calls.totals("day", since=day2, until=day2 + timedelta(days=1))
        assert [t.key for t in ranged] == ["2026-03-02"]
        assert await r.llm_calls.totals("model", since=datetime(2030, 1, 1, tzinfo=UTC)) == []

        with pytest.raises(InvalidValue):
            await r.llm_calls.totals("provider")  # type: ignore[arg-type]
        with pytest.raises(InvalidValue):
            await r.llm_calls.total_cost(since=datetime(2026, 1, 1))  # naive
        with pytest.raises(InvalidValue):
            await r.llm_calls.totals("day", until="tomorrow")  # type: ignore[arg-type]

    # Deleting the agent or conversation keeps the cost history.
    async with project.transaction() as tx:
        await tx.conversations.delete(conv.id)
        await tx.agents.delete(coder.id)
    async with project.read() as r:
        assert await r.llm_calls.total_cost() == Decimal("1.402100001")
        assert [t.key for t in await r.llm_calls.totals("agent")] == [None]

    async with project.transaction() as tx:
        await tx.llm_calls.delete_older_than(day2)
    async with project.read() as r:
        assert await r.llm_calls.count() == 5
        assert await r.llm_calls.total_cost() == Decimal("1.400000001")


async def test_llm_calls_bad_input(project: AsyncProjectStore) -> None:
    with pytest.raises(ConstraintViolation) as info:
        async with project.transaction() as tx:
            await tx.llm_calls.record(
                model="m", cost_usd=Decimal(1), agent_id="01nosuchagent0000000000000"
            )
    _no_raw_errors(info.value)
    assert "FOREIGN KEY" in str(info.value) and "referenced record" in str(info.value)
    assert "01nosuchagent" not in str(info.value)  # parameter values never reach messages
    with pytest.raises(ConstraintViolation):
        async with project.transaction() as tx:
            await tx.llm_calls.record(
                model="m", cost_usd=Decimal(1), conversation_id="01nosuchconv00000000000000"
            )
    bad_calls = [
        {"cost_usd": 0.1},  # floats are refused
        {"cost_usd": Decimal("-1")},
        {"cost_usd": Decimal("0.0000000001")},  # finer than a nano-dollar
        {"cost_usd": Decimal("NaN")},
        {"cost_usd": "lots"},
        {"cost_usd": True},
        {"cost_usd": 1, "input_tokens": -1},
        {"cost_usd": 1, "output_tokens": 1.5},
        {"cost_usd": 1, "input_tokens": True},
        {"cost_usd": 1, "latency_ms": -3},
        {"cost_usd": 1, "model": ""},
        {"cost_usd": 1, "status": ""},
        {"cost_usd": 1, "created_at": datetime(2026, 1, 1)},
    ]
    async with project.transaction() as tx:
        for kwargs in bad_calls:
            with pytest.raises(InvalidValue):
                await tx.llm_calls.record(**{"model": "m", **kwargs})  # type: ignore[arg-type]
        with pytest.raises(InvalidValue):
            await tx.llm_calls.delete_older_than(datetime(2026, 1, 1))
    async with project.read() as r:
        assert await r.llm_calls.count() == 0
        assert await r.llm_calls.total_cost() == Decimal(0)
        assert await r.llm_calls.totals("day") == []


# -- checkpoints -----------------------------------------------------------------------------


async def test_checkpoints_save_latest_list(project: AsyncProjectStore) -> None:
    async with project.transaction() as tx:
        a1 = await tx.checkpoints.save("run-a", b"\x00state 1", meta={"step": 1})
        a2 = await tx.checkpoints.save("run-a", bytearray(b"state 2"), parent_id=a1.id)
        b1 = await tx.checkpoints.save("run-b", memoryview(b"other"))
    assert a2.state == b"state 2" and isinstance(a2.state, bytes)
    assert a1.state_hash == hashlib.sha256(b"\x00state 1").hexdigest()
    async with project.read() as r:
        assert await r.checkpoints.latest("run-a") == a2
        assert await r.checkpoints.latest("run-b") == b1
        assert await r.checkpoints.list("run-a") == [a1, a2]
        assert await r.checkpoints.list() == [a1, a2, b1]
        assert await r.checkpoints.list("run-a", limit=1, after=a1.id) == [a2]
        assert (await r.checkpoints.get(a1.id)).state == b"\x00state 1"
        with pytest.raises(NotFound):
            await r.checkpoints.latest("run-z")
        assert await r.checkpoints.list("run-z") == []


async def test_checkpoints_prune_keeps_the_chain(project: AsyncProjectStore) -> None:
    async with project.transaction() as tx:
        chain = []
        parent = None
        for i in range(6):
            cp = await tx.checkpoints.save("run", f"s{i}".encode(), parent_id=parent)
            chain.append(cp)
            parent = cp.id
        fork = await tx.checkpoints.save("fork", b"f", parent_id=chain[1].id)
        other = await tx.checkpoints.save("other", b"o")
    async with project.transaction() as tx:
        await tx.checkpoints.prune("run", keep=3)
    async with project.read() as r:
        kept = await r.checkpoints.list("run")
        assert [c.id for c in kept] == [c.id for c in chain[3:]]
        # The oldest kept becomes the root; the others still point at their parents.
        assert [c.parent_id for c in kept] == [None, chain[3].id, chain[4].id]
        # A checkpoint of another run forked from a pruned one is unlinked, not dangling.
        assert (await r.checkpoints.get(fork.id)).parent_id is None
        assert await r.checkpoints.get(other.id) == other
        assert await r.checkpoints.latest("run") == chain[5]

    async with project.transaction() as tx:
        await tx.checkpoints.prune("run", keep=10)  # fewer than keep: nothing to do
        await tx.checkpoints.prune("unknown-run", keep=1)
    async with project.read() as r:
        assert len(await r.checkpoints.list("run")) == 3
    async with project.transaction() as tx:
        await tx.checkpoints.prune("run", keep=0)
    async with project.read() as r:
        assert await r.checkpoints.list("run") == []
        assert await r.checkpoints.count() == 2


async def test_checkpoints_bad_input(project: AsyncProjectStore) -> None:
    with pytest.raises(ConstraintViolation):
        async with project.transaction() as tx:
            await tx.checkpoints.save("run", b"x", parent_id="01nosuchcheckpoint00000000")
    async with project.transaction() as tx:
        with pytest.raises(InvalidValue):
            await tx.checkpoints.save("run", "text is not bytes")  # type: ignore[arg-type]
        with pytest.raises(InvalidValue):
            await tx.checkpoints.save("", b"x")
        with pytest.raises(InvalidValue):
            await tx.checkpoints.save("r" * 201, b"x")
        with pytest.raises(InvalidValue):
            await tx.checkpoints.prune("run", keep=-1)
        with pytest.raises(InvalidValue):
            await tx.checkpoints.prune("run", keep="3")  # type: ignore[arg-type]
        with pytest.raises(InvalidValue):
            await tx.checkpoints.save("run", b"x", meta={1, 2})
    async with project.read() as r:
        assert await r.checkpoints.count() == 0


async def test_a_unit_that_fails_leaves_nothing(project: AsyncProjectStore) -> None:
    """A constraint failure rolls back the whole unit, including the rows written before it."""
    with pytest.raises(ConstraintViolation):
        async with project.transaction() as tx:
            await tx.agents.register("kept?")
            await tx.llm_calls.record(model="m", cost_usd=1)
            await tx.checkpoints.save("run", b"x", parent_id="01nosuchcheckpoint00000000")
    async with project.read() as r:
        assert await r.agents.count() == 0
        assert await r.llm_calls.count() == 0


@settings(max_examples=25, deadline=None)
@given(
    costs=st.lists(
        st.decimals(min_value=0, max_value=10**6, places=9, allow_nan=False), max_size=30
    ),
    models=st.lists(st.sampled_from(["a", "b", "c"]), min_size=30, max_size=30),
)
def test_totals_are_the_exact_sums(
    tmp_path_factory: pytest.TempPathFactory, costs: list[Decimal], models: list[str]
) -> None:
    """Whatever the amounts, SQL sums equal Python's exact Decimal sums, per group too."""
    path = tmp_path_factory.mktemp("sums") / "db.sqlite"

    async def run() -> None:
        async with AsyncProjectStore(path) as project:
            async with project.transaction() as tx:
                for cost, model in zip(costs, models, strict=False):
                    await tx.llm_calls.record(model=model, cost_usd=cost, input_tokens=1)
            async with project.read() as r:
                assert await r.llm_calls.total_cost() == sum(costs, Decimal(0))
                expected: dict[str, Decimal] = {}
                for cost, model in zip(costs, models, strict=False):
                    expected[model] = expected.get(model, Decimal(0)) + cost
                totals = await r.llm_calls.totals("model")
                assert {t.key: t.cost_usd for t in totals} == expected
                assert sum(t.calls for t in totals) == len(costs)

    asyncio.run(run())


# -- JSON values: exact, top level included -----------------------------------------------------

EXACT_JSON = [
    1.0,
    1e5,
    -0.0,
    0.30000000000000004,
    1e300,
    2**70,
    -(2**70) - 1,
    0,
    "1",
    "1.0",
    True,
    False,
    {"n": [1.0, 2**70, -0.0, {"s": "1"}], "t": True},
    [1e5, None, "x"],
]


def _same_json(got: object, want: object) -> bool:
    """Equal as JSON text: tells 1.0 from 1, -0.0 from 0.0 and True from 1, at every depth."""
    return type(got) is type(want) and json.dumps(got) == json.dumps(want)


async def test_json_values_round_trip_exactly_through_the_file(tmp_path: Path) -> None:
    """Every JSON column keeps a value as written, a top-level number too: declared TEXT on
    SQLite, the column stores the JSON text (declared JSON, NUMERIC affinity read 1.0 back as 1,
    1e5 as 100000 and could not hold 2**70)."""
    path = tmp_path / "json.sqlite"
    written: dict[str, list[tuple[str, str, object]]] = {}
    async with AsyncProjectStore(path) as project:
        project_id = "json-project"
        async with project.transaction() as tx:
            await tx.projects.create(id=project_id, name="json")
            conv = await tx.conversations.create(title="json")
            for i, value in enumerate(EXACT_JSON):
                c = await tx.conversations.create(title=f"{i}", meta=value)
                m = await tx.messages.append(conv.id, role="user", content=f"{i}", meta=value)
                (many,) = await tx.messages.append_many(
                    conv.id, [{"role": "user", "content": f"many {i}", "meta": value}]
                )
                a = await tx.agents.register(f"agent {i}", config=value, state=value)
                p = await tx.plugins.install(f"plugin {i}", config=value, state=value)
                written[f"{i}"] = [
                    ("conversations", c.id, value),
                    ("messages", m.id, value),
                    ("messages", many.id, value),
                    ("agents", a.id, value),
                    ("plugins", p.id, value),
                ]
        # The update paths too: the value replaces another one.
        async with project.transaction() as tx:
            for i, value in enumerate(EXACT_JSON):
                a = await tx.agents.register(f"updated {i}", state={"old": 1})
                await tx.agents.update_state(a.id, value)
                await tx.agents.update_config(a.id, value)
                p = await tx.plugins.install(f"updated {i}")
                await tx.plugins.set_state(p.id, value)
                await tx.plugins.set_config(p.id, value)
                await tx.conversations.update(conv.id, meta=value)
                written[f"{i}"] += [("agents", a.id, value), ("plugins", p.id, value)]
            await tx.projects.update(project_id, config=EXACT_JSON[0])

    # Read back from the file, in a new store.
    async with AsyncProjectStore(path, create=False) as project:
        async with project.read() as r:
            for rows in written.values():
                for table, id_, want in rows:
                    record = await getattr(r, table).get(id_)
                    fields = ("config", "state") if table in ("agents", "plugins") else ("meta",)
                    for f in fields:
                        got = getattr(record, f)
                        assert _same_json(got, want), (table, f, got, want)
            assert _same_json((await r.conversations.get(conv.id)).meta, EXACT_JSON[-1])
            assert _same_json((await r.projects.get(project_id)).config, 1.0)

    conn = sqlite3.connect(path)
    try:
        kinds = {
            row[0]
            for table, column in (
                ("conversations", "meta"),
                ("messages", "meta"),
                ("agents", "state"),
                ("plugins", "config"),
            )
            for row in conn.execute(
                f"SELECT DISTINCT typeof({column}) FROM {table} WHERE {column} IS NOT NULL"
            )
        }
        # Stored as the JSON text, never as an SQLite number.
        assert kinds == {"text"}
        assert conn.execute("SELECT meta FROM messages WHERE content = '0'").fetchone() == ("1.0",)
    finally:
        conn.close()
