"""LangGraph's own conformance suite for checkpointers, run against DemiarchSaver on each engine:
a real SQLite file and the real PostgreSQL server (conftest.engine_config)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from langgraph.checkpoint.conformance import checkpointer_test, validate
from langgraph.checkpoint.conformance.capabilities import (
    ALL_CAPABILITIES,
    DetectedCapabilities,
)
from langgraph.checkpoint.conformance.report import ProgressCallbacks

from demiarch_store import Store, StoreConfig
from demiarch_store.integrations.langgraph import DemiarchSaver

pytestmark = pytest.mark.anyio


async def test_every_capability_passes(engine_config: StoreConfig) -> None:
    made: list[str] = []

    @checkpointer_test(name="DemiarchSaver")
    async def demiarch_saver() -> AsyncIterator[DemiarchSaver]:
        # A fresh project per capability suite (a file, or rows on the server), closed when
        # the suite ends.
        async with Store(engine_config) as store:
            project = await store.create_project(name=f"suite-{len(made)}")
            made.append(project.id)
            yield DemiarchSaver(project)

    failures: list[str] = []

    def on_result(capability: str, test: str, passed: bool, error: str | None) -> None:
        if not passed:
            failures.append(f"{capability}.{test}:\n{error}")

    report = await validate(demiarch_saver, progress=ProgressCallbacks(on_test_result=on_result))
    assert not failures, "\n\n".join(failures)
    assert report.conformance_level() == "FULL"
    assert report.passed_all_base() and report.passed_all()
    # Every capability, base and extended, was detected and run (none skipped).
    assert {name for name, r in report.results.items() if r.detected} == {
        c.value for c in ALL_CAPABILITIES
    }
    assert all(r.tests_passed > 0 and r.tests_failed == 0 for r in report.results.values())
    assert len(made) == len(ALL_CAPABILITIES)  # one fresh saver per capability suite
    async with Store(engine_config) as store:
        project = await store.open_project(made[0])
        assert DetectedCapabilities.from_instance(DemiarchSaver(project)).missing == frozenset()
