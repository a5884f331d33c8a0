"""DemiarchSessionService: ADK's BaseSessionService on a project.

Each test named ``test_contract_*`` checks, on a real project file, the behaviour of the ADK
repository's shared session-service contract test of the same name (its
``tests/unittests/sessions/test_session_service.py``, run there against every backend listed
in ``_conformance.py``; the package does not ship it, so these are our own tests of it).
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from canned_models import INPUT_TOKENS, adk_llm, get_weather
from google.adk.agents import LlmAgent
from google.adk.errors import StaleSessionError
from google.adk.errors.already_exists_error import AlreadyExistsError
from google.adk.errors.session_not_found_error import SessionNotFoundError
from google.adk.events import Event, EventActions
from google.adk.runners import Runner
from google.adk.sessions import Session
from google.adk.sessions.base_session_service import GetSessionConfig
from google.genai import types

from demiarch_store import AsyncProjectStore, StoreConfig
from demiarch_store.integrations.adk import FRAMEWORK, DemiarchSessionService

pytestmark = pytest.mark.anyio


@pytest.fixture
def config(engine_config: StoreConfig) -> StoreConfig:
    """Every test here runs on SQLite and on PostgreSQL (see conftest.engine_config)."""
    return engine_config

APP, USER = "my_app", "test_user"


@pytest.fixture
def service(project: AsyncProjectStore) -> DemiarchSessionService:
    return DemiarchSessionService(project)


async def test_contract_get_empty_session(service: DemiarchSessionService) -> None:
    assert await service.get_session(app_name=APP, user_id=USER, session_id="123") is None


async def test_contract_create_get_session(service: DemiarchSessionService) -> None:
    session = await service.create_session(app_name=APP, user_id=USER, state={"key": "value"})
    assert session.app_name == APP and session.user_id == USER and session.id
    assert session.state == {"key": "value"}
    assert session.last_update_time <= datetime.now(UTC).timestamp()
    got = await service.get_session(app_name=APP, user_id=USER, session_id=session.id)
    assert got == session
    await service.delete_session(app_name=APP, user_id=USER, session_id=session.id)
    assert await service.get_session(app_name=APP, user_id=USER, session_id=session.id) is None
    # Deleting again, or a session that never was, is not an error (as in ADK's services).
    await service.delete_session(app_name=APP, user_id=USER, session_id=session.id)


async def test_contract_create_and_list_sessions(service: DemiarchSessionService) -> None:
    ids = [f"session{i}" for i in range(5)]
    for sid in ids:
        await service.create_session(
            app_name=APP, user_id=USER, session_id=sid, state={"key": "value" + sid}
        )
    sessions = (await service.list_sessions(app_name=APP, user_id=USER)).sessions
    assert {s.id for s in sessions} == set(ids) and len(sessions) == 5
    assert all(s.state == {"key": "value" + s.id} and s.events == [] for s in sessions)


async def test_contract_list_sessions_all_users(service: DemiarchSessionService) -> None:
    for user, sid in (("user1", "session1a"), ("user1", "session1b"), ("user2", "session2a")):
        await service.create_session(
            app_name=APP, user_id=user, session_id=sid, state={"key": "value" + sid[-2:]}
        )
    await service.create_session(app_name="other_app", user_id="user1", session_id="x")
    one = (await service.list_sessions(app_name=APP, user_id="user1")).sessions
    assert {s.id: s.state for s in one} == {
        "session1a": {"key": "value1a"},
        "session1b": {"key": "value1b"},
    }
    two = (await service.list_sessions(app_name=APP, user_id="user2")).sessions
    assert [(s.id, s.user_id) for s in two] == [("session2a", "user2")]
    every = (await service.list_sessions(app_name=APP, user_id=None)).sessions
    assert sorted(s.id for s in every) == ["session1a", "session1b", "session2a"]
    # Shared state merges in: the user's own only, the app's everywhere.
    await service.create_session(
        app_name=APP, user_id="user2", session_id="s2b", state={"user:lang": "fr", "app:v": 1}
    )
    for listed in (
        (await service.list_sessions(app_name=APP, user_id="user2")).sessions,
        (await service.list_sessions(app_name=APP)).sessions,
    ):
        for s in listed:
            lang = {"user:lang": "fr"} if s.user_id == "user2" else {}
            assert {k: v for k, v in s.state.items() if ":" in k} == {**lang, "app:v": 1}


async def test_contract_list_sessions_ordered_by_last_update_time(
    service: DemiarchSessionService,
) -> None:
    created = [
        await service.create_session(app_name=APP, user_id=USER, session_id=s)
        for s in ("a", "b", "c")
    ]
    # Touch "a" last: it becomes the most recently active, listed last.
    event = Event(author="user", timestamp=created[-1].last_update_time + 5)
    await service.append_event(created[0], event)
    listed = (await service.list_sessions(app_name=APP, user_id=USER)).sessions
    assert [s.id for s in listed] == ["b", "c", "a"]


async def test_contract_app_state_is_shared_by_all_users_of_app(
    service: DemiarchSessionService,
) -> None:
    s1 = await service.create_session(
        app_name=APP, user_id="u1", session_id="s1", state={"app:k1": "v1"}
    )
    event = Event(
        invocation_id="inv1", author="user", actions=EventActions(state_delta={"app:k2": "v2"})
    )
    await service.append_event(session=s1, event=event)
    s2 = await service.create_session(app_name=APP, user_id="u2", session_id="s2")
    assert s2.state == {"app:k1": "v1", "app:k2": "v2"}
    got = await service.get_session(app_name=APP, user_id="u1", session_id="s1")
    assert got is not None and got.state == {"app:k1": "v1", "app:k2": "v2"}
    other = await service.create_session(app_name="other", user_id="u1", session_id="s1")
    assert other.state == {}


async def test_contract_user_state_is_shared_only_by_user_sessions(
    service: DemiarchSessionService,
) -> None:
    s1 = await service.create_session(
        app_name=APP, user_id="u1", session_id="s1", state={"user:k1": "v1"}
    )
    event = Event(
        invocation_id="inv1", author="user", actions=EventActions(state_delta={"user:k2": "v2"})
    )
    await service.append_event(session=s1, event=event)
    s1b = await service.create_session(app_name=APP, user_id="u1", session_id="s1b")
    assert s1b.state == {"user:k1": "v1", "user:k2": "v2"}
    s2 = await service.create_session(app_name=APP, user_id="u2", session_id="s2")
    assert s2.state == {}
    assert await service.get_user_state(app_name=APP, user_id="u1") == {"k1": "v1", "k2": "v2"}
    assert await service.get_user_state(app_name=APP, user_id="u2") == {}


async def test_contract_session_state_is_not_shared(service: DemiarchSessionService) -> None:
    s1 = await service.create_session(
        app_name=APP, user_id="u1", session_id="s1", state={"sk1": "v1"}
    )
    event = Event(
        invocation_id="inv1", author="user", actions=EventActions(state_delta={"sk2": "v2"})
    )
    await service.append_event(session=s1, event=event)
    got = await service.get_session(app_name=APP, user_id="u1", session_id="s1")
    assert got is not None and got.state == {"sk1": "v1", "sk2": "v2"}
    s1b = await service.create_session(app_name=APP, user_id="u1", session_id="s1b")
    assert s1b.state == {}


async def test_contract_temp_state_is_not_persisted_in_state_or_events(
    service: DemiarchSessionService,
) -> None:
    session = await service.create_session(app_name=APP, user_id="u1", session_id="s1")
    delta = {"temp:k1": "v1", "sk": "v2"}
    event = Event(invocation_id="inv1", author="user", actions=EventActions(state_delta=delta))
    await service.append_event(session=session, event=event)
    assert session.state["temp:k1"] == "v1"  # in memory, for the rest of the invocation
    got = await service.get_session(app_name=APP, user_id="u1", session_id="s1")
    assert got is not None and got.state == {"sk": "v2"}
    assert got.events[0].actions.state_delta == {"sk": "v2"}


async def test_contract_get_session_respects_user_id(service: DemiarchSessionService) -> None:
    s1 = await service.create_session(app_name=APP, user_id="u1", session_id="s1")
    await service.append_event(s1, Event(invocation_id="inv1", author="user"))
    await service.create_session(app_name=APP, user_id="u2", session_id="s1")
    got = await service.get_session(app_name=APP, user_id="u2", session_id="s1")
    assert got is not None and got.user_id == "u2" and got.events == []


async def test_contract_create_session_with_existing_id_raises_error(
    service: DemiarchSessionService,
) -> None:
    await service.create_session(app_name=APP, user_id=USER, session_id="existing")
    with pytest.raises(AlreadyExistsError):
        await service.create_session(app_name=APP, user_id=USER, session_id="existing")
    # Two at once: exactly one wins.
    results = await asyncio.gather(
        *(service.create_session(app_name=APP, user_id=USER, session_id="race") for _ in range(4)),
        return_exceptions=True,
    )
    assert sum(isinstance(r, Session) for r in results) == 1
    assert sum(isinstance(r, AlreadyExistsError) for r in results) == 3


async def test_contract_append_event_bytes(service: DemiarchSessionService) -> None:
    session = await service.create_session(app_name=APP, user_id=USER)
    content = types.Content(
        role="user", parts=[types.Part.from_bytes(data=b"test_image_data", mime_type="image/png")]
    )
    grounding = types.GroundingMetadata(
        search_entry_point=types.SearchEntryPoint(sdk_blob=b"test_sdk_blob")
    )
    event = Event(
        invocation_id="invocation", author="user", content=content, grounding_metadata=grounding
    )
    await service.append_event(session=session, event=event)
    assert session.events[0].content == content
    got = await service.get_session(app_name=APP, user_id=USER, session_id=session.id)
    assert got is not None and len(got.events) == 1
    assert got.events[0].content == content and got.events[0].grounding_metadata == grounding


async def test_contract_append_event_complete(service: DemiarchSessionService) -> None:
    session = await service.create_session(app_name=APP, user_id=USER)
    event = Event(
        invocation_id="invocation",
        author="user",
        content=types.Content(role="user", parts=[types.Part(text="test_text")]),
        turn_complete=True,
        partial=False,
        actions=EventActions(artifact_delta={"file": 0}, transfer_to_agent="agent", escalate=True),
        long_running_tool_ids={"tool1"},
        error_code="error_code",
        error_message="error_message",
        interrupted=True,
        grounding_metadata=types.GroundingMetadata(web_search_queries=["query1"]),
        usage_metadata=types.GenerateContentResponseUsageMetadata(
            prompt_token_count=1, candidates_token_count=1, total_token_count=2
        ),
        citation_metadata=types.CitationMetadata(),
        custom_metadata={"custom_key": "custom_value"},
        input_transcription=types.Transcription(text="input transcription", finished=True),
        output_transcription=types.Transcription(text="output transcription", finished=True),
    )
    await service.append_event(session=session, event=event)
    assert await service.get_session(app_name=APP, user_id=USER, session_id=session.id) == session


async def test_contract_session_last_update_time_updates_on_event(
    service: DemiarchSessionService,
) -> None:
    session = await service.create_session(app_name=APP, user_id=USER)
    original = session.last_update_time
    event = Event(invocation_id="invocation", author="user", timestamp=original + 10)
    await service.append_event(session=session, event=event)
    assert session.last_update_time == pytest.approx(original + 10, abs=1e-6)
    got = await service.get_session(app_name=APP, user_id=USER, session_id=session.id)
    assert got is not None and got.last_update_time == pytest.approx(original + 10, abs=1e-6)


async def test_contract_get_session_with_config(service: DemiarchSessionService) -> None:
    session = await service.create_session(app_name=APP, user_id=USER)
    for i in range(1, 6):
        # Timestamps 1..5 are older than the session: read the session again each time, as
        # ADK's runner does (the stored update time moves back with these events).
        fresh = await service.get_session(app_name=APP, user_id=USER, session_id=session.id)
        assert fresh is not None
        await service.append_event(fresh, Event(author="user", timestamp=i))

    async def events(**config: Any) -> list[float]:
        got = await service.get_session(
            app_name=APP, user_id=USER, session_id=session.id, config=GetSessionConfig(**config)
        )
        assert got is not None
        return [e.timestamp for e in got.events]

    assert await events() == [1, 2, 3, 4, 5]
    assert await events(num_recent_events=3) == [3, 4, 5]
    assert await events(num_recent_events=0) == []
    assert await events(after_timestamp=4.0) == [4, 5]
    assert await events(after_timestamp=50) == []
    assert await events(after_timestamp=4.0, num_recent_events=3) == [4, 5]
    assert await events(after_timestamp=2.0, num_recent_events=2) == [4, 5]
    with pytest.raises(ValueError):
        GetSessionConfig(num_recent_events=-1)


async def test_contract_partial_events_are_not_persisted(service: DemiarchSessionService) -> None:
    session = await service.create_session(app_name=APP, user_id=USER)
    await service.append_event(session, Event(author="user", partial=True))
    assert session.events == []
    got = await service.get_session(app_name=APP, user_id=USER, session_id=session.id)
    assert got is not None and got.events == []


async def test_contract_padded_session_id_reads_and_deletes(
    service: DemiarchSessionService,
) -> None:
    """As ADK's in-memory and SQLite services: a padded ID is stored stripped."""
    session = await service.create_session(app_name=APP, user_id=USER, session_id="  padded ")
    assert session.id == "padded"
    assert await service.get_session(app_name=APP, user_id=USER, session_id="padded") is not None


