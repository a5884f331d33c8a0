"""Shared fixtures: every database lives under tmp_path; every store is closed."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings

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


# Hypothesis: "ci" keeps `make test` within a few minutes; `make soak` (DEMIARCH_SOAK=1) selects
# "soak": many more examples and longer runs of the same tests. No deadline: the machine is
# shared, and speed belongs in benchmarks/.
SOAK = os.environ.get("DEMIARCH_SOAK", "") not in ("", "0")
settings.register_profile(
    "ci",
    max_examples=30,
    stateful_step_count=6,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
settings.register_profile(
    "medium",
    max_examples=100,
    stateful_step_count=10,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
settings.register_profile(
    "soak",
    max_examples=400,
    stateful_step_count=20,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
settings.load_profile("soak" if SOAK else os.environ.get("HYPOTHESIS_PROFILE", "ci"))
