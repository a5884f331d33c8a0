"""The OpenAI Agents SDK's ``Session`` protocol on a project: ``DemiarchSession``.

A session is one of the project's conversations and each item one of its messages: the item's
JSON is the message's content (kept exactly), its ``role`` (or ``type``) the message's role. So
``messages.search``, ``show``, backups and bundles see agent sessions like any conversation::

    from demiarch_store.integrations.openai_agents import DemiarchSession

    result = await Runner.run(agent, "hi", session=DemiarchSession("user-42", project))

Needs the ``[openai-agents]`` extra.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from decimal import ROUND_HALF_EVEN, Decimal
from typing import TYPE_CHECKING, Any

from agents.memory import SessionSettings
from agents.memory.session_settings import coerce_session_settings, resolve_session_limit

from ..errors import ConstraintViolation, InvalidValue, StoreError
from ..project import AsyncProjectStore
from ._reads import quick_read

if TYPE_CHECKING:
    from agents.items import TResponseInputItem
    from agents.result import RunResultBase

__all__ = ["FRAMEWORK", "DemiarchSession", "ModelPrice"]

FRAMEWORK = "openai-agents"
"""The ``framework`` of these sessions in ``agent_sessions``."""

_MILLION = Decimal(1_000_000)
_NANO = Decimal("1e-9")


@dataclass(frozen=True, slots=True)
class ModelPrice:
    """What a model costs, in USD per million tokens (exact: pass ``Decimal`` or ``str``)."""

    input_per_million: Decimal
    """USD per million input tokens."""
    output_per_million: Decimal
    """USD per million output tokens."""

    def cost(self, input_tokens: int, output_tokens: int) -> Decimal:
        """Return the exact cost of one call, rounded half-even to 1e-9 USD."""
        amount = (
            Decimal(input_tokens) * Decimal(self.input_per_million)
            + Decimal(output_tokens) * Decimal(self.output_per_million)
        ) / _MILLION
        return amount.quantize(_NANO, rounding=ROUND_HALF_EVEN)


class DemiarchSession:
    """An Agents SDK session stored in a project: one conversation, one message per item.

    Args:
        session_id: The SDK's session ID (any non-empty text up to 512 characters).
        project: An open ``AsyncProjectStore``; it stays the caller's to close.
        session_settings: The SDK's ``SessionSettings`` (or a dict of them); ``limit`` is the
            default of ``get_items``.
        prices: Model name -> ``ModelPrice``; ``store_run_usage`` records costs with it.

    Use a session on the event loop its project was opened on (for ``Runner.run_sync``,
    open the project on the thread's event loop first: see the README).
    """

    session_id: str
    session_settings: SessionSettings | None

    def __init__(
        self,
        session_id: str,
        project: AsyncProjectStore,
        *,
        session_settings: SessionSettings | dict[str, Any] | None = None,
        prices: Mapping[str, ModelPrice] | None = None,
    ) -> None:
        if not isinstance(session_id, str) or not 0 < len(session_id) <= 512:
            raise InvalidValue(
                "session_id must be a non-empty string of at most 512 characters",
                project=getattr(project, "id", None),
                path=getattr(project, "path", None),
                hint=f"got {type(session_id).__name__}; pass the SDK's session ID as text",
            )
        self.session_id = session_id
        self.project = project
        self.session_settings = (
            SessionSettings()
            if session_settings is None
            else coerce_session_settings(session_settings)
        )
        self.prices = dict(prices) if prices is not None else None
        self._conversation_id: str | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def __repr__(self) -> str:
        return f"DemiarchSession({self.session_id!r}, project={self.project.id!r})"

    @property
    def conversation_id(self) -> str | None:
        """The ID of this session's conversation, once it is known (after a first call)."""
        return self._conversation_id

    def _check_loop(self) -> None:
        loop = asyncio.get_running_loop()
        if self._loop is None:
            self._loop = loop
        elif loop is not self._loop:
            raise StoreError(
                f"session {self.session_id!r} is used from another event loop",
                project=self.project.id,
                path=self.project.path,
                hint="use a session and its project on the event loop the project was opened on",
            )

    async def _find(self) -> str | None:
        """Return this session's conversation ID, or ``None`` if it has no items yet."""
        if self._conversation_id is None:
            async with quick_read(self.project) as r:
                found = await r.agent_sessions.find(FRAMEWORK, self.session_id)
            if found is not None:
                self._conversation_id = found.conversation_id
        return self._conversation_id

    async def get_items(self, limit: int | None = None) -> list[TResponseInputItem]:
        """Return the items, oldest first: all, or the latest ``limit`` of them.

        Without ``limit``, ``session_settings.limit`` applies.
        """
        self._check_loop()
        n = resolve_session_limit(limit, self.session_settings)
        conv = await self._find()
        if conv is None or n == 0:
            return []
        async with quick_read(self.project) as r:
            if n is None or n < 0:  # a negative limit means all, as SQLiteSession reads it
                return _decode(await r.messages.list(conv))
            # A message that is not an item (not JSON) is skipped: widen until n items.
            window = n
            while True:
                rows = await r.messages.last(conv, window)
                items = _decode(rows)
                if len(items) >= n or len(rows) < window:
                    return items[-n:]
                window *= 2

    async def add_items(self, items: list[TResponseInputItem]) -> None:
        """Append items, in order, in one unit of work (the first creates the conversation)."""
        self._check_loop()
        if not items:
            return
        rows = [_row(item, self.project) for item in items]
        for attempt in range(2):
            try:
                async with self.project.transaction() as tx:
                    conv = self._conversation_id
                    if conv is None:
                        conv = await self._find_or_create(tx)
                    await tx.messages.append_many(conv, rows)
                return
            except ConstraintViolation:
                # The conversation was deleted since it was looked up: find or make it again.
                if attempt or self._conversation_id is None:
                    raise
                self._conversation_id = None

    async def _find_or_create(self, tx: Any) -> str:
        found = await tx.agent_sessions.find(FRAMEWORK, self.session_id)
        if found is None:
            conv = await tx.conversations.create(
                title=f"{FRAMEWORK} session {self.session_id}",
                meta={"framework": FRAMEWORK, "session_id": self.session_id},
            )
            found = await tx.agent_sessions.create(
                FRAMEWORK, self.session_id, conversation_id=conv.id
            )
        conversation_id: str = found.conversation_id
        self._conversation_id = conversation_id
        return conversation_id

    async def pop_item(self) -> TResponseInputItem | None:
        """Remove and return the newest item (``None`` if there is none), atomically.

        The read and the delete are one unit of work on the writer: two concurrent pops,
        in this process or another, never return the same item.
        """
        self._check_loop()
        conv = await self._find()
        if conv is None:
            return None
        async with self.project.transaction() as tx:
            while True:
                newest = await tx.messages.last(conv, 1)
                if not newest:
                    return None
                await tx.messages.delete(newest[0].id)
                decoded = _decode(newest)
                if decoded:
                    return decoded[0]
                # Not an item (not JSON): dropped, as SQLiteSession drops it; look further.

    async def clear_session(self) -> None:
        """Delete every item; the conversation (and the costs linked to it) stays."""
        self._check_loop()
        conv = await self._find()
        if conv is None:
            return
        async with self.project.transaction() as tx:
            await tx.messages.clear(conv)

    async def store_run_usage(self, result: RunResultBase, *, model: str | None = None) -> None:
        """Record each model response of a run in ``llm_calls``, linked to this conversation.

        One call per response, with its tokens and the exact cost from ``prices`` (zero
        without a price table). ``model`` names the model; by default the run's last agent's
        model name. A model missing from a given price table raises ``InvalidValue``, and
        nothing is recorded.
        """
        self._check_loop()
        name = model if model is not None else _model_name(result)
        price = None
        if self.prices is not None:
            price = self.prices.get(name)
            if price is None:
                raise InvalidValue(
                    f"no price for model {name!r}",
                    project=self.project.id,
                    path=self.project.path,
                    hint="add it to prices= or pass model= with a name that has a price",
                )
        responses = list(result.raw_responses)
        if not responses:
            return
        conv = await self._find()
        async with self.project.transaction() as tx:
            if conv is None:
                conv = await self._find_or_create(tx)
            for response in responses:
                usage = response.usage
                cost = (
                    Decimal(0)
                    if price is None
                    else price.cost(usage.input_tokens, usage.output_tokens)
                )
                await tx.llm_calls.record(
                    model=name,
                    input_tokens=usage.input_tokens,
                    output_tokens=usage.output_tokens,
                    cost_usd=cost,
                    conversation_id=conv,
                )


def _model_name(result: RunResultBase) -> str:
    model = getattr(result.last_agent, "model", None)
    if isinstance(model, str) and model:
        return model
    name = getattr(model, "model", None)
    if isinstance(name, str) and name:
        return name
    return type(model).__name__ if model is not None else "default"


def _row(item: Any, project: AsyncProjectStore) -> dict[str, str]:
    """Return the message for an item: its JSON text, and its role or type as the role."""
    try:
        content = json.dumps(item, ensure_ascii=False, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise InvalidValue(
            f"a session item cannot be stored as JSON: {type(exc).__name__}",
            project=project.id,
            path=project.path,
            hint="pass the SDK's input items (JSON-compatible dicts); nothing was added",
        ) from exc
    role = "item"
    if isinstance(item, Mapping):
        kind = item.get("role") or item.get("type")
        if isinstance(kind, str) and kind:
            role = kind[:32]
    return {"role": role, "content": content}


_raw_decode = json.JSONDecoder().raw_decode


def _decode(messages: Sequence[Any]) -> list[TResponseInputItem]:
    items: list[TResponseInputItem] = []
    for message in messages:
        content = message.content
        # What add_items wrote is exactly one JSON text: decode it in one C call (this runs for
        # every item read); anything else takes json.loads' general path.
        try:
            item, end = _raw_decode(content)
        except ValueError:
            end = -1
        if end != len(content):
            try:
                item = json.loads(content)
            except ValueError:
                continue  # not an item: a message someone else appended to the conversation
        items.append(item)
    return items
