"""The README's retention example runs on a real file and prints what the README shows."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

README = Path(__file__).resolve().parent.parent / "README.md"


def test_readme_retention_example_runs_as_shown(tmp_path: Path) -> None:
    text = README.read_text()
    section = text[text.index("### Retention") :]
    code = re.search(r"```python\n(.*?)```", section, re.S)
    shown = re.search(r"Output:\n\n```text\n(.*?)```", section, re.S)
    assert code and shown
    done = subprocess.run(
        [sys.executable, "-c", code.group(1)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout == shown.group(1)
