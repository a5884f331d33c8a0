"""Migration guarantees: every revision up and down with data, models and migrations agree,
one migration for two processes, a backup first, all-or-nothing, and no Alembic at head."""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import stat
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from decimal import Decimal
from importlib.resources import files
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import create_engine

from demiarch_store import (
    AsyncProjectStore,
    MigrationError,
    ProjectNotFound,
    SchemaTooNew,
    Store,
    StoreClosed,
    StoreConfig,
    StoreError,
)
from demiarch_store.backup import list_backups
from demiarch_store.migrate import (
    alembic_head,
    known_revisions,
    read_revision,
    run_migrations,
)
from demiarch_store.schema import HEAD_REVISION, metadata

pytestmark = pytest.mark.anyio

Dump = dict[str, list[tuple[Any, ...]]]


def _read_only(path: Path) -> sqlite3.Connection:
    return sqlite3.connect(f"file:{quote(str(path))}?mode=ro", uri=True)


def dump(path: Path) -> Dump:
    """Every row of every table but alembic_version, sorted: what "nothing lost" compares."""
    conn = _read_only(path)
    try:
        names = [
            r[0]
            for r in conn.execute(
                "SELECT name FROM sqlite_master WHERE type = 'table' "
                "AND name NOT LIKE 'sqlite_%' AND name != 'alembic_version' ORDER BY name"
            )
        ]
        return {n: sorted(conn.execute(f'SELECT * FROM "{n}"').fetchall()) for n in names}
    finally:
        conn.close()


def schema_of(path: Path) -> set[tuple[str, str, str, str]]:
    """The schema as SQLite stores it: every table, index and its SQL."""
    conn = _read_only(path)
    try:
        rows = conn.execute("SELECT type, name, tbl_name, coalesce(sql, '') FROM sqlite_master")
        return {tuple(r) for r in rows}  # type: ignore[misc]
    finally:
        conn.close()


def revision_of(path: Path) -> str | None:
    conn = _read_only(path)
    try:
        return read_revision(conn)
    finally:
        conn.close()


def new_file(path: Path) -> Path:
    sqlite3.connect(path).close()
    return path


# Rows written at each revision, into the tables that revision adds (and the older ones).
# A new revision must add its seed here: the walk test refuses to run without one.
def _seed_0001(conn: sqlite3.Connection, n: int) -> None:
    conn.execute(
        "INSERT OR IGNORE INTO projects VALUES ('p', 'walk', NULL, '{\"a\": 1}', 1, 2)",
    )
    conn.execute(f"INSERT INTO conversations VALUES ('c{n}', 'title {n}', NULL, {n}, {n})")
    conn.executemany(
        "INSERT INTO messages VALUES (?, ?, 'user', ?, NULL, ?)",
        [(f"m{n}-{i}", f"c{n}", f"hello {i} \u00e9", i) for i in range(5)],
    )


def _seed_0002(conn: sqlite3.Connection, n: int) -> None:
    conn.execute(f"INSERT INTO agents VALUES ('a{n}', 'coder', NULL, 'idle', NULL, '[1]', 1, 1)")
    conn.execute(
        f"INSERT INTO skills VALUES ('s{n}', 'skill{n}', NULL, NULL, 'a{n}', 3, 2, 1, 5, 1, 1)"
    )
    conn.execute(f"INSERT INTO skill_tags VALUES ('s{n}', 'cli')")
    conn.execute(
        f"INSERT INTO code_generation VALUES ('g{n}', 'a{n}.py', 1, 'python', 'x', 'h', "
        f"'a{n}', 'c{n}', NULL, 1)"
    )
    conn.execute(
        f"INSERT INTO llm_calls VALUES ('l{n}', 'openai', 'gpt', 1, 2, 2100000, 30, 'ok', NULL, "
        f"'a{n}', 'c{n}', 7)"
    )
    # Top-level JSON numbers: before 0003 the columns' NUMERIC affinity stores them as numbers.
    conn.execute(
        f"INSERT INTO checkpoints VALUES ('k{n}', 'run', NULL, X'00ff', 'h', '{TOP_LEVEL[0]}', 1)"
    )
    conn.execute(
        f"INSERT INTO plugins VALUES ('p{n}', 'plug{n}', '1', 1, '{TOP_LEVEL[1]}', "
        f"'{TOP_LEVEL[2]}', 1, 1)"
    )
    conn.execute(
        f"INSERT INTO sessions VALUES ('e{n}', 'alice', 'a{n}', '{TOP_LEVEL[3]}', 1, 2, NULL)"
    )


