"""The framework session examples, run as a user runs them: real processes, real files."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def run_example(name: str) -> str:
    out = subprocess.run(
        [sys.executable, str(EXAMPLES / name)],
        capture_output=True,
        text=True,
        timeout=180,
        env={**os.environ, "OPENAI_AGENTS_DISABLE_TRACING": "1"},
    )
    assert out.returncode == 0, out.stderr
    assert out.stderr == "", out.stderr
    return out.stdout


def test_openai_agents_session_example() -> None:
    out = run_example("openai_agents_session.py")
    assert "> What is the weather in Paris?\nIt is sunny in Paris.\n" in out
    assert "This session holds 4 earlier items." in out
    assert "conversation 'openai-agents session user-42': 6 messages" in out
    roles = [line.split()[0] for line in out.splitlines() if line.startswith("  ")]
    assert roles == [
        "user", "function_call", "function_call_output", "assistant", "user", "assistant"
    ]  # fmt: skip
    assert "messages mentioning Paris: 4" in out
    assert "model calls: 3 cost: 0.0114" in out  # 3 x (1200 x 2.50 + 80 x 10.00) / 1e6, exact
    assert out.endswith("last item popped: assistant\nitems left: 5\n")


def test_adk_session_example() -> None:
    out = run_example("adk_session.py")
    assert "> What is the weather in Paris?\nIt is sunny in Paris.\n" in out
    assert "I remember 4 earlier turns." in out
    assert "events: 6 state: {'topic': 'weather', 'user:language': 'en'}" in out
    assert "a new session of the same user sees: {'user:language': 'en'}" in out
    assert "conversation first: 6 messages ['user', 'assistant', 'assistant', 'assistant'" in out
    assert "conversation second: 0 messages []" in out


def shown_in_readme(example: str) -> str:
    """The output docs/integrations.md shows after its mention of ``example``."""
    readme = (EXAMPLES.parent / "docs" / "integrations.md").read_text()
    after = readme[readme.index(f"`examples/{example}` (run by") :]
    return after[after.index("```text\n") + 8 : after.index("```\n", after.index("```text\n") + 8)]


def test_the_readme_shows_the_examples_real_output() -> None:
    for example in ("openai_agents_session.py", "adk_session.py"):
        assert run_example(example) == shown_in_readme(example)