async def test_stale_session_is_refused(service: DemiarchSessionService) -> None:
    """The check ADK's SQLite and database services make before appending."""
    now = datetime.now(UTC).timestamp()
    original = await service.create_session(app_name=APP, user_id=USER)
    await service.append_event(original, Event(author="user", timestamp=now + 1))
    updated = await service.get_session(app_name=APP, user_id=USER, session_id=original.id)
    assert updated is not None
    delta = EventActions(state_delta={"sk2": "v2"})
    await service.append_event(updated, Event(author="user", timestamp=now + 2, actions=delta))
    stale = Event(author="user", timestamp=now + 3, actions=EventActions(state_delta={"x": 1}))
    with pytest.raises(StaleSessionError):
        await service.append_event(original, stale)
    final = await service.get_session(app_name=APP, user_id=USER, session_id=original.id)
    assert final is not None and len(final.events) == 2 and final.state == {"sk2": "v2"}
    gone = Session(app_name=APP, user_id=USER, id="nope", last_update_time=now)
    with pytest.raises(SessionNotFoundError):
        await service.append_event(gone, Event(author="user"))


async def test_sessions_are_conversations_and_persist(tmp_path: Path) -> None:
    path = tmp_path / "db.sqlite"
    async with AsyncProjectStore(path) as project:
        service = DemiarchSessionService(project)
        session = await service.create_session(app_name=APP, user_id=USER, session_id="s")
        event = Event(
            author="assistant",
            content=types.Content(role="model", parts=[types.Part(text="hello caf\u00e9")]),
        )
        await service.append_event(session, event)
        async with project.read() as r:
            [record] = await r.agent_sessions.list(FRAMEWORK)
            [message] = await r.messages.list(record.conversation_id)
            found = await r.messages.search("HELLO CAF\u00e9")
        assert message.role == "assistant" and Event.model_validate_json(message.content) == event
        assert [m.id for m in found] == [message.id]
    async with AsyncProjectStore(path) as project:
        got = await DemiarchSessionService(project).get_session(
            app_name=APP, user_id=USER, session_id="s"
        )
        assert got is not None and got.events == [event]


