"""DemiarchSession: the Agents SDK's Session protocol on a project, alone and under the Runner."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import threading
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from agents import (
    Agent,
    RunConfig,
    Runner,
    SessionSettings,
    function_tool,
    set_tracing_disabled,
)
from agents.memory import Session
from canned_models import INPUT_TOKENS, OUTPUT_TOKENS, CannedModel, get_weather

from demiarch_store import AsyncProjectStore, InvalidValue, StoreConfig, StoreError
from demiarch_store.integrations.openai_agents import FRAMEWORK, DemiarchSession, ModelPrice

pytestmark = pytest.mark.anyio


@pytest.fixture
def config(engine_config: StoreConfig) -> StoreConfig:
    """Every test here runs on SQLite and on PostgreSQL (see conftest.engine_config)."""
    return engine_config
set_tracing_disabled(True)  # no trace export: no network


def user(text: str) -> dict[str, Any]:
    return {"role": "user", "content": text}


async def test_is_a_session_of_the_protocol(project: AsyncProjectStore) -> None:
    session = DemiarchSession("s1", project)
    assert isinstance(session, Session)
    assert session.session_id == "s1"
    assert session.session_settings == SessionSettings()


async def test_add_get_limit_pop_clear(project: AsyncProjectStore) -> None:
    session = DemiarchSession("s1", project)
    assert await session.get_items() == []
    assert await session.pop_item() is None
    items = [user(f"m{i}") for i in range(10)]
    await session.add_items(items[:4])
    await session.add_items(items[4:])
    await session.add_items([])
    assert await session.get_items() == items
    assert await session.get_items(limit=3) == items[-3:]  # the latest, oldest first
    assert await session.get_items(limit=0) == []
    assert await session.get_items(limit=100) == items
    assert await session.pop_item() == items[-1]
    assert await session.get_items(limit=2) == items[-3:-1]
    await session.clear_session()
    assert await session.get_items() == []
    assert await session.pop_item() is None
    await session.add_items([user("again")])
    assert await session.get_items() == [user("again")]


async def test_session_settings_limit_is_the_default(project: AsyncProjectStore) -> None:
    session = DemiarchSession("s", project, session_settings={"limit": 2})
    assert session.session_settings == SessionSettings(limit=2)
    await session.add_items([user(str(i)) for i in range(5)])
    assert await session.get_items() == [user("3"), user("4")]
    assert await session.get_items(limit=4) == [user(str(i)) for i in range(1, 5)]


async def test_sessions_are_isolated_and_persist(tmp_path: Path) -> None:
    path = tmp_path / "db.sqlite"
    async with AsyncProjectStore(path) as project:
        a, b = DemiarchSession("a", project), DemiarchSession("b", project)
        await a.add_items([user("for a")])
        await b.add_items([user("for b")])
        assert await a.pop_item() == user("for a")
        assert await b.get_items() == [user("for b")]
        await a.add_items([user("kept")])
    async with AsyncProjectStore(path) as project:
        assert await DemiarchSession("a", project).get_items() == [user("kept")]
        assert await DemiarchSession("b", project).get_items() == [user("for b")]


async def test_items_are_messages_of_a_conversation(project: AsyncProjectStore) -> None:
    item = {
        "type": "function_call",
        "call_id": "c1",
        "name": "lookup",
        "arguments": '{"q": "caf\u00e9 \\"x\\""}',
        "nested": {"n": 1.5, "big": 2**70, "list": [None, True]},
    }
    session = DemiarchSession("user-42", project)
    await session.add_items([user("hello caf\u00e9"), item])
    async with project.read() as r:
        [record] = await r.agent_sessions.list(FRAMEWORK)
        assert record.session_id == "user-42" and record.app_name == record.user_id == ""
        assert record.conversation_id == session.conversation_id
        conv = await r.conversations.get(record.conversation_id)
        assert conv.meta == {"framework": FRAMEWORK, "session_id": "user-42"}
        messages = await r.messages.list(conv.id)
        found = await r.messages.search("LOOKUP", conversation_id=conv.id)
        both = await r.messages.search("CAF\u00e9", conversation_id=conv.id)
    assert [m.role for m in messages] == ["user", "function_call"]
    assert [json.loads(m.content) for m in messages] == [user("hello caf\u00e9"), item]
    assert messages[1].content == json.dumps(item, ensure_ascii=False)  # JSON kept exactly
    assert [m.id for m in found] == [messages[1].id]
    assert [m.id for m in both] == [m.id for m in messages]
    assert await session.get_items() == [user("hello caf\u00e9"), item]


async def test_a_message_that_is_not_an_item_is_skipped(project: AsyncProjectStore) -> None:
    session = DemiarchSession("s", project)
    await session.add_items([user("1"), user("2")])
    assert session.conversation_id is not None
    async with project.transaction() as tx:  # someone else writes plain text into it
        await tx.messages.append(session.conversation_id, role="note", content="not json")
    assert await session.get_items() == [user("1"), user("2")]
    assert await session.get_items(limit=2) == [user("1"), user("2")]
    assert await session.pop_item() == user("2")  # the note is dropped on the way
    assert await session.get_items() == [user("1")]


async def test_bad_items_are_refused_and_nothing_is_written(project: AsyncProjectStore) -> None:
    session = DemiarchSession("s", project)
    await session.add_items([user("ok")])
    for bad in ({"role": "user", "content": object()}, {"x": float("nan")}):
        with pytest.raises(InvalidValue, match="cannot be stored as JSON") as info:
            await session.add_items([user("first"), bad])
        assert project.id in str(info.value) and "nothing was added" in str(info.value)
    assert await session.get_items() == [user("ok")]
    with pytest.raises(InvalidValue, match="session_id"):
        DemiarchSession("", project)


async def test_a_deleted_conversation_is_made_again(project: AsyncProjectStore) -> None:
    session = DemiarchSession("s", project)
    await session.add_items([user("old")])
    old = session.conversation_id
    assert old is not None
    async with project.transaction() as tx:
        await tx.conversations.delete(old)  # cascades to its messages and the session row
    await session.add_items([user("new")])
    assert session.conversation_id != old
    assert await DemiarchSession("s", project).get_items() == [user("new")]


async def test_concurrent_pops_never_return_the_same_item(project: AsyncProjectStore) -> None:
    items = [user(f"m{i}") for i in range(40)]
    await DemiarchSession("s", project).add_items(items)
    sessions = [DemiarchSession("s", project) for _ in range(4)]  # four handles, one session
    with anyio_fail_after(60):
        popped = await asyncio.gather(*(sessions[i % 4].pop_item() for i in range(60)))
    got = [p for p in popped if p is not None]
    assert len(got) == 40 and popped.count(None) == 20
    assert sorted(json.dumps(p) for p in got) == sorted(json.dumps(i) for i in items)


def anyio_fail_after(seconds: float) -> Any:
    import anyio

    return anyio.fail_after(seconds)


async def test_use_from_another_event_loop_is_refused(project: AsyncProjectStore) -> None:
    session = DemiarchSession("s", project)
    await session.add_items([user("x")])
    errors: list[BaseException] = []

    def other_loop() -> None:
        try:
            asyncio.run(session.get_items())
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=other_loop)
    thread.start()
    thread.join(30)
    assert not thread.is_alive()
    [error] = errors
    assert isinstance(error, StoreError) and "another event loop" in str(error)


# -- under the Runner --------------------------------------------------------------------------


def weather_agent(model: CannedModel) -> Agent[Any]:
    return Agent(name="assistant", model=model, tools=[function_tool(get_weather)])


async def run(method: str, agent: Agent[Any], text: str, session: DemiarchSession) -> str:
    if method == "run":
        result = await Runner.run(agent, text, session=session)
    else:
        streamed = Runner.run_streamed(agent, text, session=session)
        async for _ in streamed.stream_events():
            pass
        result = streamed
    return str(result.final_output)


@pytest.mark.parametrize("method", ["run", "run_streamed"])
async def test_runner_keeps_history_with_tool_calls(
    project: AsyncProjectStore, method: str
) -> None:
    model = CannedModel()
    agent = weather_agent(model)
    session = DemiarchSession("chat", project)
    assert await run(method, agent, "What is the weather in Paris?", session) == (
        "The weather: sunny in Paris."
    )
    assert await run(method, agent, "thanks", session) == "You said: thanks"
    items = await session.get_items()
    kinds = [i.get("role") or i.get("type") for i in items]
    assert kinds == [
        "user", "function_call", "function_call_output", "assistant", "user", "assistant"
    ]  # fmt: skip
    # The third model call saw the whole history the session holds, from the store.
    assert len(model.inputs[2]) == 5
    assert model.inputs[2][:4] == items[:4]
    async with project.read() as r:
        assert await r.messages.count(session.conversation_id) == 6


def test_runner_run_sync(tmp_path: Path) -> None:
    """run_sync on a thread's event loop: open the project on that loop first."""
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    try:
        project = loop.run_until_complete(AsyncProjectStore(tmp_path / "db.sqlite").open())
        try:
            model = CannedModel()
            session = DemiarchSession("sync", project)
            result = Runner.run_sync(weather_agent(model), "weather in Oslo", session=session)
            assert result.final_output == "The weather: sunny in Oslo."
            result = Runner.run_sync(weather_agent(model), "bye", session=session)
            assert result.final_output == "You said: bye"
            items = loop.run_until_complete(session.get_items())
            assert len(items) == 6 and items[-2] == user("bye")
        finally:
            loop.run_until_complete(project.close())
    finally:
        asyncio.set_event_loop(None)
        loop.close()


