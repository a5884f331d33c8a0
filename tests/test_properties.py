"""Properties: IDs, the project ID validator, exact money, and records that round-trip."""

from __future__ import annotations

import asyncio
import json
import os
import sqlite3
import unicodedata
from collections.abc import Awaitable, Callable, Coroutine, Iterator
from dataclasses import dataclass, replace
from decimal import Decimal
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import pytest
from conftest import SOAK
from hypothesis import assume, example, given, settings
from hypothesis import strategies as st

from demiarch_store import (
    AsyncProjectStore,
    InvalidProjectId,
    InvalidValue,
    Store,
    StoreConfig,
    new_project_id,
    validate_project_id,
)
from demiarch_store.ids import MAX_ID_LENGTH, new_record_id
from demiarch_store.schema import HEAD_REVISION, from_nanos, to_nanos

# -- IDs ------------------------------------------------------------------------------------


@given(st.integers(1, 300), st.sampled_from([new_project_id, new_record_id]))
def test_generated_ids_are_valid_and_sort_by_creation(n: int, make: Any) -> None:
    ids = [make() for _ in range(n)]
    assert ids == sorted(ids) and len(set(ids)) == n  # strictly increasing
    for i in ids:
        assert validate_project_id(i) == i
        assert len(i) == (16 if make is new_project_id else 26)


# -- the validator never lets an ID leave projects_dir ----------------------------------------

# Pieces that have escaped directories in real systems: separators, dot segments, URL escapes
# (single, double, overlong UTF-8), NUL, and Unicode look-alikes that some layers normalise.
_HOSTILE = [
    "..", ".", "/", "\\", "%2e", "%2E", "%2f", "%2F", "%5c", "%252e", "%252f", "%c0%af",
    "%c0%ae", "%00", "\x00", "\uff0e", "\uff0f", "\u2215", "\u2044", "\u29f8", "\u2024",
    "\u3002", "\ufe52", "\u2025", "\u2026", "\uff3c", "~", ":", " ", "\n", "\t", "\u200b",
    "\u0131", "\u212a", "a", "0", "-", "_", "con", "nul",
]
hostile_ids = st.one_of(
    st.lists(st.sampled_from(_HOSTILE), min_size=1, max_size=8).map("".join),
    st.text(max_size=80),
    st.text(alphabet="./\\%2eEfF05cC", max_size=20),
    st.binary(max_size=40).map(lambda b: b.decode("latin-1")),
)


def _stays_inside(root: Path, candidate: str) -> bool:
    """True if every way a layer might read ``candidate`` names one child of ``root``."""
    for form in {candidate, unquote(candidate), unquote(unquote(candidate)),
                 unicodedata.normalize("NFKC", candidate)}:
        if not form or "\x00" in form or "/" in form or "\\" in form or os.sep in form:
            return False
        if form in (".", ".."):
            return False
        if (root / form).resolve().parent != root.resolve():
            return False
    return True


@given(hostile_ids)
def test_validator_never_accepts_an_id_that_leaves_projects_dir(candidate: str) -> None:
    root = Path("/srv/demiarch/projects")
    try:
        accepted = validate_project_id(candidate)
    except InvalidProjectId as exc:
        assert exc.hint  # says what a valid ID looks like
        return
    assert accepted == candidate
    assert _stays_inside(root, candidate), f"accepted {candidate!r}"
    assert len(candidate) <= MAX_ID_LENGTH
    assert candidate == candidate.lower() and candidate.isascii()


@given(hostile_ids)
def test_store_paths_refuse_what_the_validator_refuses(candidate: str) -> None:
    store = Store(StoreConfig(projects_dir=Path("/srv/demiarch/projects")))
    try:
        validate_project_id(candidate)
    except InvalidProjectId:
        with pytest.raises(InvalidProjectId):
            store.database_path(candidate)
    else:
        assert store.database_path(candidate).parent.parent == Path("/srv/demiarch/projects")


# -- money --------------------------------------------------------------------------------------

INT64 = 2**63 - 1
nanos = st.integers(-(10**18), 10**18)
amounts = nanos.map(lambda n: Decimal(n).scaleb(-9))


@given(nanos)
def test_money_round_trips_exactly(n: int) -> None:
    amount = from_nanos(n)
    assert to_nanos(amount) == n
    assert to_nanos(str(amount)) == n
    assert amount == Decimal(n) / Decimal(10**9)


@given(st.lists(amounts, max_size=50))
def test_money_sums_exactly(values: list[Decimal]) -> None:
    # Summing the stored integers (what SQL does) equals the exact Decimal sum.
    assert from_nanos(sum(to_nanos(v) for v in values)) == sum(values, Decimal(0))


@given(st.decimals(allow_nan=True, allow_infinity=True, places=None) | st.floats())
def test_money_refuses_what_it_cannot_store_exactly(value: Any) -> None:
    try:
        n = to_nanos(value)
    except InvalidValue:
        return
    assert isinstance(value, Decimal) and value.is_finite()
    assert from_nanos(n) == value  # nothing was rounded away
    assert -INT64 - 1 <= n <= INT64, "accepted an amount the INTEGER column cannot hold"


