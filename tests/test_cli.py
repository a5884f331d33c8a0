"""The command line, end to end: real files under tmp_path, through ``main`` and real processes.

Most tests call ``demiarch_store.cli.main(argv)`` in this process (the same function the
``demiarch-store`` script and ``python -m demiarch_store`` run) and read what it printed; a few
run it as a child process, and one drives it in a pseudo-terminal to check what a person sees.
"""

from __future__ import annotations

import asyncio
import io
import json
import os
import pty
import select
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from demiarch_store import Store, StoreConfig
from demiarch_store.cli import main
from demiarch_store.schema import HEAD_REVISION, to_micros, utcnow

TIMEOUT = 60


@dataclass
class Result:
    code: int
    out: str
    err: str

    def json(self) -> Any:
        return json.loads(self.out)


Run = Callable[..., Result]


@pytest.fixture
def projects_dir(tmp_path: Path) -> Path:
    return tmp_path / "projects"


@pytest.fixture
def run(
    projects_dir: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> Run:
    """Run the CLI in this process with ``--projects-dir`` set; ``input`` feeds prompts."""
    monkeypatch.setenv("COLUMNS", "200")  # Rich wraps at 80 columns when not on a terminal

    def invoke(*args: str, input: str | None = None, projects: bool = True) -> Result:
        capsys.readouterr()
        monkeypatch.setattr(sys, "stdin", io.StringIO(input or ""))
        argv = (["--projects-dir", str(projects_dir)] if projects else []) + list(args)
        code = main(argv)
        captured = capsys.readouterr()
        return Result(code, captured.out, captured.err)

    return invoke


def create(run: Run, name: str = "my app") -> str:
    result = run("create", name, "--json")
    assert result.code == 0, result.err
    project_id: str = result.json()["id"]
    return project_id


def corrupt(projects_dir: Path, project_id: str) -> Path:
    path = projects_dir / project_id / "database.sqlite"
    for suffix in ("-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)
    path.write_bytes(b"this is not a database, it was overwritten by mistake" * 100)
    return path


def one_error_line(result: Result) -> str:
    lines = result.err.strip().splitlines()
    assert len(lines) == 1, result.err
    assert lines[0].startswith("error: ")
    return lines[0]


# -- list ---------------------------------------------------------------------------------------


def test_list_without_projects_says_how_to_create_one(run: Run, projects_dir: Path) -> None:
    missing = run("list")  # a projects directory that does not exist is not an empty one
    assert missing.code == 1
    line = one_error_line(missing)
    assert "the projects directory does not exist" in line and str(projects_dir) in line
    assert not projects_dir.exists()  # listing never creates anything
    projects_dir.mkdir()
    result = run("list")
    assert result.code == 0
    assert result.out.strip() == (
        f"No projects in {projects_dir}. Create one with: "
        f"demiarch-store --projects-dir {projects_dir} create NAME"
    )
    assert run("list", "--json").json() == []


def test_list_uses_demiarch_home(run: Run, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DEMIARCH_HOME", str(tmp_path / "home"))
    missing = run("list", projects=False)
    home_projects = tmp_path / "home" / "projects"
    assert missing.code == 1
    assert f"the projects directory does not exist (at '{home_projects}')" in missing.err
    assert "`demiarch-store create NAME` creates it" in missing.err
    made = run("create", "at home", "--json", projects=False)
    assert made.err.strip() == f"Created the projects directory {home_projects} (it did not exist)"
    created = made.json()
    assert Path(created["path"]).parent.parent == home_projects
    listed = run("list", "--json", projects=False).json()
    assert [p["id"] for p in listed] == [created["id"]]


def test_config_file_in_demiarch_home_is_read(
    run: Run, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    home = tmp_path / "home"
    home.mkdir()
    elsewhere = tmp_path / "elsewhere"
    (home / "config.toml").write_text(f'projects_dir = "{elsewhere}"\n')
    monkeypatch.setenv("DEMIARCH_HOME", str(home))
    created = run("create", "configured", "--json", projects=False).json()
    assert Path(created["path"]).parent.parent == elsewhere
    (home / "config.toml").write_text("max_readers = 'many'\n")
    broken = run("list", projects=False)
    assert broken.code == 1
    line = one_error_line(broken)
    assert "config.toml" in line and "max_readers" in line


def test_create_then_list_as_table_and_json(run: Run, projects_dir: Path) -> None:
    first = create(run, "first app")
    second = create(run, "second app")
    result = run("list")
    assert result.code == 0
    lines = result.out.splitlines()
    header = next(line for line in lines if "ID" in line)
    for column in ("ID", "Name", "Status", "Last update", "Size"):
        assert column in header
    row = next(line for line in lines if first in line)
    assert "first app" in row and " ok " in row and "KiB" in row
    assert second in result.out
    assert f"2 projects in {projects_dir}" in result.out

    listed = run("list", "--json").json()
    assert [p["id"] for p in listed] == sorted([first, second])
    entry = listed[0]
    assert entry["name"] == "first app"
    assert entry["status"] == "ok"
    assert entry["revision"] == HEAD_REVISION
    assert entry["size_bytes"] > 0
    assert entry["path"] == str(projects_dir / first / "database.sqlite")
    assert entry["error"] is None
    assert entry["updated_at"].endswith("+00:00")


def test_list_reports_bad_projects_without_failing(run: Run, projects_dir: Path) -> None:
    good = create(run, "good")
    bad = create(run, "bad")
    corrupt(projects_dir, bad)
    (projects_dir / "emptyone").mkdir()
    (projects_dir / "Not A Project").mkdir()  # foreign names are ignored
    result = run("list")
    assert result.code == 0
    assert f"{bad}: corrupt:" in result.out
    # A folder with no database and no marker never was a project: left out, and named.
    assert "emptyone" not in result.out.split("Left out")[0]
    assert "Left out 2 folders that are not a project (no database, no marker): " in result.out
    assert "Not A Project, emptyone" in result.out
    (projects_dir / good / "database.sqlite").unlink()  # a project whose database is missing
    statuses = {p["id"]: p["status"] for p in run("list", "--json").json()}
    assert statuses == {good: "empty", bad: "corrupt"}


# -- create, show, revision ---------------------------------------------------------------------


def test_create_prints_id_and_path(run: Run, projects_dir: Path) -> None:
    result = run("create", "notes", "--description", "a place for notes")
    assert result.code == 0
    assert result.out.startswith("Created project ")
    project_id = result.out.split()[2]
    assert f"at {projects_dir / project_id / 'database.sqlite'}" in result.out
    facts = run("show", project_id, "--json").json()
    assert facts["name"] == "notes"
    assert facts["description"] == "a place for notes"


def test_show_counts_rows_and_sizes(run: Run, projects_dir: Path) -> None:
    project_id = create(run)
    result = run("show", project_id, "--json")
    assert result.code == 0
    facts = result.json()
    assert facts["id"] == project_id
    assert facts["name"] == "my app"
    assert facts["revision"] == facts["head"] == HEAD_REVISION
    assert facts["tables"]["projects"] == 1
    assert facts["tables"]["messages"] == 0
    assert "alembic_version" not in facts["tables"]
    assert facts["database_bytes"] == (projects_dir / project_id / "database.sqlite").stat().st_size
    assert facts["wal_bytes"] >= 0

    human = run("show", project_id)
    assert human.code == 0
    assert f"revision {HEAD_REVISION} (head)" in human.out
    assert "projects" in human.out and "conversations" in human.out
    assert "WAL" in human.out


def test_demo_writes_concurrent_agents_and_shows_them(run: Run) -> None:
    result = run("demo", "--agents", "3", "--turns", "4")
    assert result.code == 0, result.err
    assert "demo: agent runtime" in result.out
    assert "Delete it with: demiarch-store --projects-dir" in result.out
    [info] = run("list", "--json").json()
    facts = run("show", info["id"], "--json").json()
    assert facts["tables"]["messages"] == 1 + 3 * 4
    assert facts["tables"]["conversations"] == 1
    assert facts["tables"]["agents"] == 3
    assert facts["tables"]["llm_calls"] == facts["tables"]["checkpoints"] == 3 * 4
    assert facts["llm_calls"] == 12 and Decimal(facts["cost_usd"]) > 0
    by_agent = run("costs", info["id"], "--by", "agent", "--json").json()
    assert sorted(t["agent"] for t in by_agent["totals"]) == ["coder", "planner", "reviewer"]


def test_revision_reads_without_migrating(run: Run, projects_dir: Path) -> None:
    project_id = create(run)
    result = run("revision", project_id, "--json")
    assert result.code == 0
    assert result.json()["current"] == HEAD_REVISION
    assert result.json()["up_to_date"] is True
    human = run("revision", project_id)
    assert human.out.strip() == (
        f"Project {project_id}: schema revision {HEAD_REVISION}, head {HEAD_REVISION} (up to date)"
    )

    path = projects_dir / project_id / "database.sqlite"
    with sqlite3.connect(path) as conn:
        conn.execute("UPDATE alembic_version SET version_num = '9999'")
    conn.close()
    newer = run("revision", project_id, "--json").json()
    assert newer["current"] == "9999" and newer["up_to_date"] is False
    assert newer["status"] == "newer_schema"
    assert "newer than this demiarch-store" in run("revision", project_id).out
    # Opening it refuses, with one clear line, and leaves the file alone.
    shown = run("show", project_id)
    assert shown.code == 1
    line = one_error_line(shown)
    assert "9999" in line and project_id in line and "upgrade demiarch-store" in line
    assert run("revision", project_id, "--json").json()["current"] == "9999"


# -- delete -------------------------------------------------------------------------------------


def test_delete_asks_first(run: Run, projects_dir: Path) -> None:
    project_id = create(run, "precious")
    refused = run("delete", project_id, input="n\n")
    assert refused.code == 1
    assert "Delete project" in refused.err and "'precious'" in refused.err
    assert "Aborted." in refused.err
    assert (projects_dir / project_id).is_dir()

    no_answer = run("delete", project_id, input="")  # end of input is not a yes
    assert no_answer.code == 1
    assert (projects_dir / project_id).is_dir()

    accepted = run("delete", project_id, input="y\n")
    assert accepted.code == 0
    assert accepted.out.strip() == f"Deleted project {project_id}."
    assert not (projects_dir / project_id).exists()


class _CtrlC(io.StringIO):
    """A terminal whose user presses Ctrl-C at the prompt."""

    def readline(self, size: int | None = -1) -> str:  # type: ignore[override]
        raise KeyboardInterrupt


@pytest.mark.parametrize(
    "args",
    [
        ["delete", "{id}"],
        ["restore", "{id}", "{tmp}/b.sqlite"],
        ["migrate", "{id}", "--to", "0001"],
    ],
)
def test_ctrl_c_at_a_prompt_exits_130_and_changes_nothing(
    run: Run,
    projects_dir: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    args: list[str],
) -> None:
    project_id = create(run)
    assert run("backup", project_id, "--to", str(tmp_path / "b.sqlite")).code == 0
    capsys.readouterr()
    monkeypatch.setattr(sys, "stdin", _CtrlC())
    argv = [a.format(id=project_id, tmp=tmp_path) for a in args]
    code = main(["--projects-dir", str(projects_dir), *argv])
    err = capsys.readouterr().err
    assert code == 130
    assert err.rstrip().endswith("Interrupted.")
    assert run("revision", project_id, "--json").json()["current"] == HEAD_REVISION


def test_delete_yes_removes_even_a_corrupt_project(run: Run, projects_dir: Path) -> None:
    project_id = create(run)
    corrupt(projects_dir, project_id)
    result = run("delete", "--yes", project_id)
    assert result.code == 0
    assert run("list", "--json").json() == []


# -- backup, restore, check, vacuum -------------------------------------------------------------


def add_messages(projects_dir: Path, project_id: str, count: int, size: int = 100) -> str:
    """Write a conversation of ``count`` messages straight through the library."""

    async def write() -> str:
        async with Store(StoreConfig(projects_dir=projects_dir)) as store:
            project = await store.open_project(project_id)
            async with project.transaction() as tx:
                conv = await tx.conversations.create(title="filler")
                await tx.messages.append_many(
                    conv.id, [{"role": "user", "content": "x" * size}] * count
                )
            return conv.id

    return asyncio.run(write())


def test_backup_to_the_default_place_and_to_a_file(
    run: Run, projects_dir: Path, tmp_path: Path
) -> None:
    project_id = create(run)
    result = run("backup", project_id, "--json")
    assert result.code == 0, result.err
    made = Path(result.json()["backup"])
    assert made.parent == projects_dir / project_id / "backups"
    assert made.stat().st_mode & 0o777 == 0o600
    assert result.json()["size_bytes"] == made.stat().st_size

    dest = tmp_path / "copy.sqlite"
    human = run("backup", project_id, "--to", str(dest))
    assert human.code == 0
    assert human.out.startswith(f"Backed up project {project_id} to {dest} (")
    with sqlite3.connect(f"file:{dest}?mode=ro", uri=True) as conn:
        assert conn.execute("SELECT name FROM projects").fetchone() == ("my app",)
    conn.close()

    again = run("backup", project_id, "--to", str(dest))
    assert again.code == 1
    line = one_error_line(again)
    assert "already exists" in line and project_id in line


def test_restore_asks_then_puts_the_backup_back(
    run: Run, projects_dir: Path, tmp_path: Path
) -> None:
    project_id = create(run)
    backup = tmp_path / "before.sqlite"
    assert run("backup", project_id, "--to", str(backup)).code == 0
    add_messages(projects_dir, project_id, 10)
    assert run("show", project_id, "--json").json()["tables"]["messages"] == 10

    refused = run("restore", project_id, str(backup), input="n\n")
    assert refused.code == 1 and "Replace the database" in refused.err
    assert run("show", project_id, "--json").json()["tables"]["messages"] == 10

    restored = run("restore", project_id, str(backup), "--yes", "--json")
    assert restored.code == 0, restored.err
    assert restored.json()["tables"]["messages"] == 0
    assert run("show", project_id, "--json").json()["tables"]["messages"] == 0


def test_restore_refuses_a_bad_backup_and_keeps_the_project(
    run: Run, projects_dir: Path, tmp_path: Path
) -> None:
    project_id = create(run)
    add_messages(projects_dir, project_id, 3)
    garbage = tmp_path / "garbage.sqlite"
    garbage.write_bytes(b"not a backup" * 500)
    for backup in (garbage, tmp_path / "missing.sqlite"):
        result = run("restore", project_id, str(backup), "--yes")
        assert result.code == 1
        line = one_error_line(result)
        assert project_id in line
    assert run("show", project_id, "--json").json()["tables"]["messages"] == 3
    missing = run("restore", "nosuchproject", str(garbage), "--yes")
    assert missing.code == 1 and "no such project" in one_error_line(missing)


def test_quarantine_puts_the_newest_good_backup_back(run: Run, projects_dir: Path) -> None:
    project_id = create(run)
    add_messages(projects_dir, project_id, 4)
    assert run("backup", project_id).code == 0
    add_messages(projects_dir, project_id, 6)
    path = corrupt(projects_dir, project_id)
    damaged = path.read_bytes()
    listed = run("list")
    assert f"`quarantine {project_id}`" in listed.out

    refused = run("quarantine", project_id, input="n\n")
    assert refused.code == 1 and path.read_bytes() == damaged

    result = run("quarantine", project_id, "--yes", "--json")
    assert result.code == 0, result.err
    moved = result.json()
    assert moved["restored"] is True and moved["status"] == "ok"
    folder = Path(moved["quarantine"])
    assert (folder / "database.sqlite").read_bytes() == damaged  # kept, unchanged
    assert run("show", project_id, "--json").json()["tables"]["messages"] == 4
    assert "warning: " in result.err  # the library's own warning, one prefixed line


def test_quarantine_without_a_backup_leaves_the_project_empty(run: Run, projects_dir: Path) -> None:
    project_id = create(run)
    corrupt(projects_dir, project_id)
    result = run("quarantine", project_id, "--yes")
    assert result.code == 0, result.err
    assert f"Moved the database of project {project_id} to " in result.out
    assert "It had no good backup: restore one (`demiarch-store --projects-dir" in result.out
    [info] = run("list", "--json").json()
    assert info["status"] == "empty"
    assert run("show", project_id).code == 1


def test_check_a_healthy_and_a_corrupt_project(run: Run, projects_dir: Path) -> None:
    good = create(run, "good")
    healthy = run("check", good, "--json")
    assert healthy.code == 0, healthy.out + healthy.err
    report = healthy.json()
    assert report["ok"] is True and report["problems"] == []
    assert report["id"] == good and report["name"] == "good"
    assert report["check"] == "quick_check" and report["integrity"] == ["ok"]
    human = run("check", good, "--full")
    assert human.code == 0
    assert f"Project {good}: healthy" in human.out and "integrity_check" in human.out

    bad = create(run, "bad")
    corrupt(projects_dir, bad)
    sick = run("check", bad, "--json")
    assert sick.code == 1
    assert sick.json()["ok"] is False
    assert "restore it from a backup" in sick.json()["problems"][0]
    assert "PROBLEMS" in run("check", bad).out


def test_check_reports_damaged_pages(run: Run, projects_dir: Path) -> None:
    project_id = create(run)
    add_messages(projects_dir, project_id, 200, size=500)
    path = projects_dir / project_id / "database.sqlite"
    with open(path, "r+b") as f:  # the header is intact, some b-tree pages are not
        f.seek(4096 * 5)
        f.write(b"\xff" * 4096 * 3)
    result = run("check", project_id, "--json")
    assert result.code == 1
    report = result.json()
    assert report["ok"] is False and report["integrity"] != ["ok"]
    assert any("quick_check failed" in p for p in report["problems"])
    human = run("check", project_id)
    assert "PROBLEMS" in human.out and "quick_check failed" in human.out


def test_check_all_shows_every_project(run: Run, projects_dir: Path) -> None:
    good = create(run, "good")
    bad = create(run, "bad")
    corrupt(projects_dir, bad)
    result = run("check", "--all")
    assert result.code == 1
    assert good in result.out and bad in result.out
    assert "2 checked, 1 healthy, 1 with problems" in result.out
    listed = run("check", "--all", "--json").json()
    assert {r["id"]: r["ok"] for r in listed} == {good: True, bad: False}
    corrupt_free = run("delete", "--yes", bad)
    assert corrupt_free.code == 0
    assert run("check", "--all").code == 0


@pytest.mark.parametrize("args", [["check"], ["check", "--all", "someid"]])
def test_check_needs_one_id_or_all(run: Run, args: list[str]) -> None:
    result = run(*args)
    assert result.code == 2
    assert "give a project ID or --all" in result.err


def test_vacuum_gives_space_back(run: Run, projects_dir: Path) -> None:
    project_id = create(run)
    conv = add_messages(projects_dir, project_id, 300, size=2000)

    async def drop() -> None:
        async with Store(StoreConfig(projects_dir=projects_dir)) as store:
            project = await store.open_project(project_id)
            async with project.transaction() as tx:
                await tx.conversations.delete(conv)

    asyncio.run(drop())
    result = run("vacuum", project_id, "--json")
    assert result.code == 0, result.err
    sizes = result.json()
    assert sizes["after_bytes"] < sizes["before_bytes"]
    human = run("vacuum", project_id)
    assert human.out.startswith(f"Vacuumed project {project_id}: ")


# -- export, import, import-legacy --------------------------------------------------------------


def test_export_then_import_under_the_same_and_a_new_id(
    run: Run, projects_dir: Path, tmp_path: Path
) -> None:
    project_id = create(run, "portable")
    add_messages(projects_dir, project_id, 5)
    exported = run("export", project_id, str(tmp_path), "--json")
    assert exported.code == 0, exported.err
    bundle = Path(exported.json()["bundle"])
    assert bundle.parent == tmp_path and bundle.is_file()
    assert exported.json()["size_bytes"] == bundle.stat().st_size

    taken = run("import", str(bundle))
    assert taken.code == 1
    line = one_error_line(taken)
    assert project_id in line and "already exists" in line and "import --id NEW_ID" in line

    copy = run("import", str(bundle), "--id", "portable-copy", "--json")
    assert copy.code == 0, copy.err
    assert copy.json()["id"] == "portable-copy"
    assert copy.json()["tables"]["messages"] == 5

    assert run("delete", "--yes", project_id).code == 0
    back = run("import", str(bundle))
    assert back.code == 0, back.err
    assert back.out.startswith(f"Imported project {project_id} from {bundle}.")
    ids = sorted(p["id"] for p in run("list", "--json").json())
    assert ids == sorted([project_id, "portable-copy"])

    again = run("export", project_id, str(bundle))
    assert again.code == 1  # an existing file is never replaced
    one_error_line(again)


def test_import_errors(run: Run, tmp_path: Path, projects_dir: Path) -> None:
    junk = tmp_path / "junk.zip"
    junk.write_bytes(b"PK not really a zip" * 10)
    for path in (junk, tmp_path / "missing.zip"):
        result = run("import", str(path))
        assert result.code == 1, result.err
        one_error_line(result)
    bad_id = run("import", str(junk), "--id", "../up")
    assert bad_id.code == 2
    assert not projects_dir.exists()  # nothing was written


def build_legacy(path: Path) -> None:
    now = to_micros(utcnow())
    conn = sqlite3.connect(path, isolation_level=None)
    conn.executescript(
        """
        CREATE TABLE projects (id TEXT PRIMARY KEY, name TEXT NOT NULL, description TEXT,
            config TEXT, created_at INTEGER NOT NULL, updated_at INTEGER NOT NULL);
        CREATE TABLE conversations (id TEXT PRIMARY KEY, project_id TEXT NOT NULL, title TEXT,
            meta TEXT, created_at INTEGER NOT NULL, updated_at INTEGER NOT NULL);
        CREATE TABLE messages (id TEXT PRIMARY KEY, project_id TEXT NOT NULL,
            conversation_id TEXT NOT NULL, role TEXT NOT NULL, content TEXT NOT NULL,
            meta TEXT, created_at INTEGER NOT NULL);
        """
    )
    for pid, name in (("alpha", "Alpha"), ("beta", "Beta"), ("Not Valid", "Bad")):
        conn.execute("INSERT INTO projects VALUES (?, ?, NULL, NULL, ?, ?)", (pid, name, now, now))
        conn.execute(
            "INSERT INTO conversations VALUES (?, ?, 'old', NULL, ?, ?)",
            (f"{pid}-c", pid, now, now),
        )
        for n in range(3):
            conn.execute(
                "INSERT INTO messages VALUES (?, ?, ?, 'user', 'hi', NULL, ?)",
                (f"{pid}-m{n}", pid, f"{pid}-c", now + n),
            )
    conn.close()


def test_import_legacy_splits_and_is_idempotent(run: Run, tmp_path: Path) -> None:
    legacy = tmp_path / "ralph.db"
    build_legacy(legacy)
    before = legacy.read_bytes()
    result = run("import-legacy", str(legacy), "--json")
    assert result.code == 0, result.err
    report = result.json()
    assert report["imported"] == ["alpha", "beta"]
    assert "Not Valid" in report["skipped"]
    assert report["rows"]["alpha"]["messages"] == 3
    assert legacy.read_bytes() == before

    again = run("import-legacy", str(legacy))
    assert again.code == 0
    assert "0 imported" in again.out and "skipped alpha" in again.out
    facts = run("show", "beta", "--json").json()
    assert facts["name"] == "Beta" and facts["tables"]["messages"] == 3


def test_import_legacy_errors(run: Run, tmp_path: Path) -> None:
    missing = run("import-legacy", str(tmp_path / "nope.db"))
    assert missing.code == 1
    one_error_line(missing)
    junk = tmp_path / "junk.db"
    junk.write_bytes(b"not sqlite" * 500)
    bad = run("import-legacy", str(junk))
    assert bad.code == 1
    one_error_line(bad)


# -- migrate, costs -----------------------------------------------------------------------------


def test_migrate_down_and_up_again(run: Run, projects_dir: Path) -> None:
    project_id = create(run)
    known = run("revision", project_id, "--json").json()["known"]
    assert known[-1] == HEAD_REVISION and len(known) >= 2
    older = known[-2]

    refused = run("migrate", project_id, "--to", older, input="n\n")
    assert refused.code == 1 and "Downgrade" in refused.err
    assert run("revision", project_id, "--json").json()["current"] == HEAD_REVISION

    down = run("migrate", project_id, "--to", older, "--yes", "--json")
    assert down.code == 0, down.err
    assert down.json()["before"] == HEAD_REVISION and down.json()["after"] == older
    behind = run("revision", project_id)
    assert f"schema revision {older}, head {HEAD_REVISION} (behind" in behind.out

    up = run("migrate", project_id)
    assert up.code == 0, up.err
    assert up.out.strip() == f"{project_id}: migrated from {older} to {HEAD_REVISION}"
    again = run("migrate", project_id)
    assert again.out.strip() == f"{project_id}: already at {HEAD_REVISION}"


def test_migrate_all_reports_each_project(run: Run, projects_dir: Path) -> None:
    first = create(run, "first")
    second = create(run, "second")
    known = run("revision", first, "--json").json()["known"]
    assert run("migrate", first, "--to", known[-2], "--yes").code == 0
    bad = create(run, "bad")
    corrupt(projects_dir, bad)
    result = run("migrate", "--all", "--json")
    assert result.code == 1
    rows = {r["id"]: r for r in result.json()}
    assert rows[first]["before"] == known[-2] and rows[first]["after"] == HEAD_REVISION
    assert rows[second]["ok"] is True and rows[second]["before"] == HEAD_REVISION
    assert rows[bad]["ok"] is False and rows[bad]["error"]
    human = run("migrate", "--all")
    assert f"{bad}: not migrated:" in human.out
    assert f"{first}: already at {HEAD_REVISION}" in human.out


@pytest.mark.parametrize(
    "args",
    [["migrate"], ["migrate", "--all", "someid"], ["migrate", "someid", "--to", "9999"]],
)
def test_migrate_usage_errors(run: Run, args: list[str]) -> None:
    result = run(*args)
    assert result.code == 2
    assert "Usage: demiarch-store migrate" in result.err


def test_migrate_unknown_project(run: Run) -> None:
    result = run("migrate", "nosuchproject")
    assert result.code == 1
    assert "no such project" in one_error_line(result)


def seed_calls(projects_dir: Path, project_id: str) -> dict[str, str]:
    """Record LLM calls by two agents on two models, one of them a year old."""

    async def write() -> dict[str, str]:
        async with Store(StoreConfig(projects_dir=projects_dir)) as store:
            project = await store.open_project(project_id)
            async with project.transaction() as tx:
                planner = await tx.agents.register("planner")
                coder = await tx.agents.register("coder")
                for _ in range(3):
                    await tx.llm_calls.record(
                        model="gpt-x",
                        input_tokens=1000,
                        output_tokens=200,
                        cost_usd=Decimal("0.0045"),
                        agent_id=planner.id,
                    )
                await tx.llm_calls.record(
                    model="gpt-x-mini",
                    input_tokens=500,
                    output_tokens=100,
                    cost_usd=Decimal("0.000135"),
                    agent_id=coder.id,
                )
                await tx.llm_calls.record(
                    model="gpt-x",
                    input_tokens=10,
                    output_tokens=10,
                    cost_usd=Decimal("1"),
                    created_at=utcnow() - timedelta(days=365),
                )
            return {"planner": planner.id, "coder": coder.id}

    return asyncio.run(write())


def test_costs_by_model_agent_and_day(run: Run, projects_dir: Path) -> None:
    project_id = create(run)
    empty = run("costs", project_id)
    assert empty.code == 0
    assert empty.out.strip() == f"Project {project_id} has no LLM calls."
    agents = seed_calls(projects_dir, project_id)

    by_model = run("costs", project_id, "--json").json()
    assert by_model["by"] == "model"
    assert [(t["key"], t["calls"], t["cost_usd"]) for t in by_model["totals"]] == [
        ("gpt-x", 4, "1.0135"),
        ("gpt-x-mini", 1, "0.000135"),
    ]
    assert by_model["cost_usd"] == "1.013635" and by_model["calls"] == 5

    recent = run("costs", project_id, "--since", "30d", "--json").json()
    assert recent["cost_usd"] == "0.013635" and recent["calls"] == 4

    by_agent = run("costs", project_id, "--by", "agent", "--json").json()
    names = {t["agent"]: t["calls"] for t in by_agent["totals"]}
    assert names == {None: 1, "planner": 3, "coder": 1}
    human = run("costs", project_id, "--by", "agent")
    planner_row = next(line for line in human.out.splitlines() if agents["planner"] in line)
    assert planner_row.split()[:3] == ["planner", agents["planner"], "3"]
    assert "(no agent)" in human.out
    assert "1.013635" in human.out  # the footer: the exact total

    by_day = run("costs", project_id, "--by", "day", "--json").json()
    assert len(by_day["totals"]) == 2
    assert all(len(t["key"]) == 10 for t in by_day["totals"])  # YYYY-MM-DD

    today = utcnow().date().isoformat()
    since_today = run("costs", project_id, "--since", today, "--json").json()
    assert since_today["calls"] == 4
    nothing = run("costs", project_id, "--since", "2999-01-01")
    assert nothing.out.strip() == f"Project {project_id} has no LLM calls in that period."

    facts = run("show", project_id, "--json").json()
    assert facts["llm_calls"] == 5 and facts["cost_usd"] == "1.013635"


@pytest.mark.parametrize(
    "args", [["--by", "week"], ["--since", "last tuesday"], ["--until", "12x"]]
)
def test_costs_usage_errors(run: Run, args: list[str]) -> None:
    result = run("costs", "someproject", *args)
    assert result.code == 2
    assert "Usage: demiarch-store costs" in result.err


# -- errors -------------------------------------------------------------------------------------


# Every command that takes a project ID, with the other arguments it needs ({tmp} is tmp_path).
ID_COMMANDS = {
    "show": [],
    "delete": ["--yes"],
    "revision": [],
    "backup": [],
    "restore": ["{tmp}/backup.sqlite", "--yes"],
    "check": [],
    "vacuum": [],
    "migrate": [],
    "export": ["{tmp}/bundle.zip"],
    "costs": [],
    "stats": [],
    "quarantine": ["--yes"],
}


def _args(command: str, project_id: str, tmp_path: Path) -> list[str]:
    return [command, project_id, *(a.format(tmp=tmp_path) for a in ID_COMMANDS[command])]


@pytest.mark.parametrize("command", sorted(ID_COMMANDS))
def test_unknown_project_is_one_line_and_exit_1(run: Run, tmp_path: Path, command: str) -> None:
    (tmp_path / "backup.sqlite").write_bytes(b"")
    result = run(*_args(command, "doesnotexist", tmp_path))
    assert result.code == 1
    line = one_error_line(result)
    assert "no such project" in line and "'doesnotexist'" in line and "list" in line
    assert "Traceback" not in result.err


@pytest.mark.parametrize("command", sorted(ID_COMMANDS))
@pytest.mark.parametrize("bad_id", ["../etc", "UPPER", "a/b", "", "x" * 65, "-rf"])
def test_invalid_id_is_a_usage_error(
    run: Run, projects_dir: Path, tmp_path: Path, command: str, bad_id: str
) -> None:
    args = _args(command, bad_id, tmp_path)
    result = run(args[0], "--", *args[1:])
    assert result.code == 2
    assert "is not a project ID" in result.err
    assert f"Usage: demiarch-store {command}" in result.err
    assert not projects_dir.exists()


# The commands that must open the database; check reports the damage instead (exit 1 too).
OPENING = ["show", "revision", "backup", "vacuum", "migrate", "export", "costs", "stats"]


def test_corrupt_database_is_one_line_and_exit_1(
    run: Run, projects_dir: Path, tmp_path: Path
) -> None:
    project_id = create(run)
    path = corrupt(projects_dir, project_id)
    before = path.read_bytes()
    for command in OPENING:
        result = run(*_args(command, project_id, tmp_path))
        assert result.code == 1, command
        line = one_error_line(result)
        assert project_id in line and str(path) in line, command
        assert "restore it from a backup" in line, command
    assert path.read_bytes() == before  # nothing tried to repair it behind our back
    assert not (tmp_path / "bundle.zip").exists()
    assert run("check", project_id).code == 1


def test_debug_shows_the_traceback(run: Run, projects_dir: Path) -> None:
    project_id = create(run)
    corrupt(projects_dir, project_id)
    result = run("--debug", "show", project_id)
    assert result.code == 1
    assert "Traceback (most recent call last)" in result.err
    assert result.err.strip().splitlines()[-1].startswith("error: ")


@pytest.mark.parametrize(
    "args",
    [
        ["nosuchcommand"],
        ["show"],
        ["list", "--nosuchoption"],
        ["demo", "--agents", "0"],
        ["create"],
    ],
)
def test_usage_errors_exit_2(run: Run, args: list[str]) -> None:
    result = run(*args)
    assert result.code == 2
    assert "Usage: demiarch-store" in result.err
    assert "Traceback" not in result.err


def test_no_command_shows_usage_and_exits_2(run: Run) -> None:
    result = run()
    assert result.code == 2
    assert "Usage: demiarch-store" in result.out + result.err
    assert "Missing command" in result.err


@pytest.mark.parametrize("command", ["check", "migrate"])
def test_all_without_projects(run: Run, projects_dir: Path, command: str) -> None:
    missing = run(command, "--all")
    assert missing.code == 1 and "the projects directory does not exist" in missing.err
    projects_dir.mkdir()
    result = run(command, "--all")
    assert result.code == 0
    assert result.out.strip() == f"No projects in {projects_dir}."
    assert run(command, "--all", "--json").json() == []


def test_a_bug_is_one_line_unless_debug(
    run: Run, projects_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import demiarch_store.cli as cli_module

    projects_dir.mkdir()

    async def broken(config: StoreConfig) -> list[Any]:
        raise RuntimeError("boom")

    monkeypatch.setattr(cli_module, "_list_projects", broken)
    result = run("list")
    assert result.code == 1
    line = one_error_line(result)
    assert "unexpected RuntimeError: boom" in line and "--debug" in line
    debug = run("--debug", "list")
    assert debug.code == 1 and "Traceback (most recent call last)" in debug.err


def test_help_and_version_exit_0(run: Run) -> None:
    result = run("--help")
    assert result.code == 0
    for command in [*ID_COMMANDS, "list", "create", "demo", "import", "import-legacy"]:
        assert f"  {command} " in result.out
    assert run("--version").out.startswith("demiarch-store, version ")


def test_projects_dir_that_is_a_file_is_reported(run: Run, tmp_path: Path) -> None:
    blocker = tmp_path / "afile"
    blocker.write_text("not a directory")
    usage = run("--projects-dir", str(blocker), "create", "x", projects=False)
    assert usage.code == 2
    assert "is a file" in usage.err
    below = run("--projects-dir", str(blocker / "projects"), "create", "x", projects=False)
    assert below.code == 1
    line = one_error_line(below)
    assert "cannot create the project" in line and str(blocker) in line


# -- real processes -----------------------------------------------------------------------------


def _child(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "demiarch_store", *args],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        env={**os.environ, **(env or {})},
    )


def test_module_and_script_entry_points(projects_dir: Path) -> None:
    made = _child("--projects-dir", str(projects_dir), "create", "from a child", "--json")
    assert made.returncode == 0, made.stderr
    project_id = json.loads(made.stdout)["id"]
    script = Path(sys.executable).with_name("demiarch-store")
    listed = subprocess.run(
        [str(script), "--projects-dir", str(projects_dir), "list", "--json"],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )
    assert listed.returncode == 0, listed.stderr
    assert [p["id"] for p in json.loads(listed.stdout)] == [project_id]
    missing = _child("--projects-dir", str(projects_dir), "show", "nosuchproject")
    assert missing.returncode == 1
    assert missing.stderr.startswith("error: no such project")
    usage = _child("--projects-dir", str(projects_dir), "show", "../x")
    assert usage.returncode == 2


def _pty_run(
    args: list[str],
    *,
    env: dict[str, str],
    answer: str | None = None,
) -> str:
    """Run the CLI on a pseudo-terminal (120 columns); return everything it displayed.

    At the ``[y/N]`` prompt it types ``answer``.
    """
    import fcntl
    import struct
    import termios

    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))
    proc = subprocess.Popen(
        [sys.executable, "-m", "demiarch_store", *args],
        stdin=slave,
        stdout=slave,
        stderr=slave,
        env={**_plain_environ(), "TERM": "xterm-256color", **env},
        start_new_session=True,
    )
    os.close(slave)
    seen = b""
    deadline = time.monotonic() + TIMEOUT
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 1.0)
            if not ready:
                if proc.poll() is not None:
                    break
                continue
            try:
                chunk = os.read(master, 4096)
            except OSError:  # EIO: the child closed the terminal
                break
            if not chunk:
                break
            seen += chunk
            if answer is not None and b"[y/N]" in seen:
                os.write(master, answer.encode())
                answer = None
        assert proc.wait(timeout=TIMEOUT) == 0, seen.decode(errors="replace")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=TIMEOUT)
        os.close(master)
    return seen.decode(errors="replace")


