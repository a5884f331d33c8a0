"""A pytest plugin: the Agents SDK's own session tests, run against ``DemiarchSession``.

``tests/test_openai_agents_sdk_suite.py`` runs the SDK's test files (from its source
distribution, at test time) in a child pytest with ``-p sdk_session_harness``. Loaded before
the SDK's tests are imported, this plugin puts ``HarnessSession`` where they import
``SQLiteSession`` from: every session they build is then a ``DemiarchSession`` on a project.

The SDK's tests call sessions from several event loops (``Runner.run_sync`` runs on a thread
of its own), and a project serves the loop it was opened on. So the projects live on one
event loop in a thread of this plugin, and each call of a session is handed to that loop.
A test's ``db_path`` names its project (sessions on one path share one project, as sessions on
one SQLite file share it); ``":memory:"`` gets a project of its own.
"""

from __future__ import annotations

import asyncio
import os
import tempfile
import threading
from collections.abc import Coroutine
from pathlib import Path
from typing import Any, TypeVar

import agents
import agents.memory
import pytest

from demiarch_store import AsyncProjectStore
from demiarch_store.integrations.openai_agents import DemiarchSession

T = TypeVar("T")
_TIMEOUT = 60.0


class _Home:
    """The event loop, in a thread, that the harness's projects are opened on and serve."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.projects: dict[str, AsyncProjectStore] = {}
        self.root = Path(tempfile.mkdtemp(prefix="sdk-harness-"))
        self.constructed = 0
        self.tests: set[str] = set()

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run ``coro`` on the home loop and wait (from a thread that is not the home loop's)."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(_TIMEOUT)

    async def call(self, coro: Coroutine[Any, Any, T]) -> T:
        """Await ``coro`` on the home loop, from any event loop."""
        future = asyncio.run_coroutine_threadsafe(coro, self.loop)
        return await asyncio.wait_for(asyncio.wrap_future(future), _TIMEOUT)

    def project(self, db_path: str | Path) -> AsyncProjectStore:
        if str(db_path) == ":memory:":
            path = Path(tempfile.mkdtemp(dir=self.root)) / "database.sqlite"
        else:
            path = Path(f"{db_path}.demiarch.sqlite")
        key = str(path.resolve())
        if key not in self.projects:
            self.projects[key] = self.run(AsyncProjectStore(path).open())
        return self.projects[key]

    def close(self) -> None:
        async def close_all() -> None:
            for project in self.projects.values():
                await project.close()

        self.run(close_all())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(_TIMEOUT)
        self.loop.close()


HOME = _Home()


class HarnessSession:
    """What the SDK's tests get for ``SQLiteSession(...)``: a ``DemiarchSession``, called on
    the loop its project serves. The table names only SQLiteSession has are ignored."""

    def __init__(
        self,
        session_id: str,
        db_path: str | Path = ":memory:",
        sessions_table: str = "agent_sessions",
        messages_table: str = "agent_messages",
        session_settings: Any = None,
    ) -> None:
        self.inner = DemiarchSession(
            session_id, HOME.project(db_path), session_settings=session_settings
        )
        HOME.constructed += 1
        HOME.tests.add(os.environ.get("PYTEST_CURRENT_TEST", "?").rsplit(" (", 1)[0])

    @property
    def session_id(self) -> str:
        return self.inner.session_id

    @property
    def session_settings(self) -> Any:
        return self.inner.session_settings

    @session_settings.setter
    def session_settings(self, value: Any) -> None:
        self.inner.session_settings = value

    async def get_items(self, limit: int | None = None) -> list[Any]:
        return await HOME.call(self.inner.get_items(limit))

    async def add_items(self, items: list[Any]) -> None:
        await HOME.call(self.inner.add_items(items))

    async def pop_item(self) -> Any:
        return await HOME.call(self.inner.pop_item())

    async def clear_session(self) -> None:
        await HOME.call(self.inner.clear_session())

    def close(self) -> None:
        """SQLiteSession's close: the project is the harness's, closed when the run ends."""


# Before any test module imports it: `from agents import SQLiteSession` finds ours.
agents.SQLiteSession = HarnessSession  # type: ignore[misc,assignment]
agents.memory.SQLiteSession = HarnessSession  # type: ignore[misc,assignment]


def pytest_unconfigure(config: pytest.Config) -> None:
    report = os.environ.get("DEMIARCH_HARNESS_REPORT")
    HOME.close()
    if report:
        lines = [f"{HOME.constructed} {len(HOME.projects)}", *sorted(HOME.tests)]
        Path(report).write_text("\n".join(lines) + "\n")
