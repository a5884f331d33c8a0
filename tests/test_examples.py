"""The examples in examples/, run as a user runs them: real processes on real files."""

from __future__ import annotations

import asyncio
import json
import os
import select
import signal
import sqlite3
import subprocess
import sys
import time
from decimal import Decimal
from pathlib import Path

from demiarch_store import Store, StoreConfig

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
TIMEOUT = 120


def run_example(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(EXAMPLES / args[0]), *args[1:]],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        env={**os.environ, "COLUMNS": "100"},
    )


def test_agent_runtime_commits_every_turn_with_its_call_and_checkpoint(tmp_path: Path) -> None:
    projects_dir = tmp_path / "projects"
    out = run_example("agent_runtime.py", str(projects_dir))
    assert out.returncode == 0, out.stderr
    assert "conversation 'build a todo app': 21 messages" in out.stdout
    assert "Agent run summary" in out.stdout

    async def read_back() -> tuple[int, int, Decimal, dict[str, int]]:
        async with Store(StoreConfig(projects_dir=projects_dir)) as store:
            [info] = await store.list_projects()
            project = await store.open_project(info.id)
            async with project.read() as r:
                agents = await r.agents.list()
                per_run = {a.name: len(await r.checkpoints.list(a.id)) for a in agents}
                return (
                    await r.llm_calls.count(),
                    len(agents),
                    await r.llm_calls.total_cost(),
                    per_run,
                )

    calls, agents, total, checkpoints = asyncio.run(read_back())
    assert calls == 20 and agents == 4
    assert checkpoints == {"planner": 5, "coder": 5, "reviewer": 5, "tester": 5}
    summary = out.stdout[out.stdout.index("Agent run summary") :]
    total_line = next(line for line in summary.splitlines() if line.strip().startswith("total"))
    assert total_line.split()[-1] == str(total)  # the summary prints the exact Decimal


def _read_line(proc: subprocess.Popen[str], deadline: float) -> str:
    assert proc.stdout is not None
    while time.monotonic() < deadline:
        ready, _, _ = select.select([proc.stdout], [], [], 1.0)
        if ready:
            return proc.stdout.readline()
    raise AssertionError("the run printed nothing in time")


def test_resume_run_after_sigkill_continues_from_the_latest_checkpoint(tmp_path: Path) -> None:
    projects_dir = tmp_path / "projects"
    script = str(EXAMPLES / "resume_run.py")
    child = subprocess.Popen(
        [sys.executable, script, str(projects_dir), "--steps", "12", "--delay", "0.2"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        bufsize=1,
    )
    seen: list[str] = []
    try:
        deadline = time.monotonic() + TIMEOUT
        while not any(line.startswith("step 3 committed") for line in seen):
            line = _read_line(child, deadline)
            assert line, (
                f"the run ended early: {seen} {child.stderr.read() if child.stderr else ''}"
            )
            seen.append(line)
        child.send_signal(signal.SIGKILL)  # no cleanup, no atexit: the process just stops
        assert child.wait(timeout=TIMEOUT) == -signal.SIGKILL
    finally:
        if child.poll() is None:
            child.kill()
            child.wait(timeout=TIMEOUT)
        for stream in (child.stdout, child.stderr):
            if stream is not None:
                stream.close()
    assert seen[0].startswith("starting run nightly-refactor")

    resumed = run_example("resume_run.py", str(projects_dir), "--steps", "12", "--delay", "0")
    assert resumed.returncode == 0, resumed.stderr
    first = resumed.stdout.splitlines()[0]
    assert first.startswith("resuming run nightly-refactor from checkpoint ")
    after = int(first.rsplit(" ", 1)[1])
    assert after >= 3  # at least every step it reported before the kill
    steps = [line for line in resumed.stdout.splitlines() if line.endswith(" committed")]
    assert steps == [f"step {n} committed" for n in range(after + 1, 13)]
    assert "run nightly-refactor complete: 12 steps, each done once" in resumed.stdout

    db = projects_dir / "resume-demo" / "database.sqlite"
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
        contents = [r[0] for r in conn.execute("SELECT content FROM messages ORDER BY id")]
        calls = conn.execute("SELECT count(*) FROM llm_calls").fetchone()[0]
        state = conn.execute("SELECT state FROM checkpoints ORDER BY id DESC LIMIT 1").fetchone()
    conn.close()
    assert contents == [f"step {n} done" for n in range(1, 13)]
    assert calls == 12
    assert json.loads(state[0])["step"] == 12


def test_cost_report_over_sample_projects() -> None:
    out = run_example("cost_report.py")
    assert out.returncode == 0, out.stderr
    assert "LLM costs per project" in out.stdout
    total = next(line for line in out.stdout.splitlines() if "all projects" in line)
    assert total.split()[-4:] == ["53", "80,500", "16,440", "0.229679"]
    assert "gpt-x: 16 calls, 0.221 USD" in out.stdout
    assert "gpt-x-mini: 37 calls, 0.008679 USD" in out.stdout


def test_cost_report_skips_a_damaged_project_and_filters_by_date(tmp_path: Path) -> None:
    projects_dir = tmp_path / "projects"

    async def seed() -> str:
        async with Store(StoreConfig(projects_dir=projects_dir)) as store:
            project = await store.create_project(name="spender")
            async with project.transaction() as tx:
                await tx.llm_calls.record(model="m", cost_usd=Decimal("1.5"), input_tokens=10)
            damaged = await store.create_project(name="damaged")
            return damaged.id

    damaged = asyncio.run(seed())
    (projects_dir / damaged / "database.sqlite").write_bytes(b"garbage" * 1000)
    out = run_example("cost_report.py", str(projects_dir))
    assert out.returncode == 0, out.stderr
    assert "spender" in out.stdout and "1.5" in out.stdout
    assert f"skipped {damaged}" in out.stdout
    later = run_example("cost_report.py", str(projects_dir), "--since", "2999-01-01")
    assert later.returncode == 0, later.stderr
    total = next(line for line in later.stdout.splitlines() if "all projects" in line)
    assert total.split()[-1] == "0"