TOP_LEVEL = ("1e300", "2.5", "0.30000000000000004", "-7")
"""JSON texts of top-level numbers: checkpoints.meta, plugins.config and .state, sessions.meta."""


def _seed_0003(conn: sqlite3.Connection, n: int) -> None:
    # TEXT affinity: the text of a top-level number is kept as written.
    conn.execute(f"INSERT INTO conversations VALUES ('j{n}', 'numbers', '1.0', {n}, {n})")
    conn.execute(f"INSERT INTO messages VALUES ('j{n}', 'j{n}', 'user', 'x', '{2**70}', {n})")
    conn.execute(f"INSERT INTO agents VALUES ('j{n}', 'zero', NULL, 'idle', '-0.0', '1e5', 1, 1)")


def _seed_0004(conn: sqlite3.Connection, n: int) -> None:
    conn.execute(
        f"INSERT INTO lg_checkpoints VALUES ('t{n}', '', 'c{n}', NULL, 'r{n}', {n}, 'msgpack', "
        f"X'00ff', '{{\"step\": {n}}}', '{{\"messages\": \"1\"}}', {n})"
    )
    conn.execute(f"INSERT INTO lg_blobs VALUES ('t{n}', '', 'messages', '1', 'msgpack', X'01')")
    conn.execute(
        f"INSERT INTO lg_writes VALUES ('t{n}', '', 'c{n}', 'task', 0, 'messages', '', "
        "'msgpack', X'02')"
    )
    conn.execute(f"INSERT INTO memory_items VALUES ('users.u{n}', 'k', '{{}}', 1, 1, NULL, NULL)")
    conn.execute(f"INSERT INTO memory_vectors VALUES ('users.u{n}', 'k', '$', X'0000803f')")


def _seed_0005(conn: sqlite3.Connection, n: int) -> None:
    conn.execute(f"INSERT INTO conversations VALUES ('s{n}', NULL, NULL, {n}, {n})")
    conn.execute(
        f"INSERT INTO agent_sessions VALUES ('s{n}', 'adk', 'app', 'u{n}', 'sess{n}', 's{n}', "
        f"'{{\"k\": 1.0}}', {n}, {n})"
    )
    conn.execute(
        f"INSERT INTO agent_states VALUES ('t{n}', 'adk', 'user', 'app', 'u{n}', '{{}}', {n})"
    )


SEEDS: dict[str, Callable[[sqlite3.Connection, int], None]] = {
    "0001": _seed_0001,
    "0002": _seed_0002,
    "0003": _seed_0003,
    "0004": _seed_0004,
    "0005": _seed_0005,
}


def json_columns(path: Path) -> dict[str, list[int]]:
    """The positions of the columns declared JSON (NUMERIC affinity), table by table."""
    conn = _read_only(path)
    try:
        tables = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
        return {
            t: [r[0] for r in conn.execute(f'PRAGMA table_info("{t}")') if r[2] == "JSON"]
            for t in tables
        }
    finally:
        conn.close()


def _numeric_affinity(value: Any) -> Any:
    """What a column declared JSON stores for ``value`` (SQLite's NUMERIC affinity)."""
    conn = sqlite3.connect(":memory:")
    try:
        conn.execute("CREATE TABLE t (v JSON)")
        conn.execute("INSERT INTO t VALUES (?)", (value,))
        return conn.execute("SELECT v FROM t").fetchone()[0]
    finally:
        conn.close()


def _json_text(value: Any) -> Any:
    """What 0003 stores for a value a column declared JSON held: numbers become JSON text."""
    return json.dumps(value) if isinstance(value, int | float) else value


def expected_after_step(before: Dump, up_to: str | None, columns: dict[str, list[int]]) -> Dump:
    """The rows ``before`` after the step to ``up_to`` (or down from 0003 when ``up_to`` is
    None): only 0003 changes stored values, those of the JSON columns, both ways."""
    convert = _json_text if up_to == "0003" else _numeric_affinity
    out: Dump = {}
    for table, rows in before.items():
        positions = columns.get(table, [])
        out[table] = sorted(
            tuple(convert(v) if i in positions else v for i, v in enumerate(row)) for row in rows
        )
    return out