async def test_runner_end_to_end(project: AsyncProjectStore) -> None:
    service = DemiarchSessionService(project)
    llm = adk_llm()
    agent = LlmAgent(name="assistant", model=llm, tools=[get_weather])
    runner = Runner(agent=agent, app_name=APP, session_service=service)
    session = await service.create_session(app_name=APP, user_id=USER, state={"user:lang": "en"})

    async def turn(text: str) -> str:
        message = types.Content(role="user", parts=[types.Part(text=text)])
        replies = []
        async for event in runner.run_async(
            user_id=USER, session_id=session.id, new_message=message
        ):
            if event.content and event.content.parts and event.content.parts[0].text:
                replies.append(event.content.parts[0].text)
        return replies[-1]

    assert await turn("What is the weather in Paris?") == "The weather: sunny in Paris."
    assert await turn("thanks") == "You said: thanks"
    got = await service.get_session(app_name=APP, user_id=USER, session_id=session.id)
    assert got is not None
    # user, call, response, answer; user, answer
    assert [e.author for e in got.events] == ["user", "assistant", "assistant", "assistant"] + [
        "user",
        "assistant",
    ]
    assert got.events[1].get_function_calls()[0].name == "get_weather"
    assert got.state == {"user:lang": "en"}
    assert llm.calls == 3
    assert got.events[-1].usage_metadata.prompt_token_count == INPUT_TOKENS


