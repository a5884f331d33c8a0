"""The README's "The projects directory" example runs and prints what the README shows."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_the_example_prints_the_readme_output(tmp_path: Path) -> None:
    out = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "projects_directory.py"), str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("## The projects directory") :]
    section = section[: section.index("\n## ", 1)]
    shown = [
        line
        for block in re.findall(r"```text\n(.*?)```", section, re.S)
        for line in block.splitlines()
    ]
    printed = out.stdout.replace(str(tmp_path), "WORK").splitlines()
    for line in shown:  # every line of output the README shows, its temporary directory aside
        assert re.sub(r"/tmp/tmp\w+", "WORK", line) in printed, line
