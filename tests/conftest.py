"""Shared fixtures: every database lives under tmp_path; every store is closed."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from demiarch_store import AsyncProjectStore, Store, StoreConfig


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def config(tmp_path: Path) -> StoreConfig:
    return StoreConfig(projects_dir=tmp_path / "projects", busy_deadline=2.0, acquire_timeout=5.0)


@pytest.fixture
async def store(config: StoreConfig) -> AsyncIterator[Store]:
    async with Store(config) as s:
        yield s


@pytest.fixture
async def project(store: Store) -> AsyncProjectStore:
    return await store.create_project(name="test project")