# -- records round-trip ---------------------------------------------------------------------

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**63 - 1)
    | st.integers(-(10**40), 10**40)  # beyond 64 bits, at the top level too
    | st.floats(allow_nan=False, allow_infinity=False)  # not JSON: refused (see test_repositories)
    | st.sampled_from([1.0, -0.0, 0.0, 1e5, 2.0**70, 1e300])  # floats that look like integers
    | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner,
                                                                 max_size=4),
    max_leaves=20,
)
texts = st.one_of(
    st.text(max_size=200),
    st.just(""),
    st.builds(lambda s, n: s * n, st.text(min_size=1, max_size=3), st.integers(1, 300_000)),
)


def _exact(value: Any) -> str:
    """JSON text that tells 1 from 1.0, -0.0 from 0.0 and True from 1, for an exact comparison."""
    return json.dumps(value, sort_keys=True)


def _through_numeric_affinity(value: Any) -> str:
    """``_exact`` of ``value`` after a stay in a schema before 0003, whose JSON columns had
    NUMERIC affinity: a top-level number was stored as an SQLite number (1.0 as 1, an integer
    beyond 64 bits as an inexact float), and 0003 turns that number back into JSON text."""
    conn = sqlite3.connect(":memory:")
    try:
        conn.execute("CREATE TABLE t (v JSON)")
        conn.execute("INSERT INTO t VALUES (?)", (json.dumps(value),))
        (stored,) = conn.execute("SELECT v FROM t").fetchone()
    finally:
        conn.close()
    return _exact(stored if isinstance(stored, int | float) else json.loads(stored))


@dataclass
class Runner:
    """One event loop and one open project, shared by all examples of a test."""

    loop: asyncio.AbstractEventLoop
    project: AsyncProjectStore
    postgres: bool = False

    def run(self, coro: Coroutine[Any, Any, Any]) -> Any:
        return self.loop.run_until_complete(coro)

    def refused(self, *texts: str | None) -> bool:
        """True if the engine must refuse these texts: PostgreSQL stores no NUL in text (it
        raises InvalidValue, tested here); SQLite stores every string."""
        return self.postgres and any(t is not None and "\x00" in t for t in texts)

    async def refuses(self, unit: Callable[[], Awaitable[Any]]) -> None:
        """Run ``unit``: it raises InvalidValue, and none of its writes is there."""

        async def counts() -> tuple[int, int, Any]:
            async with self.project.read() as r:
                convs = await r.conversations.list()
                return len(convs), await r.messages.count(), [c.title for c in convs]

        before = await counts()
        with pytest.raises(InvalidValue, match="NUL characters"):
            await unit()
        assert await counts() == before


@pytest.fixture
def runner(engine_config: StoreConfig) -> Iterator[Runner]:
    """A project on each engine: a file of its own on SQLite; on PostgreSQL, a project of the
    session's database (the store is opened and closed on this fixture's loop)."""
    loop = asyncio.new_event_loop()
    try:
        if engine_config.database_url is None:
            path = engine_config.projects_dir / "rt.sqlite"
            project = loop.run_until_complete(AsyncProjectStore(path).open())
            try:
                yield Runner(loop, project)
            finally:
                loop.run_until_complete(project.close())
            return
        store = Store(engine_config)
        try:
            project = loop.run_until_complete(store.create_project(name="round trips"))
            yield Runner(loop, project, postgres=True)
            loop.run_until_complete(store.delete_project(project.id))
        finally:
            loop.run_until_complete(store.close())
    finally:
        loop.close()


@given(title=st.none() | texts, meta=json_values, content=texts, role=st.text(min_size=1,
                                                                               max_size=32))
@example(title=None, meta=None, content="a\x00b", role="user")  # kept on SQLite, refused on PG
def test_conversations_and_messages_round_trip(
    runner: Runner, title: str | None, meta: Any, content: str, role: str
) -> None:
    async def write() -> tuple[Any, Any, Any]:
        async with runner.project.transaction() as tx:
            conv = await tx.conversations.create(title=title, meta=meta)
            msg = await tx.messages.append(conv.id, role=role, content=content, meta=meta)
            many = await tx.messages.append_many(
                conv.id, [{"role": role, "content": content, "meta": meta}] * 2
            )
        return conv, msg, many

    async def go() -> None:
        project = runner.project
        if runner.refused(title, content, role):
            await runner.refuses(write)
            return
        conv, msg, many = await write()
        async with project.read() as r:
            assert await r.conversations.get(conv.id) == conv
            assert await r.messages.get(msg.id) == msg
            assert _exact((await r.messages.get(msg.id)).meta) == _exact(meta)
            assert await r.messages.list(conv.id) == [msg, *many]
        assert conv.title == title and msg.content == content and msg.role == role
        assert _exact(conv.meta) == _exact(meta) == _exact(msg.meta)
        assert conv.created_at.tzinfo is not None

    runner.run(go())


