"""The README's quick start and the demo run as a user would run them."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def test_quickstart_prints_what_the_readme_shows() -> None:
    out = subprocess.run(
        [sys.executable, str(EXAMPLES / "quickstart.py")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[1] == "101 user hello ['tool', 'tool']"
    assert lines[2].startswith("NotFound: no message with id 'no-such-id' (project '")
    assert lines[3].endswith(" my app ok 262144")


def test_demo_writes_every_agent_turn(tmp_path: Path) -> None:
    out = subprocess.run(
        [sys.executable, str(EXAMPLES / "agent_runtime.py"), str(tmp_path / "projects")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    assert "conversation 'build a todo app': 21 messages" in out.stdout
    for agent in ("planner", "coder", "reviewer", "tester"):
        assert out.stdout.count(f"{agent}: step") == 5
