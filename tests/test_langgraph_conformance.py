"""LangGraph's own conformance suite for checkpointers, run against DemiarchSaver on a real file."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from langgraph.checkpoint.conformance import checkpointer_test, validate
from langgraph.checkpoint.conformance.capabilities import (
    ALL_CAPABILITIES,
    DetectedCapabilities,
)
from langgraph.checkpoint.conformance.report import ProgressCallbacks

from demiarch_store import AsyncProjectStore
from demiarch_store.integrations.langgraph import DemiarchSaver

pytestmark = pytest.mark.anyio


async def test_every_capability_passes(tmp_path: Path) -> None:
    made: list[Path] = []

    @checkpointer_test(name="DemiarchSaver")
    async def demiarch_saver() -> AsyncIterator[DemiarchSaver]:
        # A fresh project file per capability suite, closed when the suite ends.
        path = tmp_path / f"suite-{len(made)}.sqlite"
        made.append(path)
        async with AsyncProjectStore(path) as project:
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
    async with AsyncProjectStore(made[0]) as project:
        assert DetectedCapabilities.from_instance(DemiarchSaver(project)).missing == frozenset()