@pytest.mark.parametrize("engine_config", ["sqlite"], indirect=True)  # file backups
async def test_sessions_are_part_of_backups_bundles_and_checks(store: Any, tmp_path: Path) -> None:
    from demiarch_store.integrations.openai_agents import DemiarchSession

    project = await store.create_project(name="both")
    adk = DemiarchSessionService(project)
    session = await adk.create_session(app_name=APP, user_id=USER, state={"app:k": 1})
    await adk.append_event(
        session, Event(author="user", actions=EventActions(state_delta={"a": 2}))
    )
    await DemiarchSession("sdk", project).add_items([{"role": "user", "content": "hi"}])
    report = await project.check(full=True)
    assert report.ok, report.problems
    backup = await project.backup()
    bundle = await store.export_project(project.id, tmp_path / "out")
    async with project.transaction() as tx:  # lose everything, then get it back
        for conv in await tx.conversations.list():
            await tx.conversations.delete(conv.id)

    async def check(target: AsyncProjectStore) -> None:
        got = await DemiarchSessionService(target).get_session(
            app_name=APP, user_id=USER, session_id=session.id
        )
        assert got is not None and got.state == {"a": 2, "app:k": 1} and len(got.events) == 1
        items = await DemiarchSession("sdk", target).get_items()
        assert items == [{"role": "user", "content": "hi"}]

    await check(await store.restore_project(project.id, backup))
    await store.delete_project(project.id)
    await check(await store.import_project(bundle))