def _plain_environ() -> dict[str, str]:
    """This environment without what would change how Rich draws (width, colours)."""
    drop = {"COLUMNS", "LINES", "NO_COLOR", "FORCE_COLOR", "TTY_COMPATIBLE", "TTY_INTERACTIVE"}
    return {k: v for k, v in os.environ.items() if k not in drop}


def test_what_a_person_sees_in_a_terminal(projects_dir: Path, tmp_path: Path) -> None:
    env = {"DEMIARCH_HOME": str(tmp_path / "home")}
    base = ["--projects-dir", str(projects_dir)]
    projects_dir.mkdir()
    empty = _pty_run([*base, "list"], env=env)
    assert f"No projects in {projects_dir}." in empty
    assert "Create one with: demiarch-store --projects-dir" in empty

    made = _child(*base, "create", "terminal app", "--json")
    project_id = json.loads(made.stdout)["id"]
    screen = _pty_run([*base, "list"], env=env)
    assert "\x1b[" in screen  # a terminal gets colours
    plain = _strip_ansi(screen)
    lines = plain.splitlines()
    header = next(line for line in lines if "Last update" in line)
    assert header.split() == ["ID", "Name", "Status", "Last", "update", "(UTC)", "Size"]
    row = next(line for line in lines if project_id in line)
    assert "terminal app" in row and "ok" in row
    assert any(set(line.strip()) == {"─"} for line in lines)  # the header rule

    checked = _pty_run([*base, "check", "--all"], env=env)
    assert "Checking" in checked  # the progress bar, drawn on the terminal then cleared
    assert "1 checked, 1 healthy, 0 with problems" in _strip_ansi(checked)
    migrated = _pty_run([*base, "migrate", "--all"], env=env)
    assert "Migrating" in migrated
    assert f"{project_id}: already at {HEAD_REVISION}" in _strip_ansi(migrated)

    deleted = _pty_run([*base, "delete", project_id], answer="y\r", env=env)
    assert "[y/N]" in deleted and f"Deleted project {project_id}." in deleted
    assert not (projects_dir / project_id).exists()


def _strip_ansi(text: str) -> str:
    import re

    return re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", text).replace("\r", "")
