"""Every Python example in README.md and docs/ runs, and prints what the page shows.

The whole convention, for anyone adding an example to a page:

1. A ```` ```python ```` block followed by a line ``Output:`` (or ``Output (any note):``) and a
   fenced block: the test runs the python block as a script and compares what it printed with
   the fenced block.
2. The same, with the note naming an example file: ``Output (`python examples/NAME.py ARGS`):``.
   The test runs that file (with ARGS) instead, and checks that the python block is an excerpt
   of it: its lines appear in the file in the same order (a line ``...``, perhaps with a
   comment, skips any lines).
3. Any other ```` ```python ```` block runs as a script and must exit 0, except:
4. A block right after a line ``<!-- fragment -->`` (a line or two that cannot run alone, such
   as "switching a graph over is one line") is only compiled; it may hold at most
   ``FRAGMENT_LINES`` lines, so that a real example cannot hide behind the marker.
5. A block right after a line ``<!-- checked by tests/test_NAME.py -->`` is run and checked by
   that test, which must exist and name the page (the same marker works for console blocks in
   tests/test_docs_transcripts.py).

A script runs in a fresh temporary directory (its working directory, and ``DEMIARCH_HOME``
inside it, so nothing touches ``~/.demiarch``), with stderr merged into stdout as a terminal
shows them, and ``COLUMNS=100`` for Rich tables. Before comparing, both sides are normalised:
temporary directories, project and record IDs, dates, times and durations in milliseconds
become placeholders. In the shown output a line ``...`` stands for any number of printed lines.

When the output changes on purpose (a new revision, a new message), rewrite the pages from a
real run: ``DEMIARCH_UPDATE_DOCS=1 .venv/bin/python -m pytest tests/test_docs_examples.py
tests/test_docs_transcripts.py`` replaces every shown output that no longer matches with what
the example printed (an output that still matches, ``...`` and all, is left alone); then read
the diff.
"""

from __future__ import annotations

import ast
import functools
import os
import re
import shlex
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
UPDATE = os.environ.get("DEMIARCH_UPDATE_DOCS") == "1"
MARKER = re.compile(r"<!-- (?P<kind>fragment|checked by (?P<test>tests/test_\w+\.py)) -->")
FRAGMENT_LINES = 10
OUTPUT_LINE = re.compile(r"Output(?: \((?P<note>.*)\))?:")
EXAMPLE_FILE = re.compile(r"`python (?P<cmd>examples/[\w.-]+\.py[^`]*)`")

# Applied in order to what a script printed and to what a page shows.
VOLATILE = [
    (re.compile(r"/tmp/tmp\w+"), "TMP"),
    (re.compile(r"\b01[0-9a-z]{14}(?:[0-9a-z]{10})?\b"), "ID"),
    (re.compile(r"\b\d{8}T\d{6}Z(?:-[0-9a-z]{6})?\b"), "TIMESTAMP"),
    (re.compile(r"\b\d{4}-\d\d-\d\d\b"), "DATE"),
    (re.compile(r"\b\d\d:\d\d(?::\d\d(?:\.\d+)?)?\b"), "TIME"),
    (re.compile(r"\b\d+(?:\.\d+)? ?ms\b"), "Nms"),
]


@dataclass(frozen=True)
class Example:
    page: Path
    line: int
    code: str
    shown: str | None  # the fenced output after "Output:", if any
    command: str | None  # "examples/NAME.py ARGS" when the output is that file's
    marker: re.Match[str] | None = None  # <!-- fragment --> or <!-- checked by ... -->

    @property
    def id(self) -> str:
        return f"{self.page.relative_to(ROOT)}:{self.line}"


def _fences(text: str) -> list[tuple[str, str, int, int]]:
    """Return (language, body, first line, line after the closing fence) of each fence."""
    lines = text.splitlines()
    out: list[tuple[str, str, int, int]] = []
    i = 0
    while i < len(lines):
        if lines[i].startswith("```"):
            lang, start = lines[i][3:].strip(), i
            i += 1
            while i < len(lines) and lines[i] != "```":
                i += 1
            out.append((lang, "\n".join(lines[start + 1 : i]) + "\n", start + 1, i + 1))
        i += 1
    return out


def collect(page: Path) -> list[Example]:
    """Return the python examples of one page, each with the output it shows, if any."""
    text = page.read_text()
    lines = text.splitlines()
    fences = _fences(text)
    examples = []
    for n, (lang, body, first, after) in enumerate(fences):
        if lang != "python":
            continue
        rest = [i for i in range(after, len(lines)) if lines[i].strip()]
        label = OUTPUT_LINE.fullmatch(lines[rest[0]].strip()) if rest else None
        shown = command = None
        if label:
            following = fences[n + 1] if n + 1 < len(fences) else None
            assert following and following[2] == rest[1] + 1, (
                f"{page.name}:{first}: 'Output:' must be followed by a fenced block"
            )
            shown = following[1]
            named = EXAMPLE_FILE.search(label.group("note") or "")
            command = named.group("cmd").strip() if named else None
        before = [i for i in range(first - 2, -1, -1) if lines[i].strip()]
        marker = MARKER.fullmatch(lines[before[0]].strip()) if before else None
        examples.append(Example(page, first, body, shown, command, marker))
    return examples


def check_delegated(page: Path, test_file: str) -> None:
    """A block another test runs: that test must exist and name the page."""
    test = ROOT / test_file
    assert test.is_file() and page.name in test.read_text(), (
        f"{page.name}: {test_file} does not exist or does not name {page.name}"
    )


