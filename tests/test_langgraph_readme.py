"""The LangGraph section of docs/integrations.md runs on a real projects directory and prints
what it shows."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

PAGE = Path(__file__).resolve().parent.parent / "docs" / "integrations.md"


def test_the_langgraph_section_runs_as_shown(tmp_path: Path) -> None:
    text = PAGE.read_text()
    section = text[text.index("## LangGraph") :]
    section = section[: section.index("\n## ", 1)]
    assert "checkpointer=DemiarchSaver(project), store=DemiarchStore(project))" in section
    blocks = re.findall(r"```python\n(.*?)```", section, re.S)
    code = next(b for b in blocks if "asyncio.run" in b)
    shown = re.search(r"Output:\n\n```text\n(.*?)```", section, re.S)
    assert shown
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=tmp_path
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout == shown.group(1)
    # The thread it ran is what `demiarch-store show` lists, as the page shows.
    console = re.search(r"```console\n\$ demiarch-store (.*?)\n(.*?)```", section, re.S)
    assert console
    out = subprocess.run(
        [sys.executable, "-m", "demiarch_store", *console.group(1).split()],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
        env={**os.environ, "COLUMNS": "100"},
    )
    assert out.returncode == 0, out.stderr

    def thread_rows(output: str) -> list[list[str]]:
        return [line.split() for line in output.splitlines() if line.startswith("alice-1")]

    (ran,) = thread_rows(out.stdout)
    (readme,) = thread_rows(console.group(2))
    assert ran[:2] == readme[:2] and ran[-1] == readme[-1]  # thread, checkpoints, latest step