def seed(path: Path, revision: str, n: int) -> None:
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute("PRAGMA foreign_keys = ON")
        conn.execute("BEGIN")
        for rev in known_revisions()[: known_revisions().index(revision) + 1]:
            SEEDS[rev](conn, n)
        conn.execute("COMMIT")
    finally:
        conn.close()


def test_head_revision_is_alembic_head() -> None:
    assert HEAD_REVISION == alembic_head()
    assert known_revisions()[-1] == HEAD_REVISION
    assert set(SEEDS) == set(known_revisions()), "add a seed for the new revision"


def test_walk_every_revision_up_and_down_with_data(tmp_path: Path) -> None:
    path = new_file(tmp_path / "walk.sqlite")
    revisions = known_revisions()
    at: dict[str, Dump] = {}
    previous: Dump = {}
    # Up, one revision at a time, adding data at each: nothing already there may change.
    # (0003 alone changes stored values: the numbers NUMERIC affinity made of top-level JSON
    # numbers become their JSON text again, and back on the way down.)
    for n, revision in enumerate(revisions):
        declared_json = json_columns(path)
        assert run_migrations(path, project=None, target=revision)[1] == revision
        now = dump(path)
        if revision == "0003":
            expected = expected_after_step(previous, "0003", declared_json)
        else:
            expected = previous
        for table, rows in expected.items():
            assert now[table] == rows, f"upgrading to {revision} changed {table}"
        seed(path, revision, n)
        at[revision] = previous = dump(path)
        assert all(previous.values()), "every table holds data"
    head_schema = schema_of(path)
    # The top-level numbers written at 0002 came through 0003 as their exact JSON text.
    conn = _read_only(path)
    stored = conn.execute(
        "SELECT k.meta, p.config, p.state, e.meta FROM checkpoints k, plugins p, sessions e "
        "WHERE k.id = 'k1' AND p.id = 'p1' AND e.id = 'e1'"
    ).fetchone()
    conn.close()
    assert stored == ("1e+300", "2.5", "0.30000000000000004", "-7")
    assert [json.loads(v) for v in stored] == [json.loads(v) for v in TOP_LEVEL]
    # Down, one at a time: the tables that remain keep their rows.
    for revision in reversed(revisions[:-1]):
        assert run_migrations(path, project=None, target=revision)[1] == revision
        expected = previous
        if revision == "0002":
            expected = expected_after_step(previous, None, json_columns(path))
        now = dump(path)
        assert set(now) == set(at[revision])
        for table, rows in now.items():
            assert rows == expected[table], f"downgrading to {revision} changed {table}"
            # What was written at this revision is back exactly as this revision stored it.
            assert set(at[revision][table]) <= set(rows)
        previous = now
    # And all the way down, then up again: the schema comes back identical.
    assert run_migrations(path, project=None, target="base") == (revisions[0], None)
    assert dump(path) == {}
    assert run_migrations(path, project=None, target="head") == (None, HEAD_REVISION)
    assert schema_of(path) == head_schema
    # A backup before every step that changed a database holding data (all but the first
    # step up and the last one up from base), each at the revision it was taken from.
    backups = list_backups(tmp_path / "walk.sqlite.backups")
    expected = [*revisions[:-1], *reversed(revisions[1:]), revisions[0]]
    assert [revision_of(b) for b in reversed(backups)] == expected


async def test_upgrade_keeps_data_readable_through_the_repositories(tmp_path: Path) -> None:
    path = new_file(tmp_path / "old.sqlite")
    run_migrations(path, project=None, target="0001")
    seed(path, "0001", 0)
    before = dump(path)
    async with AsyncProjectStore(path, create=False) as project:
        assert project.migrated == ("0001", HEAD_REVISION)
        assert project.revision == HEAD_REVISION
        async with project.transaction() as tx:
            agent = await tx.agents.register("new")
            await tx.llm_calls.record(
                model="m", cost_usd=Decimal("0.5"), agent_id=agent.id, conversation_id="c0"
            )
        async with project.read() as r:
            assert [m.content for m in await r.messages.list("c0")][0] == "hello 0 \u00e9"
            assert await r.llm_calls.total_cost() == Decimal("0.5")
    after = dump(path)
    for table, rows in before.items():
        assert after[table] == rows


