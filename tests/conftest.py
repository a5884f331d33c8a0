"""Shared fixtures: every database lives under tmp_path; every store is closed."""

from __future__ import annotations

import os
import secrets
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

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


# -- PostgreSQL -----------------------------------------------------------------------------------
# The engine-parametrized fixture `engine_config` runs a test on SQLite and on PostgreSQL. The
# server is DEMIARCH_TEST_DATABASE_URL (default: the local one); each test session gets a fresh
# database of its own, dropped at the end. Without a server, the PostgreSQL cases are not
# collected and one line says so; with CI=true, test_postgres.py fails instead.

PG_ADMIN_URL = os.environ.get(
    "DEMIARCH_TEST_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
)
_PG: dict[str, str | None] = {}


def _pg_reachable() -> str | None:
    """Return why the server cannot be used, or None if it can (asked once a session)."""
    if "why" not in _PG:
        try:
            import psycopg

            with psycopg.connect(PG_ADMIN_URL, connect_timeout=3, autocommit=True):
                pass
            _PG["why"] = None
        except Exception as exc:
            _PG["why"] = f"{type(exc).__name__}: {str(exc).strip().splitlines()[0][:120]}"
    return _PG["why"]


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    def needs_server(item: pytest.Item) -> bool:
        return "[postgresql" in item.nodeid or item.nodeid.startswith("tests/test_postgres")

    if not any(needs_server(item) for item in items):
        return
    if _pg_reachable() is None or os.environ.get("CI", "") == "true":
        return
    config.hook.pytest_deselected(items=[item for item in items if needs_server(item)])
    items[:] = [item for item in items if not needs_server(item)]


def pytest_terminal_summary(terminalreporter: Any) -> None:
    why = _PG.get("why")
    if why is not None and os.environ.get("CI", "") != "true":
        terminalreporter.write_line(
            f"The PostgreSQL suite did not run: no server at {PG_ADMIN_URL} ({why}); "
            "set DEMIARCH_TEST_DATABASE_URL=postgresql://user@host:5432/dbname to run it."
        )


@pytest.fixture(scope="session")
def pg_database_url() -> Iterator[str]:
    """A fresh database for this test session (created, then dropped), as a URL."""
    why = _pg_reachable()
    if why is not None:
        pytest.fail(f"the PostgreSQL server at {PG_ADMIN_URL} cannot be reached: {why}")
    import psycopg
    from psycopg.conninfo import conninfo_to_dict

    name = f"demiarch_test_{os.getpid()}_{secrets.token_hex(3)}"
    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    params = conninfo_to_dict(PG_ADMIN_URL)
    params["dbname"] = name
    try:
        yield _url(params)
    finally:
        with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _url(params: dict[str, Any]) -> str:
    user = params.get("user", "")
    host = params.get("host", "127.0.0.1")
    port = params.get("port", 5432)
    password = f":{params['password']}" if params.get("password") else ""
    return f"postgresql://{user}{password}@{host}:{port}/{params['dbname']}"


@pytest.fixture(params=["sqlite", "postgresql"])
def engine_config(request: pytest.FixtureRequest, tmp_path: Path) -> StoreConfig:
    """The test's StoreConfig on each engine (fresh project IDs on a per-session database)."""
    url = request.getfixturevalue("pg_database_url") if request.param == "postgresql" else None
    return StoreConfig(
        projects_dir=tmp_path / "projects",
        busy_deadline=2.0,
        acquire_timeout=5.0,
        database_url=url,
    )