async def test_run_config_session_settings_limit_the_history(project: AsyncProjectStore) -> None:
    model = CannedModel()
    agent = Agent(name="a", model=model)
    session = DemiarchSession("limited", project)
    for text in ("one", "two", "three"):
        await Runner.run(agent, text, session=session)
    config = RunConfig(session_settings=SessionSettings(limit=2))
    await Runner.run(agent, "four", session=session, run_config=config)
    # History of 2 items, then the new input.
    assert [i.get("content") for i in model.inputs[-1][:-1]][0] == "three"
    assert len(model.inputs[-1]) == 3


async def test_store_run_usage_records_exact_costs(project: AsyncProjectStore) -> None:
    prices = {"canned": ModelPrice(Decimal("2.50"), Decimal("10.00"))}
    session = DemiarchSession("paid", project, prices=prices)
    result = await Runner.run(weather_agent(CannedModel()), "weather in Rome", session=session)
    await session.store_run_usage(result, model="canned")  # two model responses
    async with project.read() as r:
        calls = await r.llm_calls.list()
        total = await r.llm_calls.total_cost()
    per_call = (
        Decimal("2.50") * INPUT_TOKENS / 1_000_000 + Decimal("10.00") * OUTPUT_TOKENS / 1_000_000
    )
    assert [(c.model, c.input_tokens, c.output_tokens) for c in calls] == [
        ("canned", INPUT_TOKENS, OUTPUT_TOKENS)
    ] * 2
    assert all(c.conversation_id == session.conversation_id for c in calls)
    assert [c.cost_usd for c in calls] == [per_call] * 2
    assert total == 2 * per_call == Decimal("0.0012")
    with pytest.raises(InvalidValue, match="no price for model 'other'"):
        await session.store_run_usage(result, model="other")
    free = DemiarchSession("free", project)
    await free.store_run_usage(result, model="anything")
    async with project.read() as r:
        assert await r.llm_calls.count() == 4
        assert await r.llm_calls.total_cost() == Decimal("0.0012")


def test_importing_the_store_imports_no_framework() -> None:
    code = (
        "import sys, demiarch_store, demiarch_store.integrations;"
        "bad = [m for m in sys.modules if m == 'agents' or m.startswith(('agents.', 'google.adk',"
        " 'openai'))];"
        "print(bad); sys.exit(1 if bad else 0)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr


async def test_items_read_back_as_json_reads_them(project: AsyncProjectStore) -> None:
    """Messages others wrote: JSON with spaces around is an item, text after JSON is not."""
    session = DemiarchSession("s", project)
    await session.add_items([user("mine")])
    assert session.conversation_id is not None
    async with project.transaction() as tx:
        for content in (' {"role": "user", "content": "padded"}\n', '{"a": 1} and more', "1, 2"):
            await tx.messages.append(session.conversation_id, role="note", content=content)
    assert await session.get_items() == [user("mine"), user("padded")]
