"""The command-line transcripts in docs/ are real: each page's sessions run, and print as shown.

The convention, for anyone adding a transcript to a page:

- A ```` ```console ```` block whose commands all start with ``demiarch-store``,
  ``python examples/`` or ``echo $?`` is a transcript. (Other console blocks, such as
  ``make test``, are instructions and are not run.) Lines starting with ``$ `` are commands;
  the lines up to the next command are what it printed (stdout and stderr, as a terminal shows
  them); ``echo $?`` prints the previous command's exit code.
- All transcripts of one page are one session, run in order in a fresh directory that is both
  the working directory and ``$DEMIARCH_HOME``; the page calls it ``/tmp/rh``.
- A comment ``# answered n`` after a command feeds ``n`` to its question; otherwise its input is
  empty (which answers "no").
- A console block right after a line ``<!-- checked by tests/test_NAME.py -->`` is left to that
  test, which must exist and name the page.
- ``<!-- setup: COMMAND -->`` on its own lines runs COMMAND (bash) at that point of the session
  without showing it, to prepare what the prose describes (a damaged file, an old database).
- Output is compared as in tests/test_docs_examples.py (IDs, dates, times, temporary
  directories normalised; a ``...`` line stands for any lines), and also sizes (``176.0 KiB``).
  A project ID the page shows stands for the ID the session really made, in later commands too.

When the command line's output changes on purpose, rewrite the pages from a real run:
``DEMIARCH_UPDATE_DOCS=1 .venv/bin/python -m pytest tests/test_docs_transcripts.py``
rewrites the output of every command that no longer prints what its page shows (with the
page's IDs kept; a ``...`` elision in such an output is replaced by the full output), then
read the diff.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from demiarch_store.cli import PROG, main

ROOT = Path(__file__).resolve().parent.parent
SHOWN_HOME = "/tmp/rh"
UPDATE = os.environ.get("DEMIARCH_UPDATE_DOCS") == "1"
RUNNABLE = ("demiarch-store", "python examples/", "echo $?")
CHECKED_BY = re.compile(r"<!-- checked by (tests/test_\w+\.py) -->")
SETUP = re.compile(r"<!-- setup: (.*?)\s*-->", re.S)
ID = re.compile(r"\b01[0-9a-z]{14}(?:[0-9a-z]{10})?\b")
VOLATILE = [
    (re.compile(r"/tmp/tmp\w+"), "TMP"),
    (ID, "ID"),
    (re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.\d+)?(?:\+00:00|Z)?"), "DATETIME"),
    (re.compile(r"\b\d{8}T\d{6}Z(?:-[0-9a-z]{6})?\b"), "TIMESTAMP"),
    (re.compile(r"\b\d{4}-\d\d-\d\d\b"), "DATE"),
    (re.compile(r"\b\d\d:\d\d(?::\d\d(?:\.\d+)?)?\b"), "TIME"),
    (re.compile(r"\b\d+(?:\.\d+)? (?:B|KiB|MiB|GiB)\b"), "SIZE"),
]


@dataclass
class Step:
    command: str  # what runs (bash)
    shown: list[str] = field(default_factory=list)  # the output lines the page shows
    hidden: bool = False  # a setup step: run, not compared
    span: tuple[int, int] = (0, 0)  # lines of the page holding the shown output


def parse(page: Path) -> list[Step]:
    """Return the session of one page: its transcripts' commands and setups, in order."""
    lines = page.read_text().splitlines()
    steps: list[Step] = []
    i = 0
    while i < len(lines):
        line = lines[i]
        if line.startswith("<!-- setup:"):
            j = i
            while "-->" not in lines[j]:
                j += 1
            [command] = SETUP.findall("\n".join(lines[i : j + 1]))
            steps.append(Step(command, hidden=True))
            i = j + 1
            continue
        if line == "```console":
            j = i + 1
            while lines[j] != "```":
                j += 1
            body = lines[i + 1 : j]
            commands = [b[2:] for b in body if b.startswith("$ ")]
            before = [k for k in range(i - 1, -1, -1) if lines[k].strip()]
            delegated = CHECKED_BY.fullmatch(lines[before[0]].strip()) if before else None
            if delegated:
                test = ROOT / delegated.group(1)
                assert test.is_file() and page.name in test.read_text(), (
                    f"{page.name}: {delegated.group(1)} does not exist or does not name the page"
                )
            elif commands and all(c.startswith(RUNNABLE) for c in commands):
                for n, b in enumerate(body, start=i + 1):
                    if b.startswith("$ "):
                        steps.append(Step(b[2:], span=(n + 1, n + 1)))
                    else:
                        steps[-1].shown.append(b)
                        steps[-1].span = (steps[-1].span[0], n + 1)
            i = j + 1
            continue
        i += 1
    return steps


PAGES = [p for p in sorted((ROOT / "docs").glob("*.md")) if any(not s.hidden for s in parse(p))]


