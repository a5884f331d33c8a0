"""The README's schema section runs and prints what it shows."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

README = Path(__file__).resolve().parent.parent / "README.md"
HEADING = "## Schema, repositories and cost tracking"


def test_readme_cost_tracking_example_runs_as_shown(tmp_path: Path) -> None:
    text = README.read_text()
    section = text[text.index(HEADING) :]
    code = re.search(r"```python\n(.*?)```", section, re.S)
    shown = re.search(r"Output:\n\n```\n(.*?)```", section, re.S)
    assert code and shown
    done = subprocess.run(
        [sys.executable, "-c", code.group(1)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr

    def today_free(out: str) -> str:
        return re.sub(r"day \d{4}-\d\d-\d\d", "day DATE", out)

    assert today_free(done.stdout) == today_free(shown.group(1))
