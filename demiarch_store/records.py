"""Frozen rows: what repositories return. Field order matches the table's columns."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

__all__ = ["Conversation", "Message", "ProjectRecord"]

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