def matches(printed: list[str], shown: list[str]) -> bool:
    """Whether ``printed`` is ``shown``, a ``...`` line of ``shown`` standing for any lines."""
    pattern = "".join(
        r"(?:[^\n]*\n)*?" if line.strip() == "..." else re.escape(line) + r"\n" for line in shown
    )
    return re.fullmatch(pattern, "".join(f"{line}\n" for line in printed)) is not None


def normalise(text: str, home: str) -> list[str]:
    text = text.replace(home, SHOWN_HOME)
    for pattern, placeholder in VOLATILE:
        text = pattern.sub(placeholder, text)
    return [line.rstrip() for line in text.strip("\n").splitlines()]


def test_the_command_line_page_has_transcripts() -> None:
    assert ROOT / "docs" / "cli.md" in PAGES
    steps = parse(ROOT / "docs" / "cli.md")
    assert sum(not s.hidden and s.command.startswith("demiarch-store") for s in steps) >= 25


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_transcripts_print_what_the_page_shows(page: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # A path about as short as the page's /tmp/rh, so that no table cuts it short.
    home = Path(tempfile.mkdtemp(prefix="rh-", dir="/tmp"))
    try:
        _run_session(page, home, monkeypatch)
    finally:
        shutil.rmtree(home)


def _in_process(argv: list[str], answer: str, monkeypatch: pytest.MonkeyPatch) -> tuple[int, str]:
    """Run the command line as its script does, in this process (no interpreter start-up)."""
    out = io.StringIO()  # stdout and stderr in the order they were written, as on a terminal
    monkeypatch.setattr(sys, "stdin", io.StringIO(answer))
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
        code = main(argv)
    return code, out.getvalue()


def _run_session(page: Path, home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(home)
    monkeypatch.setenv("DEMIARCH_HOME", str(home))
    monkeypatch.setenv("COLUMNS", "100")
    env = {
        **os.environ,
        "DEMIARCH_HOME": str(home),
        "COLUMNS": "100",
        "PYTHONUNBUFFERED": "1",
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
    }
    ids: dict[str, str] = {}  # an ID the page shows -> the ID this session made
    last_code = 0
    updates: list[tuple[tuple[int, int], list[str]]] = []
    failures: list[str] = []
    for step in parse(page):
        command, _, comment = step.command.partition("  # ")
        answer = "n\n" if comment.strip() == "answered n" else ""
        command = command.replace(SHOWN_HOME, str(home))
        for shown_id, real_id in ids.items():
            command = command.replace(shown_id, real_id)
        command = command.replace("python examples/", f"python {ROOT}/examples/")
        if command.strip() == "echo $?":
            command = f"echo {last_code}"
        # A plain command of ours runs in this process, through main() as the script runs it;
        # anything else (setup, examples, pipes) in bash.
        plain = command.startswith(f"{PROG} ") and not set("|&;<>$`\\") & set(command)
        if plain and not step.hidden:
            last_code, printed = _in_process(shlex.split(command)[1:], answer, monkeypatch)
            _compare(step, printed, home, ids, updates, failures)
            continue
        done = subprocess.run(
            ["bash", "-c", command],
            input=answer,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            timeout=120,
            cwd=home,
            env=env,
        )
        if step.hidden:
            assert done.returncode == 0, f"setup failed: {step.command}\n{done.stdout}"
            continue
        last_code = done.returncode
        _compare(step, done.stdout, home, ids, updates, failures)
    if UPDATE:
        _rewrite(page, updates, {real: shown for shown, real in ids.items()})
    assert not failures, f"{page.name}: {len(failures)} transcript(s) differ\n\n" + "\n\n".join(
        failures
    )


def _compare(
    step: Step,
    printed: str,
    home: Path,
    ids: dict[str, str],
    updates: list[tuple[tuple[int, int], list[str]]],
    failures: list[str],
) -> None:
    """Check what one command printed against the page; learn the IDs it made."""
    printed = printed.replace(str(home), SHOWN_HOME)
    # Learn which real ID each shown one stands for, in the order they appear.
    for shown_id, real_id in zip(
        ID.findall("\n".join(step.shown)), ID.findall(printed), strict=False
    ):
        ids.setdefault(shown_id, real_id)
    got = normalise(printed, str(home))
    want = normalise("\n".join(step.shown), str(home))
    if matches(got, want):
        return
    if UPDATE:
        updates.append((step.span, printed.rstrip("\n").splitlines()))
    else:
        failures.append(
            f"$ {step.command}\nprinted:\n"
            + "\n".join(got)
            + "\nthe page shows:\n"
            + "\n".join(want)
        )


def _rewrite(
    page: Path, updates: list[tuple[tuple[int, int], list[str]]], ids: dict[str, str]
) -> None:
    """Put what each command printed in place of what the page shows (keeping its IDs)."""
    lines = page.read_text().splitlines()
    for (start, end), printed in reversed(updates):
        text = "\n".join(printed)
        for real, shown in ids.items():
            text = text.replace(real, shown)
        lines[start:end] = [line.rstrip() for line in text.splitlines()]
    page.write_text("\n".join(lines) + "\n")