@given(title=texts, meta=json_values)
@example(title="\x00", meta=1)
def test_updates_round_trip(runner: Runner, title: str, meta: Any) -> None:
    assume(meta is not None)  # None means "leave unchanged"

    async def go() -> None:
        project = runner.project
        async with project.transaction() as tx:
            conv = await tx.conversations.create(title="before")

        async def update() -> None:
            async with project.transaction() as tx:
                await tx.conversations.update(conv.id, title=title, meta=meta)

        if runner.refused(title):
            await runner.refuses(update)  # the title stays "before"
            return
        await update()
        async with project.read() as r:
            got = await r.conversations.get(conv.id)
        assert (got.id, got.title, got.created_at) == (conv.id, title, conv.created_at)
        assert _exact(got.meta) == _exact(meta)
        assert got.updated_at >= conv.updated_at

    runner.run(go())


short = st.text(min_size=1, max_size=30)


@given(
    name=short,
    text=texts,
    meta=json_values,
    blob=st.binary(max_size=5000),
    cost=amounts.filter(lambda d: d >= 0),
    tokens=st.integers(0, 2**40),
)
@example(name="n\x00", text="", meta=None, blob=b"", cost=Decimal(0), tokens=0)
def test_every_repository_round_trips(
    runner: Runner, name: str, text: str, meta: Any, blob: bytes, cost: Decimal, tokens: int
) -> None:
    async def write() -> None:
        project = runner.project
        unique = name + new_record_id()  # names are unique per table; the project is shared
        async with project.transaction() as tx:
            conv = await tx.conversations.create(title=name, meta=meta)
            agent = await tx.agents.register(unique, role=name[:100], config=meta, state=meta)
            skill = await tx.skills.add(
                unique, description=text, definition=meta, agent_id=agent.id
            )
            call = await tx.llm_calls.record(
                model=name, cost_usd=cost, input_tokens=tokens, output_tokens=tokens,
                agent_id=agent.id, conversation_id=conv.id, error=text,
            )
            checkpoint = await tx.checkpoints.save(name, blob, meta=meta)
            plugin = await tx.plugins.install(unique, version=name[:64], config=meta, state=meta)
            session = await tx.sessions.start(user_id=name, agent_id=agent.id, meta=meta)
            code = await tx.code_generation.store(
                f"src/{name}.py", text, language="python", agent_id=agent.id, meta=meta
            )
        written = {
            "agents": agent, "skills": skill, "llm_calls": call, "checkpoints": checkpoint,
            "plugins": plugin, "sessions": session, "code_generation": code,
        }
        async with project.read() as r:
            for repo, record in written.items():
                got = await getattr(r, repo).get(record.id)
                assert got == record, repo
                for f in ("config", "state", "definition", "meta"):
                    if hasattr(record, f) and (repo, f) != ("checkpoints", "state"):
                        assert _exact(getattr(got, f)) == _exact(meta), (repo, f)
        assert call.cost_usd == cost and checkpoint.state == blob and code.content == text

    async def go() -> None:
        if runner.refused(name, text):
            await runner.refuses(write)  # the unit is refused whole
            return
        await write()

    runner.run(go())


@settings(max_examples=40 if SOAK else 8)
@given(
    conversations=st.lists(
        st.tuples(st.none() | texts, json_values, st.lists(st.text(max_size=50), max_size=5)),
        max_size=4,
    )
)
def test_migrations_down_and_up_keep_generated_data(
    tmp_path_factory: pytest.TempPathFactory, conversations: list[tuple[Any, Any, list[str]]]
) -> None:
    # SQLite only: migrate_project runs the migrations on a project file (not on PostgreSQL).
    config = StoreConfig(projects_dir=tmp_path_factory.mktemp("mig") / "projects")

    async def go() -> None:
        async with Store(config) as store:
            project = await store.create_project(name="migrated")
            written = []
            async with project.transaction() as tx:
                for title, meta, contents in conversations:
                    conv = await tx.conversations.create(title=title, meta=meta)
                    msgs = [
                        await tx.messages.append(conv.id, role="user", content=c, meta=meta)
                        for c in contents
                    ]
                    written.append((conv, msgs))
            assert await store.migrate_project(project.id, to="0001") == (HEAD_REVISION, "0001")
            assert await store.migrate_project(project.id, to="head") == ("0001", HEAD_REVISION)
            again = await store.open_project(project.id)
            async with again.read() as r:
                for conv, msgs in written:
                    # Everything comes back, but a top-level JSON number as schema 0001 kept it.
                    expected = _through_numeric_affinity(conv.meta)
                    got = await r.conversations.get(conv.id)
                    assert (got.title, _exact(got.meta)) == (conv.title, expected)
                    back = await r.messages.list(conv.id)
                    assert [replace(m, meta=None) for m in back] == [
                        replace(m, meta=None) for m in msgs
                    ]
                    assert all(_exact(m.meta) == expected for m in back)

    asyncio.run(go())