EXAMPLES = [example for page in PAGES for example in collect(page)]


def normalise(text: str) -> list[str]:
    for pattern, placeholder in VOLATILE:
        text = pattern.sub(placeholder, text)
    return [line.rstrip() for line in text.strip("\n").splitlines()]


def matches(printed: list[str], shown: list[str]) -> bool:
    """Whether ``printed`` is ``shown``, a ``...`` line of ``shown`` standing for any lines."""
    pattern = "".join(
        r"(?:[^\n]*\n)*?" if line.strip() == "..." else re.escape(line) + r"\n" for line in shown
    )
    return re.fullmatch(pattern, "".join(f"{line}\n" for line in printed)) is not None


def is_excerpt(code: str, source: str) -> bool:
    """Whether every line of ``code`` appears in ``source``, in order (``...`` skips lines)."""
    skip = re.compile(r"\s*(\.\.\.\s*(#.*)?)?")
    wanted = [line.rstrip() for line in code.splitlines() if not skip.fullmatch(line)]
    have = iter(line.rstrip() for line in source.splitlines())
    return all(any(line == got for got in have) for line in wanted)


@functools.cache
def run_file(command: str) -> str:
    """Run ``examples/NAME.py ARGS`` once for every page that shows its output."""
    with tempfile.TemporaryDirectory() as tmp:
        return run(Example(ROOT / command, 0, "", None, command), Path(tmp))


def run(example: Example, cwd: Path) -> str:
    env = {
        **os.environ,
        "COLUMNS": "100",
        "PYTHONUNBUFFERED": "1",
        "DEMIARCH_HOME": str(cwd / "demiarch-home"),
        "OPENAI_AGENTS_DISABLE_TRACING": "1",  # offline: the Agents SDK would export traces
    }
    if example.command:
        script, *args = shlex.split(example.command)
        argv = [sys.executable, str(ROOT / script), *args]
    else:
        argv = [sys.executable, "-c", example.code]
    done = subprocess.run(
        argv,
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, f"{example.id} failed:\n{done.stdout}"
    return done.stdout.replace(str(cwd), "/tmp/tmpcwd")  # normalised as any temporary directory


def test_the_pages_hold_examples_with_output() -> None:
    # A change to the convention that silently finds nothing would pass every test below.
    assert len(EXAMPLES) >= 8
    assert sum(e.shown is not None for e in EXAMPLES) >= 6
    assert any(e.command for e in EXAMPLES)


@pytest.mark.parametrize("example", EXAMPLES, ids=lambda e: e.id)
def test_example_runs_and_prints_what_the_page_shows(example: Example, tmp_path: Path) -> None:
    if example.marker and example.marker.group("kind") == "fragment":
        assert len(example.code.splitlines()) <= FRAGMENT_LINES, f"{example.id}: too long"
        compile(example.code, example.id, "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)
        return
    if example.marker and example.marker.group("test"):
        check_delegated(example.page, example.marker.group("test"))
        return
    if example.command:
        source = (ROOT / shlex.split(example.command)[0]).read_text()
        assert is_excerpt(example.code, source), (
            f"{example.id}: the code shown is not an excerpt of {example.command}"
        )
    printed = run_file(example.command) if example.command else run(example, tmp_path)
    if example.shown is not None:
        got, want = normalise(printed), normalise(example.shown)
        if UPDATE and not matches(got, want):
            _rewrite_output(example, printed)
            return
        assert matches(got, want), (
            f"{example.id} printed:\n" + "\n".join(got) + "\n\nthe page shows:\n" + "\n".join(want)
        )


def test_matching_is_strict() -> None:
    assert matches(["a", "b", "c"], ["a", "...", "c"])
    assert matches(["a", "c"], ["a", "...", "c"])
    assert not matches(["a", "b"], ["a", "c"])
    assert not matches(["a", "b", "c"], ["a", "b"])
    assert normalise("01m80aj8jp72myr8 at /tmp/tmpab_c1/x 0.10ms 2026-11-22") == [
        "ID at TMP/x Nms DATE"
    ]
    assert is_excerpt("a\n...  # b\nc\n", "a\nb\nc\n")
    assert not is_excerpt("c\na\n", "a\nb\nc\n") and not is_excerpt("a\nd\n", "a\nb\nc\n")


def _rewrite_output(example: Example, printed: str) -> None:
    """Put what the example printed in place of the output its page shows (DEMIARCH_UPDATE_DOCS)."""
    assert example.shown is not None
    text = example.page.read_text()
    at = text.index("\n" + example.shown, text.index(example.code)) + 1
    new = "".join(line.rstrip() + "\n" for line in printed.strip("\n").splitlines())
    example.page.write_text(text[:at] + new + text[at + len(example.shown) :])


def test_markers_apply_to_the_next_block_only(tmp_path: Path) -> None:
    page = tmp_path / "page.md"
    page.write_text(
        "<!-- fragment -->\n\n```python\ngraph = builder.compile()\n```\n\n"
        "<!-- checked by tests/test_docs_examples.py -->\n```python\nprint(2)\n```\n\n"
        "```python\nprint(3)\n```\n\nOutput:\n\n```text\n3\n```\n"
    )
    fragment, delegated, plain = collect(page)
    assert fragment.marker and fragment.marker.group("kind") == "fragment"
    assert delegated.marker and delegated.marker.group("test") == "tests/test_docs_examples.py"
    assert plain.marker is None and plain.shown == "3\n"
    with pytest.raises(AssertionError):  # that test does not name the page
        check_delegated(page, "tests/test_cli_help.py")
