"""Google ADK's ``BaseSessionService`` on a project: ``DemiarchSessionService``.

A session is one of the project's conversations and each event one of its messages (the
event's JSON is the content, its author the role). Session state lives in ``agent_sessions``;
the state ADK shares between the sessions of an app (``app:`` keys) or of one user in an app
(``user:`` keys) in ``agent_states``; ``temp:`` keys are never stored::

    from demiarch_store.integrations.adk import DemiarchSessionService

    runner = Runner(agent=agent, app_name="app", session_service=DemiarchSessionService(project))

Needs the ``[adk]`` extra.
"""

from __future__ import annotations

import copy
import uuid
from collections import OrderedDict
from datetime import datetime, timedelta
from typing import Any

from google.adk.errors import StaleSessionError
from google.adk.errors.already_exists_error import AlreadyExistsError
from google.adk.errors.session_not_found_error import SessionNotFoundError
from google.adk.events import Event
from google.adk.sessions import BaseSessionService, Session, State
from google.adk.sessions.base_session_service import GetSessionConfig, ListSessionsResponse
from pydantic_core import to_jsonable_python

from ..errors import ConstraintViolation
from ..project import AsyncProjectStore
from ..records import AgentSession, AgentState, Message
from ..schema import EPOCH, to_micros
from ._reads import quick_read

__all__ = ["FRAMEWORK", "DemiarchSessionService"]

FRAMEWORK = "adk"
"""The ``framework`` of these sessions and states in ``agent_sessions`` and ``agent_states``."""


def _micros(seconds: float) -> int:
    """ADK's float seconds as the integer microseconds the store keeps."""
    return round(seconds * 1_000_000)


def _when(seconds: float) -> datetime:
    return EPOCH + timedelta(microseconds=_micros(seconds))


def _seconds(when: datetime) -> float:
    return to_micros(when) / 1_000_000