async def test_top_level_json_numbers_stored_before_0003_read_back_exactly(
    tmp_path: Path,
) -> None:
    """Numbers NUMERIC affinity stored for top-level JSON numbers become their JSON text: a
    float reads back as that very float (not rounded to 15 digits), an integer as that int."""
    path = new_file(tmp_path / "old.sqlite")
    run_migrations(path, project=None, target="0002")
    conn = sqlite3.connect(path)
    conn.executemany(
        "INSERT INTO conversations VALUES (?, NULL, ?, 1, 1)",
        [("c1", "0.30000000000000004"), ("c2", "1e300"), ("c3", "-9223372036854775808"),
         ("c4", "1.0"), ("c5", '"1.5"'), ("c6", "[1.0]")],
    )
    conn.commit()
    stored = dict(conn.execute("SELECT id, typeof(meta) FROM conversations").fetchall())
    conn.close()
    assert stored == {"c1": "real", "c2": "real", "c3": "integer", "c4": "integer",
                      "c5": "text", "c6": "text"}
    async with AsyncProjectStore(path, create=False) as project:
        assert project.migrated == ("0002", HEAD_REVISION)
        async with project.read() as r:
            metas = {c.id: c.meta for c in await r.conversations.list()}
    assert metas == {"c1": 0.30000000000000004, "c2": 1e300, "c3": -(2**63), "c4": 1,
                     "c5": "1.5", "c6": [1.0]}
    assert [type(metas[k]) for k in ("c1", "c3", "c4")] == [float, int, int]  # 1.0 was lost
    assert isinstance(metas["c6"][0], float)
    conn = _read_only(path)
    try:
        assert conn.execute("SELECT DISTINCT typeof(meta) FROM conversations").fetchall() == [
            ("text",)
        ]
        assert conn.execute("PRAGMA foreign_key_check").fetchall() == []
        assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
    finally:
        conn.close()


