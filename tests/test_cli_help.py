"""Every command's ``--help`` ends with an example of its use, and every example works.

Each example runs for real, through ``main`` as the ``demiarch-store`` script runs it, in a
working directory holding what the examples name: a project ``todo-app`` with LLM calls and a
backup, ``before-cleanup.sqlite``, ``todo-app.demiarch.zip`` and a legacy ``ralph.db`` (and for
``quarantine``, a damaged ``todo-app``).
"""

from __future__ import annotations

import asyncio
import io
import shlex
import shutil
import sqlite3
import sys
from decimal import Decimal
from pathlib import Path

import pytest
from click.testing import CliRunner

from demiarch_store import Store, StoreConfig
from demiarch_store.cli import EXAMPLES, PROG, cli, main

COMMANDS = sorted(cli.commands)
ALL_EXAMPLES = [(name, example) for name, examples in EXAMPLES.items() for example in examples]


def help_text(name: str) -> str:
    args = [name, "--help"] if name else ["--help"]
    result = CliRunner().invoke(cli, args, prog_name=PROG, terminal_width=100)
    assert result.exit_code == 0, result.output
    return result.output


def test_every_command_has_examples() -> None:
    assert set(EXAMPLES) == {"", *COMMANDS}
    for name, examples in EXAMPLES.items():
        assert examples, name
        for example in examples:  # an example of the command, not of another one
            assert shlex.split(example)[0] == name or not name, example


@pytest.mark.parametrize("name", ["", *COMMANDS])
def test_help_ends_with_its_examples(name: str) -> None:
    lines = help_text(name).rstrip().splitlines()
    examples = EXAMPLES[name]
    tail = [line.strip() for line in lines[-len(examples) :]]
    assert tail == [f"$ {PROG} {example}" for example in examples]
    heading = lines[-len(examples) - 2].strip()
    assert heading == ("Examples:" if len(examples) > 1 else "Example:")


def _make_legacy_database(path: Path) -> None:
    """The old single-file layout: a projects table, project_id on the other tables."""
    db = sqlite3.connect(path)
    db.executescript(
        """
        CREATE TABLE projects (id TEXT PRIMARY KEY, name TEXT NOT NULL, description TEXT,
            config TEXT, created_at INTEGER NOT NULL, updated_at INTEGER NOT NULL);
        CREATE TABLE conversations (id TEXT PRIMARY KEY, project_id TEXT NOT NULL,
            title TEXT, meta TEXT, created_at INTEGER NOT NULL, updated_at INTEGER NOT NULL);
        INSERT INTO projects VALUES ('blog', 'Blog engine', NULL, NULL, 1, 1);
        INSERT INTO conversations VALUES ('c1', 'blog', 'kickoff', NULL, 1, 1);
        """
    )
    db.commit()
    db.close()


@pytest.fixture(scope="module")
def workdir_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    work = tmp_path_factory.mktemp("cli-examples")

    async def seed() -> None:
        async with Store(StoreConfig(projects_dir=work / "projects")) as store:
            project = await store.create_project(name="todo app", project_id="todo-app")
            async with project.transaction() as tx:
                conv = await tx.conversations.create(title="planning")
                await tx.messages.append(conv.id, role="user", content="hello")
                await tx.llm_calls.record(
                    model="gpt-x", input_tokens=10, output_tokens=5, cost_usd=Decimal("0.01")
                )
            await project.backup()
            await project.backup(work / "before-cleanup.sqlite")
            await store.export_project("todo-app", work)

    asyncio.run(seed())
    _make_legacy_database(work / "ralph.db")
    return work


@pytest.mark.parametrize(("name", "example"), ALL_EXAMPLES, ids=[e for _, e in ALL_EXAMPLES])
def test_example_runs(
    name: str,
    example: str,
    workdir_template: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    work = tmp_path / "work"
    shutil.copytree(workdir_template, work)
    if name == "quarantine":  # what quarantine is for: a damaged file (a backup is there)
        (work / "projects" / "todo-app" / "database.sqlite").write_bytes(b"overwritten" * 400)
    monkeypatch.chdir(work)
    monkeypatch.setenv("DEMIARCH_HOME", str(work))  # projects in ./projects, as --projects-dir
    monkeypatch.setenv("COLUMNS", "100")
    monkeypatch.setattr(sys, "stdin", io.StringIO("y\n"))  # the answer to "are you sure?"
    code = main(shlex.split(example))
    out, err = capsys.readouterr()
    assert code == 0, f"{PROG} {example}: exit {code}\n{out}\n{err}"
    assert out.strip(), f"{PROG} {example} printed nothing"
