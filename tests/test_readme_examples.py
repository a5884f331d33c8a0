"""Runnable sections of README.md or of a docs page, named by their heading, run on real files
and print what the page shows.

tests/test_docs_examples.py runs every example of README.md and docs/ by itself; ``_run_section``
serves tests that name a section, and finds it (by its heading's text, whatever its level) in
README.md or, once it has moved there, in a docs page.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

README = Path(__file__).resolve().parent.parent / "README.md"
PAGES = [README, *sorted((README.parent / "docs").glob("*.md"))]


def _run_section(heading: str, output_fence: str, cwd: Path) -> tuple[str, str]:
    """Run the first python block after ``heading``; return (what it printed, what is shown)."""
    title = re.escape(heading.lstrip("#").strip())
    for page in PAGES:
        text = page.read_text()
        found = re.search(rf"^#+ {title}$", text, re.M)
        if found:
            break
    else:
        raise AssertionError(f"no page of README.md or docs/ has the heading {heading!r}")
    section = text[found.start() :]
    code = re.search(r"```python\n(.*?)```", section, re.S)
    shown = re.search(rf"Output:\n\n{re.escape(output_fence)}\n(.*?)```", section, re.S)
    assert code and shown
    done = subprocess.run(
        [sys.executable, "-c", code.group(1)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=cwd,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout, shown.group(1)


def test_readme_cost_tracking_example_runs_as_shown(tmp_path: Path) -> None:
    printed, shown = _run_section("## Schema, repositories and cost tracking", "```", tmp_path)

    def today_free(out: str) -> str:
        return re.sub(r"day \d{4}-\d\d-\d\d", "day DATE", out)

    assert today_free(printed) == today_free(shown)


def test_readme_retention_example_runs_as_shown(tmp_path: Path) -> None:
    printed, shown = _run_section("### Retention", "```text", tmp_path)
    assert printed == shown


def test_readme_consistency_example_runs_as_shown(tmp_path: Path) -> None:
    printed, shown = _run_section("## Consistency", "```text", tmp_path)
    assert printed == shown