def test_0003_keeps_foreign_keys_and_their_actions(tmp_path: Path) -> None:
    """The rebuilt tables still enforce their foreign keys and actions, and the tables pointing
    at them still point at them (not at the renamed copy 0003 drops)."""
    path = new_file(tmp_path / "fk.sqlite")
    run_migrations(path, project=None, target="0002")
    seed(path, "0002", 0)
    run_migrations(path, project=None, target="0003")
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute("PRAGMA foreign_keys = ON")
        targets = {
            row[2]
            for (table,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
            for row in conn.execute(f'PRAGMA foreign_key_list("{table}")')
        }
        assert targets == {"conversations", "agents", "checkpoints", "skills"}
        with pytest.raises(sqlite3.IntegrityError):
            conn.execute("INSERT INTO messages VALUES ('x', 'nope', 'user', 'x', NULL, 1)")
        conn.execute("DELETE FROM agents WHERE id = 'a0'")  # SET NULL in skills, llm_calls...
        assert conn.execute("SELECT agent_id FROM skills").fetchall() == [(None,)]
        conn.execute("DELETE FROM skills")  # CASCADE to skill_tags
        assert conn.execute("SELECT count(*) FROM skill_tags").fetchone() == (0,)
        conn.execute("DELETE FROM conversations WHERE id = 'c0'")  # CASCADE to messages
        assert conn.execute("SELECT count(*) FROM messages").fetchone() == (0,)
        assert conn.execute("PRAGMA foreign_key_check").fetchall() == []
    finally:
        conn.close()


def _compare(path: Path) -> list[Any]:
    engine = create_engine(f"sqlite:///{path}")
    try:
        with engine.connect() as conn:
            context = MigrationContext.configure(conn, opts={"compare_type": True})
            return list(compare_metadata(context, metadata))
    finally:
        engine.dispose()


async def test_models_and_migrations_agree(tmp_path: Path) -> None:
    migrated = new_file(tmp_path / "migrated.sqlite")
    assert run_migrations(migrated, project=None) == (None, HEAD_REVISION)
    assert _compare(migrated) == []

    # A new project takes the fast path (the metadata's DDL, no Alembic): it must be the very
    # same schema as the migrations build, down to the SQL text SQLite keeps.
    fast = tmp_path / "fast.sqlite"
    async with AsyncProjectStore(fast) as project:
        assert project.migrated == (None, HEAD_REVISION)
    assert revision_of(fast) == HEAD_REVISION
    assert _compare(fast) == []
    assert schema_of(fast) == schema_of(migrated)


def test_compare_sees_a_difference(tmp_path: Path) -> None:
    """The comparison above can fail: a database missing a revision shows a diff."""
    path = new_file(tmp_path / "old.sqlite")
    run_migrations(path, project=None, target="0001")
    assert _compare(path) != []


async def _old_project(store: Store, revision: str = "0001") -> tuple[str, Path]:
    project = await store.create_project(name="old")
    async with project.transaction() as tx:
        conv = await tx.conversations.create(title="kept")
        await tx.messages.append_many(conv.id, [{"role": "user", "content": "x"}] * 20)
    assert await store.migrate_project(project.id, to=revision) == (HEAD_REVISION, revision)
    return project.id, project.path


async def test_migrate_project_down_and_up(store: Store) -> None:
    project = await store.create_project(name="p")
    async with project.transaction() as tx:
        conv = await tx.conversations.create(title="kept")
        await tx.llm_calls.record(model="m", cost_usd=1, conversation_id=conv.id)
    before = dump(project.path)
    assert await store.migrate_project(project.id, to="0001") == (HEAD_REVISION, "0001")
    with pytest.raises(StoreClosed):
        project.transaction()  # the store closed it first
    assert revision_of(project.path) == "0001"
    assert "llm_calls" not in dump(project.path)
    assert await store.migrate_project(project.id, to="0001") == ("0001", "0001")
    assert await store.migrate_project(project.id) == ("0001", HEAD_REVISION)
    after = dump(project.path)
    assert after["conversations"] == before["conversations"]
    assert after["llm_calls"] == []  # a downgrade drops what the newer schema held...
    backups = project.backups()
    down = [b for b in backups if revision_of(b) == HEAD_REVISION]
    assert len(down) == 1  # ... but not before backing it up
    assert dump(down[0])["llm_calls"] == before["llm_calls"]

    reopened = await store.open_project(project.id)
    assert reopened.migrated is None  # already at head
    async with reopened.read() as r:
        assert (await r.conversations.get(conv.id)).title == "kept"

    # Down to base: no tables left but Alembic's (empty) version table; opening recreates.
    await store.migrate_project(project.id, to="base")
    assert revision_of(project.path) is None and dump(project.path) == {}
    recreated = await store.open_project(project.id)
    assert recreated.migrated == (None, HEAD_REVISION)
    assert schema_of(project.path) == schema_of(down[0])
    await recreated.close()

    with pytest.raises(MigrationError) as info:
        await store.migrate_project(project.id, to="9999")
    assert "9999" in str(info.value)
    with pytest.raises(ProjectNotFound):
        await store.migrate_project("nosuchproject")
    assert revision_of(project.path) == HEAD_REVISION


async def test_backup_before_upgrade_and_none_for_an_empty_database(store: Store) -> None:
    project_id, path = await _old_project(store)
    for old in (path.parent / "backups").iterdir():
        old.unlink()
    before = dump(path)
    project = await store.open_project(project_id)
    assert project.migrated == ("0001", HEAD_REVISION)
    backups = list_backups(path.parent / "backups")
    assert len(backups) == 1 and project.backups() == backups
    assert stat.S_IMODE(backups[0].stat().st_mode) == 0o600
    assert stat.S_IMODE(backups[0].parent.stat().st_mode) == 0o700
    assert dump(backups[0]) == before
    assert revision_of(backups[0]) == "0001"

    empty = new_file(store.projects_dir / "empty.sqlite")
    run_migrations(empty, project=None, target="0001")
    async with AsyncProjectStore(empty, create=False) as opened:
        assert opened.migrated == ("0001", HEAD_REVISION)
    assert not (store.projects_dir / "empty.sqlite.backups").exists()


async def test_a_failing_migration_changes_nothing(store: Store) -> None:
    """A real failure: a table the new revision wants to create is already there."""
    project_id, path = await _old_project(store)
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE agents (id TEXT PRIMARY KEY, note TEXT)")
    conn.execute("INSERT INTO agents VALUES ('mine', 'user data')")
    conn.commit()
    conn.close()
    before, schema = dump(path), schema_of(path)
    for old in (path.parent / "backups").iterdir():
        old.unlink()

    with pytest.raises(MigrationError) as info:
        await store.open_project(project_id)
    assert "'0002'" in str(info.value)
    assert project_id in str(info.value)
    assert revision_of(path) == "0001"
    assert schema_of(path) == schema
    assert dump(path) == before
    (backup,) = (path.parent / "backups").iterdir()
    assert stat.S_IMODE(backup.stat().st_mode) == 0o600
    assert dump(backup) == before
    # The failure is stable, not a state: the next open fails the same way, still unchanged.
    with pytest.raises(MigrationError):
        await store.open_project(project_id)
    assert dump(path) == before


FAILING_REVISION = '''
"""Test only: adds a table, changes data, then a constraint the data violates."""
import sqlalchemy as sa
from alembic import op

revision = "9999"
down_revision = "HEAD"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table("notes", sa.Column("id", sa.String(32), primary_key=True))
    op.execute("UPDATE conversations SET title = 'same'")
    op.create_index("uq_conversations_title", "conversations", ["title"], unique=True)


def downgrade() -> None:
    op.drop_index("uq_conversations_title", table_name="conversations")
    op.drop_table("notes")
'''


def _scripts_with_failing_revision(tmp_path: Path) -> str:
    shipped = Path(str(files("demiarch_store.migrations")))
    scripts = tmp_path / "scripts"
    shutil.copytree(shipped, scripts, ignore=shutil.ignore_patterns("__pycache__"))
    # On top of whatever the head is, so a new revision never makes it a second head.
    failing = textwrap.dedent(FAILING_REVISION).replace('"HEAD"', f'"{HEAD_REVISION}"')
    (scripts / "versions" / "9999_fails.py").write_text(failing)
    return str(scripts)


def test_a_failing_chain_rolls_back_every_step(tmp_path: Path) -> None:
    """0001 -> ... -> head succeed, 9999 fails: the database is back at 0001, not at head."""
    scripts = _scripts_with_failing_revision(tmp_path)
    assert known_revisions(scripts)[-1] == "9999"
    path = new_file(tmp_path / "db.sqlite")
    run_migrations(path, project=None, target="0001")
    seed(path, "0001", 0)
    seed(path, "0001", 1)  # two conversations: a unique title index cannot be built
    before, schema = dump(path), schema_of(path)

    with pytest.raises(MigrationError) as info:
        run_migrations(path, project="p1", target="head", script_location=scripts)
    message = str(info.value)
    assert "failed at revision '9999'" in message and "'p1'" in message
    assert revision_of(path) == "0001"
    assert schema_of(path) == schema  # no agents table from 0002, no notes from 9999
    assert dump(path) == before  # the titles 9999 changed are back
    (backup,) = (tmp_path / "db.sqlite.backups").iterdir()
    assert dump(backup) == before
    assert str(backup) in message  # the error says where the copy is

    # The good part of the chain still works on its own.
    assert run_migrations(path, project=None, target="0003", script_location=scripts) == (
        "0001",
        "0003",
    )


def test_a_newer_schema_is_refused_untouched(tmp_path: Path) -> None:
    path = new_file(tmp_path / "new.sqlite")
    run_migrations(path, project=None)
    conn = sqlite3.connect(path)
    conn.execute("UPDATE alembic_version SET version_num = '9999'")
    conn.commit()
    conn.close()
    schema = schema_of(path)
    with pytest.raises(SchemaTooNew):
        run_migrations(path, project=None, target="0001")
    assert revision_of(path) == "9999" and schema_of(path) == schema
    assert not (tmp_path / "new.sqlite.backups").exists()


# -- other processes -------------------------------------------------------------------------

CHILD = """
import asyncio, json, sys, time
from pathlib import Path
from demiarch_store import AsyncProjectStore, StoreConfig

path, ready, go = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3])

async def main():
    ready.touch()
    deadline = time.monotonic() + 60
    while not go.exists():
        if time.monotonic() > deadline:
            raise SystemExit("no go signal")
        time.sleep(0.001)
    config = StoreConfig(projects_dir=path.parent, busy_deadline=30.0)
    async with AsyncProjectStore(path, config=config) as project:
        print(json.dumps({"migrated": project.migrated, "revision": project.revision,
                          "alembic": "alembic" in sys.modules}))

asyncio.run(main())
"""


def _race(tmp_path: Path, path: Path, name: str) -> list[dict[str, Any]]:
    """Start two processes that open ``path`` at the same moment; return their reports."""
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    go = tmp_path / f"{name}.go"
    readies = [tmp_path / f"{name}.ready{i}" for i in range(2)]
    children = [
        subprocess.Popen(
            [sys.executable, str(script), str(path), str(ready), str(go)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for ready in readies
    ]
    try:
        deadline = time.monotonic() + 120
        while not all(r.exists() for r in readies):
            assert time.monotonic() < deadline, "children did not start"
            assert all(c.poll() is None for c in children), "a child died"
            time.sleep(0.01)
        go.touch()
        reports = []
        for child in children:
            out, err = child.communicate(timeout=120)
            assert child.returncode == 0, err
            reports.append(json.loads(out))
        return reports
    finally:
        for child in children:
            if child.poll() is None:
                child.kill()
                child.wait(timeout=10)


async def test_two_processes_migrate_an_old_database_once(
    tmp_path: Path, config: StoreConfig
) -> None:
    async with Store(config) as store:
        _, path = await _old_project(store)
    for old in (path.parent / "backups").iterdir():
        old.unlink()
    before = dump(path)

    reports = _race(tmp_path, path, "old")
    migrated = [r["migrated"] for r in reports]
    assert migrated.count(None) == 1 and ["0001", HEAD_REVISION] in migrated, reports
    assert all(r["revision"] == HEAD_REVISION for r in reports)
    # Exactly one backup: only the process that migrated took one.
    assert len(list_backups(path.parent / "backups")) == 1
    after = dump(path)
    for table, rows in before.items():
        assert after[table] == rows

    # Two processes creating the same new database: one creates the schema, neither Alembic.
    fresh = tmp_path / "fresh" / "database.sqlite"
    reports = _race(tmp_path, fresh, "new")
    created = [r["migrated"] for r in reports]
    assert created.count(None) == 1 and [None, HEAD_REVISION] in created, reports
    assert not any(r["alembic"] for r in reports)
    assert schema_of(fresh) == schema_of(path)


OPEN_AT_HEAD = """
import asyncio, json, sys
from demiarch_store import Store, StoreConfig

async def main():
    config = StoreConfig(projects_dir=sys.argv[1])
    async with Store(config) as store:
        if sys.argv[2] == "create":
            project = await store.create_project(name="p")
        else:
            project = await store.open_project(sys.argv[2])
        async with project.read() as r:
            await r.llm_calls.total_cost()
        print(json.dumps({"id": project.id, "alembic": "alembic" in sys.modules,
                          "migrated": project.migrated}))

asyncio.run(main())
"""


def _run(tmp_path: Path, *args: str) -> dict[str, Any]:
    env = dict(os.environ)
    done = subprocess.run(
        [sys.executable, "-c", OPEN_AT_HEAD, *args],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)  # type: ignore[no-any-return]


def test_opening_at_head_does_not_start_alembic(tmp_path: Path) -> None:
    projects = str(tmp_path / "projects")
    created = _run(tmp_path, projects, "create")
    assert created["alembic"] is False  # the fast path
    opened = _run(tmp_path, projects, created["id"])
    assert opened == {"id": created["id"], "alembic": False, "migrated": None}

    # The observation can see Alembic: opening an old database does start it.
    path = Path(projects) / created["id"] / "database.sqlite"
    run_migrations(path, project=None, target="0001")
    upgraded = _run(tmp_path, projects, created["id"])
    assert upgraded["alembic"] is True and upgraded["migrated"] == ["0001", HEAD_REVISION]


async def test_migrate_project_in_a_directory_with_uri_characters(tmp_path: Path) -> None:
    config = StoreConfig(projects_dir=tmp_path / "odd #1?x=%20" / "projects")
    async with Store(config) as store:
        project = await store.create_project(name="odd")
        async with project.transaction() as tx:
            await tx.conversations.create(title="kept")
        assert await store.migrate_project(project.id, to="0001") == (HEAD_REVISION, "0001")
        assert await store.migrate_project(project.id) == ("0001", HEAD_REVISION)
        assert [revision_of(b) for b in project.backups()] == ["0001", HEAD_REVISION]
        reopened = await store.open_project(project.id)
        async with reopened.read() as r:
            assert [c.title for c in await r.conversations.list()] == ["kept"]


async def test_migrate_project_refuses_a_file_open_elsewhere_in_the_process(store: Store) -> None:
    project = await store.create_project(name="p")
    await project.close()
    async with AsyncProjectStore(project.path, create=False) as other:
        with pytest.raises(StoreError) as info:
            await store.migrate_project(project.id, to="0001")
        assert "open elsewhere" in str(info.value)
        assert revision_of(project.path) == HEAD_REVISION
        async with other.read() as r:
            assert await r.llm_calls.total_cost() == 0
    assert await store.migrate_project(project.id, to="0001") == (HEAD_REVISION, "0001")