def _split(state: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """Split a state (delta) into its app, user and session parts, dropping ``temp:`` keys."""
    app: dict[str, Any] = {}
    user: dict[str, Any] = {}
    session: dict[str, Any] = {}
    for key, value in state.items():
        if key.startswith(State.APP_PREFIX):
            app[key.removeprefix(State.APP_PREFIX)] = value
        elif key.startswith(State.USER_PREFIX):
            user[key.removeprefix(State.USER_PREFIX)] = value
        elif not key.startswith(State.TEMP_PREFIX):
            session[key] = value
    return _jsonable(app), _jsonable(user), _jsonable(session)


def _jsonable(state: dict[str, Any]) -> dict[str, Any]:
    # As ADK's own services do: rich values (datetimes, models) as JSON, anything else as text.
    out: dict[str, Any] = to_jsonable_python(state, fallback=repr)
    return out


def _merged(app: dict[str, Any], user: dict[str, Any], session: dict[str, Any]) -> dict[str, Any]:
    merged = copy.deepcopy(session)
    merged.update({State.APP_PREFIX + k: v for k, v in app.items()})
    merged.update({State.USER_PREFIX + k: v for k, v in user.items()})
    return merged


def _state(record: AgentState | AgentSession | None) -> dict[str, Any]:
    if record is None or not isinstance(record.state, dict):
        return {}
    return dict(record.state)


class DemiarchSessionService(BaseSessionService):
    """ADK sessions stored in a project: each one conversation, each event one message.

    Args:
        project: An open ``AsyncProjectStore``; it stays the caller's to close.
        cached_events: How many parsed events to keep. A stored event never changes (its
            message is only ever appended or deleted), so ``get_session`` parses each one once
            and hands out copies: parsing is most of the cost of reading a long session.

    Behaves as ADK's own services do: a duplicate session ID raises ``AlreadyExistsError``;
    ``get_session`` returns ``None`` for an unknown session; appending to a session that was
    changed in storage since it was read raises ``StaleSessionError``.
    """

    def __init__(self, project: AsyncProjectStore, *, cached_events: int = 10_000) -> None:
        self.project = project
        self._cached_events = cached_events
        self._events: OrderedDict[str, Event] = OrderedDict()

    def __repr__(self) -> str:
        return f"DemiarchSessionService(project={self.project.id!r})"

    async def _shared(
        self,
        tx: Any,
        scope: str,
        app_name: str,
        user_id: str,
        delta: dict[str, Any],
        when: datetime,
    ) -> dict[str, Any]:
        """Return the app's or user's shared state, with ``delta`` applied and stored."""
        found = await tx.agent_states.find(FRAMEWORK, scope, app_name=app_name, user_id=user_id)
        state = _state(found)
        if delta:
            state.update(delta)
            await tx.agent_states.put(
                FRAMEWORK, scope, state, app_name=app_name, user_id=user_id, updated_at=when
            )
        return state

    async def create_session(
        self,
        *,
        app_name: str,
        user_id: str,
        state: dict[str, Any] | None = None,
        session_id: str | None = None,
    ) -> Session:
        """Create a session (a new conversation); a session ID already taken is refused."""
        session_id = (session_id or "").strip() or str(uuid.uuid4())
        app_delta, user_delta, session_state = _split(state or {})
        now = datetime.now().timestamp()
        when = _when(now)
        try:
            async with self.project.transaction() as tx:
                key = {"app_name": app_name, "user_id": user_id}
                if await tx.agent_sessions.find(FRAMEWORK, session_id, **key) is not None:
                    raise AlreadyExistsError(f"Session with id {session_id} already exists.")
                app_state = await self._shared(tx, "app", app_name, "", app_delta, when)
                user_state = await self._shared(tx, "user", app_name, user_id, user_delta, when)
                conv = await tx.conversations.create(
                    title=f"{FRAMEWORK} session {app_name}/{user_id}/{session_id}",
                    meta={"framework": FRAMEWORK, **key, "session_id": session_id},
                )
                await tx.agent_sessions.create(
                    FRAMEWORK,
                    session_id,
                    conversation_id=conv.id,
                    state=session_state,
                    created_at=when,
                    **key,
                )
        except ConstraintViolation:  # created by another process since the check
            raise AlreadyExistsError(f"Session with id {session_id} already exists.") from None
        return Session(
            app_name=app_name,
            user_id=user_id,
            id=session_id,
            state=_merged(app_state, user_state, session_state),
            events=[],
            last_update_time=_seconds(when),
        )

    async def get_session(
        self,
        *,
        app_name: str,
        user_id: str,
        session_id: str,
        config: GetSessionConfig | None = None,
    ) -> Session | None:
        """Return a session with its events (all, recent ones, or since a time), or ``None``."""
        recent = config.num_recent_events if config else None
        after = config.after_timestamp if config else None
        async with quick_read(self.project) as r:
            key = {"app_name": app_name, "user_id": user_id}
            record = await r.agent_sessions.find(FRAMEWORK, session_id, **key)
            if record is None:
                return None
            app_state = await r.agent_states.find(FRAMEWORK, "app", app_name=app_name)
            user_state = await r.agent_states.find(FRAMEWORK, "user", **key)
            if recent == 0:
                messages = []
            elif recent is not None and not after:
                messages = await r.messages.last(record.conversation_id, recent)
            else:
                messages = await r.messages.list(record.conversation_id)
        events = [self._event(m) for m in messages]
        if after:
            events = [e for e in events if e.timestamp >= after]
            if recent is not None:
                events = events[-recent:] if recent else []
        return Session(
            app_name=app_name,
            user_id=user_id,
            id=session_id,
            state=_merged(_state(app_state), _state(user_state), _state(record)),
            events=events,
            last_update_time=_seconds(record.updated_at),
        )

    def _event(self, message: Message) -> Event:
        """Return a copy of the event a message holds, parsing it only the first time."""
        event = self._events.get(message.id)
        if event is None:
            event = Event.model_validate_json(message.content)
            self._remember(message.id, event)
        else:
            self._events.move_to_end(message.id)
        return event.model_copy(deep=True)

    def _remember(self, message_id: str, event: Event) -> None:
        if self._cached_events > 0:
            self._events[message_id] = event
            if len(self._events) > self._cached_events:
                self._events.popitem(last=False)

    async def list_sessions(
        self, *, app_name: str, user_id: str | None = None
    ) -> ListSessionsResponse:
        """Return an app's sessions (or one user's), oldest update first, without events."""
        async with self.project.read() as r:
            records = await r.agent_sessions.list(FRAMEWORK, app_name=app_name, user_id=user_id)
            app_state = _state(await r.agent_states.find(FRAMEWORK, "app", app_name=app_name))
            if user_id is None:
                shared = await r.agent_states.list(FRAMEWORK, scope="user", app_name=app_name)
            else:
                one = await r.agent_states.find(
                    FRAMEWORK, "user", app_name=app_name, user_id=user_id
                )
                shared = [] if one is None else [one]
            users = {s.user_id: _state(s) for s in shared}
        records.sort(key=lambda s: (s.updated_at, s.user_id, s.session_id))
        return ListSessionsResponse(
            sessions=[
                Session(
                    app_name=app_name,
                    user_id=s.user_id,
                    id=s.session_id,
                    state=_merged(app_state, users.get(s.user_id, {}), _state(s)),
                    events=[],
                    last_update_time=_seconds(s.updated_at),
                )
                for s in records
            ]
        )

    async def delete_session(self, *, app_name: str, user_id: str, session_id: str) -> None:
        """Delete a session, its conversation and its events (nothing if there is none)."""
        async with self.project.transaction() as tx:
            key = {"app_name": app_name, "user_id": user_id}
            record = await tx.agent_sessions.find(FRAMEWORK, session_id, **key)
            if record is not None:
                await tx.conversations.delete(record.conversation_id)

    async def get_user_state(self, *, app_name: str, user_id: str) -> dict[str, Any]:
        """Return a user's state in an app, keys without the ``user:`` prefix."""
        async with self.project.read() as r:
            found = await r.agent_states.find(FRAMEWORK, "user", app_name=app_name, user_id=user_id)
        return _state(found)

    async def append_event(self, session: Session, event: Event) -> Event:
        """Store an event and its state delta in one unit of work, then add it to ``session``.

        A partial event is not stored. ``temp:`` keys reach the in-memory session only.
        Raises ``SessionNotFoundError`` for a session not stored, and ``StaleSessionError``
        when the stored session changed after ``session`` was read.
        """
        if event.partial:
            return event
        self._apply_temp_state(session, event)
        event = self._trim_temp_delta_state(event)
        when = _when(event.timestamp)
        app_delta, user_delta, session_delta = _split(
            event.actions.state_delta if event.actions else {}
        )
        content = event.model_dump_json(exclude_none=True)
        role = (event.author or "event")[:32]
        async with self.project.transaction() as tx:
            key = {"app_name": session.app_name, "user_id": session.user_id}
            record = await tx.agent_sessions.find(FRAMEWORK, session.id, **key)
            if record is None:
                raise SessionNotFoundError(f"Session {session.id} not found.")
            if to_micros(record.updated_at) > _micros(session.last_update_time):
                raise StaleSessionError(
                    "The session has been modified in storage since it was loaded. "
                    "Please reload the session before appending more events."
                )
            if app_delta:
                await self._shared(tx, "app", session.app_name, "", app_delta, when)
            if user_delta:
                await self._shared(tx, "user", session.app_name, session.user_id, user_delta, when)
            if session_delta:
                state = _state(record)
                state.update(session_delta)
                await tx.agent_sessions.update_state(record.id, state, updated_at=when)
            else:
                await tx.agent_sessions.touch(record.id, updated_at=when)
            message = await tx.messages.append(record.conversation_id, role=role, content=content)
        self._remember(message.id, event.model_copy(deep=True))
        session.last_update_time = _seconds(when)
        return self._commit_event_to_session(session, event)