def test_the_command_line_shows_the_sessions(tmp_path: Path) -> None:
    import json
    import subprocess
    import sys

    from demiarch_store import Store, StoreConfig
    from demiarch_store.integrations.openai_agents import DemiarchSession

    async def make() -> str:
        async with Store(StoreConfig(projects_dir=tmp_path)) as store:
            project = await store.create_project(name="agents")
            adk = DemiarchSessionService(project)
            session = await adk.create_session(app_name=APP, user_id=USER, state={"user:x": 1})
            await adk.append_event(session, Event(author="user"))
            await DemiarchSession("sdk", project).add_items([{"role": "user", "content": "hi"}])
            return project.id

    project_id = asyncio.run(make())
    out = subprocess.run(
        [sys.executable, "-m", "demiarch_store", "--projects-dir", str(tmp_path), "show",
         project_id, "--json"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    tables = json.loads(out.stdout)["tables"]
    assert tables["agent_sessions"] == 2 and tables["agent_states"] == 1
    assert tables["conversations"] == 2 and tables["messages"] == 2


@pytest.mark.parametrize("cached", [0, 2, 10_000])
async def test_events_handed_out_are_copies(project: AsyncProjectStore, cached: int) -> None:
    service = DemiarchSessionService(project, cached_events=cached)
    session = await service.create_session(app_name=APP, user_id=USER, session_id="s")
    texts = [f"event {i}" for i in range(5)]
    for text in texts:
        content = types.Content(role="user", parts=[types.Part(text=text)])
        await service.append_event(session, Event(author="user", content=content))
    session.events[0].content.parts[0].text = "changed by the caller"  # type: ignore[union-attr]
    for _ in range(2):
        got = await service.get_session(app_name=APP, user_id=USER, session_id="s")
        assert got is not None
        assert [e.content.parts[0].text for e in got.events] == texts  # type: ignore[union-attr]
        got.events[1].content.parts[0].text = "changed too"  # type: ignore[union-attr]
    # Another service (another process's view) reads the same events from the file.
    other = await DemiarchSessionService(project).get_session(
        app_name=APP, user_id=USER, session_id="s"
    )
    assert other is not None
    assert [e.content.parts[0].text for e in other.events] == texts  # type: ignore[union-attr]
