"""Frozen rows: what repositories return. Field order matches the table's columns."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

__all__ = [
    "Agent",
    "AgentSession",
    "AgentState",
    "CheckpointRecord",
    "CodeArtifact",
    "Conversation",
    "CostTotal",
    "GraphBlob",
    "GraphCheckpoint",
    "GraphThread",
    "GraphWrite",
    "LLMCall",
    "MemoryItem",
    "MemoryVector",
    "Message",
    "Plugin",
    "ProjectRecord",
    "SessionRecord",
    "Skill",
]

JSONValue = Any


@dataclass(frozen=True, slots=True)
class ProjectRecord:
    """This project's own metadata (the one row of its ``projects`` table)."""

    id: str
    name: str
    description: str | None
    config: JSONValue
    created_at: datetime
    updated_at: datetime


@dataclass(frozen=True, slots=True)
class Conversation:
    """A conversation: an ordered list of messages."""

    id: str
    title: str | None
    meta: JSONValue
    created_at: datetime
    updated_at: datetime


@dataclass(frozen=True, slots=True)
class Message:
    """One message of a conversation; IDs sort in the order messages were appended."""

    id: str
    conversation_id: str
    role: str
    content: str
    meta: JSONValue
    created_at: datetime


@dataclass(frozen=True, slots=True)
class Agent:
    """An agent: its configuration, its status and the state it resumes from."""

    id: str
    name: str
    role: str | None
    status: str
    config: JSONValue
    state: JSONValue
    created_at: datetime
    updated_at: datetime


@dataclass(frozen=True, slots=True)
class Skill:
    """A learned skill and its record of uses (``tags`` are in ``skill_tags``)."""

    id: str
    name: str
    description: str | None
    definition: JSONValue
    agent_id: str | None
    uses: int
    successes: int
    failures: int
    last_used_at: datetime | None
    created_at: datetime
    updated_at: datetime


@dataclass(frozen=True, slots=True)
class CodeArtifact:
    """One version of a generated file; ``content_hash`` is the SHA-256 of the UTF-8 content."""

    id: str
    path: str
    version: int
    language: str | None
    content: str
    content_hash: str
    agent_id: str | None
    conversation_id: str | None
    meta: JSONValue
    created_at: datetime


@dataclass(frozen=True, slots=True)
class LLMCall:
    """One LLM API call: tokens, exact cost in USD, latency and outcome."""

    id: str
    provider: str | None
    model: str
    input_tokens: int
    output_tokens: int
    cost_usd: Decimal
    latency_ms: int | None
    status: str
    error: str | None
    agent_id: str | None
    conversation_id: str | None
    created_at: datetime


@dataclass(frozen=True, slots=True)
class CostTotal:
    """LLM calls summed over one group.

    ``key`` is the model, agent ID or conversation ID (``None`` for calls without one), or the
    UTC day as ``YYYY-MM-DD``.
    """

    key: str | None
    calls: int
    input_tokens: int
    output_tokens: int
    cost_usd: Decimal


@dataclass(frozen=True, slots=True)
class CheckpointRecord:
    """A saved state of a run; ``parent_id`` links it to the checkpoint it follows."""

    id: str
    run_id: str
    parent_id: str | None
    state: bytes
    state_hash: str
    meta: JSONValue
    created_at: datetime


@dataclass(frozen=True, slots=True)
class Plugin:
    """An installed plugin, enabled or not, with its JSON config and state."""

    id: str
    name: str
    version: str | None
    enabled: bool
    config: JSONValue
    state: JSONValue
    installed_at: datetime
    updated_at: datetime


@dataclass(frozen=True, slots=True)
class SessionRecord:
    """A user session; active while ``ended_at`` is ``None``."""

    id: str
    user_id: str | None
    agent_id: str | None
    meta: JSONValue
    started_at: datetime
    last_active_at: datetime
    ended_at: datetime | None


@dataclass(frozen=True, slots=True)
class GraphCheckpoint:
    """A LangGraph checkpoint: the serialized checkpoint without its channel values."""

    thread_id: str
    checkpoint_ns: str
    checkpoint_id: str
    parent_checkpoint_id: str | None
    run_id: str | None
    step: int | None
    checkpoint_type: str
    checkpoint: bytes
    metadata: JSONValue
    channel_versions: JSONValue
    created_at: datetime


@dataclass(frozen=True, slots=True)
class GraphBlob:
    """One version of a LangGraph channel's value (``value`` is ``None`` for an empty channel)."""

    thread_id: str
    checkpoint_ns: str
    channel: str
    version: str
    value_type: str
    value: bytes | None


@dataclass(frozen=True, slots=True)
class GraphWrite:
    """A LangGraph pending write: a task's write to a channel, after a checkpoint."""

    thread_id: str
    checkpoint_ns: str
    checkpoint_id: str
    task_id: str
    idx: int
    channel: str
    task_path: str
    value_type: str
    value: bytes | None


@dataclass(frozen=True, slots=True)
class GraphThread:
    """A LangGraph thread at a glance: its checkpoints, their stored size and latest step."""

    thread_id: str
    checkpoints: int
    size_bytes: int
    latest_step: int | None
    latest_checkpoint_id: str


@dataclass(frozen=True, slots=True)
class MemoryItem:
    """A long-term memory document: a JSON value under a namespace and key."""

    namespace: str
    key: str
    value: JSONValue
    created_at: datetime
    updated_at: datetime
    expires_at: datetime | None
    ttl_minutes: float | None


@dataclass(frozen=True, slots=True)
class MemoryVector:
    """The embedding of one field of a memory item (float32, little-endian)."""

    namespace: str
    key: str
    field: str
    embedding: bytes


@dataclass(frozen=True, slots=True)
class AgentSession:
    """An agent framework's session (OpenAI Agents SDK, Google ADK): one conversation.

    ``framework`` with ``app_name``, ``user_id`` and ``session_id`` is the framework's key for
    it (the Agents SDK uses ``""`` for the app and the user); the session's items or events are
    the messages of ``conversation_id``.
    """

    id: str
    framework: str
    app_name: str
    user_id: str
    session_id: str
    conversation_id: str
    state: JSONValue
    created_at: datetime
    updated_at: datetime


@dataclass(frozen=True, slots=True)
class AgentState:
    """State an agent framework shares between sessions: an app's or one user's in an app."""

    id: str
    framework: str
    scope: str
    app_name: str
    user_id: str
    state: JSONValue
    updated_at: datetime
